"""Expected traffic: how often an instrument should send now, configured or learned from its history.

Silence means something only against what the instrument usually does: a chemistry analyzer sends every
few minutes on weekday mornings and nothing on Sunday night. Two sources, pure (time and zone passed in):

* configured, ``expect_message_every`` on the instrument: seconds (always), or windows of the week in the
  instrument's local time (``days = "mon-fri"``, ``hours = "07:00-19:00"``, ``every_s``); outside every
  window nothing is expected. Silence is counted from the start of the window at the earliest, so the
  first minutes of a morning are not judged against Friday evening.
* learned, per hour of the week (local time) from the store's ``messages``: for each hour, the longest gap
  between two messages that ended in it, per week, over the last weeks (:func:`learn`); the expectation is
  the median over the weeks the hour was observed, where a week without any message in that hour counts
  as "nothing expected" (so an hour that is usually quiet stays unjudged). A link is silent when no message
  came for ``LEARNED_MARGIN`` times that gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_PLURALS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays")
HOURS_PER_WEEK = 7 * 24
WEEK_S = 7 * 86400.0
# A learned gap is the longest usual one in that hour: silence is judged only past this multiple of it.
LEARNED_MARGIN = 1.5
# ... and never before this much silence: a burst of messages (a rack run through, a first afternoon of
# traffic) is not a promise that the next will follow within seconds.
LEARNED_FLOOR_S = 300.0


def parse_days(text: str) -> frozenset[int]:
    """``"mon-fri"``, ``"sat,sun"``, ``"mon,wed-fri"``, ``"fri-mon"`` (wraps) -> weekdays (0 = Monday)."""
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        if not part:
            raise ValueError("days like 'mon-fri' or 'sat,sun'")
        first, _, last = part.partition("-")
        try:
            a = DAY_NAMES.index(first)
            b = DAY_NAMES.index(last) if last else a
        except ValueError:
            raise ValueError(f"days among {', '.join(DAY_NAMES)} (e.g. 'mon-fri')") from None
        day = a
        days.add(day)
        while day != b:
            day = (day + 1) % 7
            days.add(day)
    return frozenset(days)


def parse_hours(text: str) -> tuple[int, int]:
    """``"07:00-19:00"`` -> minutes of the day (start, end); ``"22:00-06:00"`` crosses midnight; end may be 24:00."""
    try:
        start_s, end_s = text.replace(" ", "").split("-")
        start, end = _minutes(start_s), _minutes(end_s)
    except ValueError:
        raise ValueError("hours like '07:00-19:00' (local time, 24 h)") from None
    if start == end or start >= 24 * 60:
        raise ValueError("hours like '07:00-19:00', with different start and end")
    return start, end


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    h, m = int(hours), int(minutes)
    if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
        raise ValueError(hhmm)
    return h * 60 + m


@dataclass(frozen=True, slots=True)
class Expectation:
    """What is expected of an instrument now: a message at least every ``every_s``; silence is judged past
    ``allowed_s``, counted from no earlier than ``since`` (the start of a configured window)."""

    every_s: float
    allowed_s: float
    where: str  # "on mon-fri 07:00-19:00", "on Mondays 08:00-09:00", "" (always)
    learned: bool
    since: float = -math.inf


@dataclass(frozen=True, slots=True)
class Window:
    """One window of the week (local time) in which a message is expected at least every ``every_s``."""

    days: frozenset[int]
    start: int  # minutes of the day
    end: int  # minutes of the day; < start: the window crosses midnight (it belongs to the day it starts)
    every_s: float
    label: str

    def started(self, local: datetime) -> datetime | None:
        """The start of the occurrence of this window that ``local`` falls in, or None."""
        minute = local.hour * 60 + local.minute
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.start < self.end:
            if local.weekday() in self.days and self.start <= minute < self.end:
                return midnight + timedelta(minutes=self.start)
            return None
        if local.weekday() in self.days and minute >= self.start:
            return midnight + timedelta(minutes=self.start)
        if (local.weekday() - 1) % 7 in self.days and minute < self.end:
            return midnight - timedelta(days=1) + timedelta(minutes=self.start)
        return None


@dataclass(frozen=True, slots=True)
class ConfiguredTraffic:
    """``expect_message_every`` of an instrument: its windows (one all-week window for a plain number)."""

    windows: tuple[Window, ...]

    @classmethod
    def every(cls, seconds: float) -> ConfiguredTraffic:
        return cls((Window(frozenset(range(7)), 0, 24 * 60, seconds, ""),))

    def at(self, now: float, tz: tzinfo) -> Expectation | None:
        local = datetime.fromtimestamp(now, tz)
        for window in self.windows:
            start = window.started(local)
            if start is not None:
                where = f"on {window.label}" if window.label else ""
                return Expectation(window.every_s, window.every_s, where, learned=False, since=start.timestamp())
        return None


@dataclass(frozen=True, slots=True)
class LearnedTraffic:
    """Per hour of the week (0 = Monday 00:00-01:00, local time): the usual longest gap, or None."""

    gaps: tuple[float | None, ...]
    weeks: int  # how many weeks of history it was learned from
    learned_at: float

    def at(self, now: float, tz: tzinfo) -> Expectation | None:
        local = datetime.fromtimestamp(now, tz)
        gap = self.gaps[hour_of_week(local)]
        if gap is None:
            return None
        where = (f"on {_DAY_PLURALS[local.weekday()]} {local.hour:02d}:00-{(local.hour + 1) % 24:02d}:00 "
                 f"(learned from the last {self.weeks} week{'s' if self.weeks != 1 else ''})")
        return Expectation(gap, max(gap * LEARNED_MARGIN, LEARNED_FLOOR_S), where, learned=True)


def hour_of_week(local: datetime) -> int:
    return local.weekday() * 24 + local.hour


def learn(hour_gaps: Iterable[tuple[int, float]], *, first_at: float | None, until: float, tz: tzinfo,
          weeks: int) -> LearnedTraffic:
    """Learn from ``hour_gaps``: (UTC hour index = epoch seconds // 3600, the longest gap in seconds between
    two messages ending in that hour), over the history from ``first_at`` (the first message considered)
    to ``until``. Each hour of the week is judged on the weeks it was observed in (after ``first_at``)."""
    observed: dict[int, set[int]] = {}  # hour of week -> weeks in which it passed (after the first message)
    seen: dict[int, dict[int, float]] = {}  # hour of week -> week -> longest gap
    if first_at is not None:
        hour = int(first_at // 3600)
        while hour * 3600 < until:
            local = datetime.fromtimestamp(hour * 3600, tz)
            observed.setdefault(hour_of_week(local), set()).add(int((until - hour * 3600) // WEEK_S))
            hour += 1
    for hour, gap in hour_gaps:
        local = datetime.fromtimestamp(hour * 3600, tz)
        how, week = hour_of_week(local), int((until - hour * 3600) // WEEK_S)
        per_week = seen.setdefault(how, {})
        per_week[week] = max(gap, per_week.get(week, 0.0))
    gaps: list[float | None] = []
    for how in range(HOURS_PER_WEEK):
        weeks_seen = observed.get(how, set()) | set(seen.get(how, {}))
        if not weeks_seen:
            gaps.append(None)
            continue
        values = sorted(seen.get(how, {}).get(w, math.inf) for w in weeks_seen)
        middle = values[len(values) // 2]  # the upper median: a quiet week counts against an expectation
        gaps.append(None if math.isinf(middle) else middle)
    span = 0 if first_at is None else max(1, math.ceil((until - first_at) / WEEK_S))
    return LearnedTraffic(tuple(gaps), min(span, weeks), until)


def duration(seconds: float) -> str:
    """A duration as a technician reads it: '40 s', '45 min', '3 h 05 min', '2 days'."""
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    if s < 48 * 3600:
        h, m = divmod(round(s / 60), 60)
        return f"{h} h {m:02d} min" if m else f"{h} h"
    return f"{round(s / 86400)} days"


def clock(ts: float, now: float, tz: tzinfo) -> str:
    """A moment in the instrument's local time: '10:42' today, else '2026-12-02 10:42'."""
    local = datetime.fromtimestamp(ts, tz)
    if local.date() == datetime.fromtimestamp(now, tz).date():
        return local.strftime("%H:%M")
    return local.strftime("%Y-%m-%d %H:%M")
