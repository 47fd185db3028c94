"""Link history: every instrument's shown state and counters, sampled into the store off the data path.

:class:`HistoryRecorder` is the pure part (time passed in): each sample of an instrument's
:class:`~labbridge.health.instrument.InstrumentHealth` adds the time since its previous sample to the state
that sample showed, split at the node's local midnight, and the counters' increase since then to the
current day; a shown state different from the previous sample's is a state change. Counters are kept as
deltas because the daemon's counters restart at 0: a restart adds to the day's row, it never overwrites it. A
health object seen for the first time (the daemon starting, a runner replaced) starts from zero counters,
unless it carries its predecessor's (a reload keeps them), and from the moment it is first sampled
(nothing is attributed to time labbridge did not watch).

:class:`LinkHistory` is its asyncio shell, one task of the daemon: it samples every instrument every
``[history] sample_interval_s`` (the derived states, ``idle`` and ``degraded``, exist only when sampled),
and at once when ``InstrumentHealth.set_state`` changes a state (an observer: a sample, no I/O), and writes
what accumulated in one relaxed write (``Store.write_relaxed``: a power cut may lose the last seconds of
history, never a result). A failed write is logged once and kept for the next one; nothing here awaits
anything the links wait for. On stop it samples once more and records ``stopped`` for every instrument,
so the time labbridge was not running shows as a gap. The tables are in :mod:`labbridge.store.history`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import time as day_start
from typing import TYPE_CHECKING, Any

from labbridge.errors import StoreError
from labbridge.health.instrument import InstrumentHealth
from labbridge.logs import get_logger
from labbridge.store import history as stored
from labbridge.store.history import DAY_COUNTERS, STOPPED, DayFigures, HistoryBatch, StateChange

if TYPE_CHECKING:
    from labbridge.store.db import Store

log = get_logger("labbridge.history")

MAX_PENDING_CHANGES = 10_000  # kept while the store refuses writes; beyond it the oldest are dropped (counted)
MIN_WRITE_GAP_S = 1.0  # a flapping link wakes the writer at most this often
STOP_TIMEOUT_S = 10.0  # the final write at shutdown waits at most this long for the loop to end
MAX_HISTORY_DAYS = 366  # the most days one read of the history covers


def day_spans(start: float, end: float, tz: tzinfo | None = None) -> Iterator[tuple[str, float]]:
    """``(day, seconds)`` for each local date the interval [start, end) touches (``tz`` None: the node's zone)."""
    t = start
    while t < end:
        here = datetime.fromtimestamp(t, tz)
        midnight = datetime.combine(here.date() + timedelta(days=1), day_start.min, tzinfo=tz).timestamp()
        stop = min(end, midnight)
        yield here.date().isoformat(), stop - t
        t = stop


@dataclass(slots=True)
class _Track:
    health: InstrumentHealth  # the object sampled: another one for the same id (a runner replaced) starts over
    at: float
    state: str
    counters: dict[str, int]


class HistoryRecorder:
    """Samples instruments' health with an explicit clock and accumulates a :class:`HistoryBatch` to write."""

    def __init__(self, *, tz: tzinfo | None = None, max_changes: int = MAX_PENDING_CHANGES) -> None:
        self.tz = tz
        self.max_changes = max_changes
        self.dropped_changes = 0  # changes dropped because the store refused writes for too long
        self._tracks: dict[str, _Track] = {}
        self._changes: list[StateChange] = []
        self._days: dict[tuple[str, str], DayFigures] = {}

    def _figures(self, instrument: str, day: str) -> DayFigures:
        figures = self._days.get((instrument, day))
        if figures is None:
            figures = self._days[instrument, day] = DayFigures(instrument, day)
        return figures

    def _change(self, change: StateChange) -> None:
        self._changes.append(change)
        if len(self._changes) > self.max_changes:
            del self._changes[0]
            self.dropped_changes += 1

    def sample(self, health: InstrumentHealth, now: float) -> None:
        state, reason = health.effective_state(now)
        counters = {name: int(getattr(health.counters, name, 0)) for name in DAY_COUNTERS}
        track = self._tracks.get(health.id)
        if track is None or track.health is not health:
            if track is None or track.state != state:
                self._change(StateChange(health.id, now, state, reason))
            if track is not None:
                self._add_seconds(health.id, track, now)
            # A runner restarted by a reload keeps its counters (the same object): they go on from where they
            # were sampled; new counters start from zero.
            carried = track is not None and health.counters is track.health.counters
            base = track.counters if track is not None and carried else dict.fromkeys(DAY_COUNTERS, 0)
            self._tracks[health.id] = _Track(health, now, state, base)
            track = self._tracks[health.id]
        else:
            self._add_seconds(health.id, track, now)
            if state != track.state:
                self._change(StateChange(health.id, now, state, reason))
        increase = {name: n - track.counters[name] for name, n in counters.items()}
        increase = {name: d if d >= 0 else counters[name] for name, d in increase.items() if d}  # < 0: a reset
        if increase:
            self._figures(health.id, self._day(now)).add(DayFigures(health.id, "", counters=increase))
        track.at = max(track.at, now)
        track.state = state
        track.counters = counters

    def _add_seconds(self, instrument: str, track: _Track, now: float) -> None:
        for day, seconds in day_spans(track.at, now, self.tz):
            figures = self._figures(instrument, day)
            figures.seconds[track.state] = figures.seconds.get(track.state, 0.0) + seconds

    def _day(self, at: float) -> str:
        return datetime.fromtimestamp(at, self.tz).date().isoformat()

    def stopped(self, now: float, instruments: Iterable[str] | None = None,
                reason: str = "labbridge stopped") -> None:
        """These instruments (default: all) are no longer watched from ``now``: close their time, mark the gap."""
        for instrument in list(self._tracks) if instruments is None else list(instruments):
            track = self._tracks.pop(instrument, None)
            if track is not None:
                self._add_seconds(instrument, track, now)
                self._change(StateChange(instrument, now, STOPPED, reason))

    @property
    def watched(self) -> set[str]:
        """The instruments sampled since the start or their last ``stopped``."""
        return set(self._tracks)

    def take(self) -> HistoryBatch:
        """What accumulated since the last take (to write); the recorder starts a new batch."""
        batch = HistoryBatch(self._changes, list(self._days.values()))
        self._changes, self._days = [], {}
        return batch

    def restore(self, batch: HistoryBatch) -> None:
        """A batch that could not be written goes back in front of what accumulated since."""
        newer, self._changes = self._changes, []
        for change in [*batch.changes, *newer]:
            self._change(change)
        for figures in batch.days:
            self._figures(figures.instrument, figures.day).add(figures)


class LinkHistory:
    """The recorder's task: samples ``sources()`` periodically and on every state change, writes to ``store``."""

    def __init__(self, store: Store, sources: Callable[[], Iterable[InstrumentHealth]], *, interval_s: float,
                 clock: Callable[[], float] = time.time, recorder: HistoryRecorder | None = None) -> None:
        self.store = store
        self.sources = sources
        self.interval_s = interval_s
        self.clock = clock
        self.recorder = recorder or HistoryRecorder()
        self.writes = 0  # batches written
        self.write_failures = 0  # batches the store refused (kept for the next write)
        self.failing: str | None = None  # the last write's error while writes fail
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._observed: dict[str, InstrumentHealth] = {}  # what _observe is registered on, by instrument

    def _observe(self, health: InstrumentHealth) -> None:
        """InstrumentHealth.set_state changed a state: sample it now (in memory); the task writes it soon."""
        if self._observed.get(health.id) is health:
            self.recorder.sample(health, self.clock())
            self._wake.set()

    def _sample_all(self, now: float) -> None:
        current = {health.id: health for health in self.sources()}
        for ident, old in list(self._observed.items()):  # removed, or replaced by a new runner: not watched
            if current.get(ident) is not old:
                self._detach(old)
        for health in current.values():
            if health.id not in self._observed:  # instruments added while running are observed too
                health.observers.append(self._observe)
                self._observed[health.id] = health
            self.recorder.sample(health, now)
        self.recorder.stopped(now, self.recorder.watched - current.keys(), "removed from the configuration")

    def _detach(self, health: InstrumentHealth) -> None:
        with contextlib.suppress(ValueError):
            health.observers.remove(self._observe)
        if self._observed.get(health.id) is health:
            del self._observed[health.id]

    async def _write(self) -> None:
        batch = self.recorder.take()
        if not batch:
            return
        try:
            await self.store.write_relaxed(stored.record, batch)
        except StoreError as exc:
            self.recorder.restore(batch)
            self.write_failures += 1
            if self.failing is None:
                log.warning("history_write_failed", error=str(exc), kind=exc.kind,
                            retry_in_s=self.interval_s)
            self.failing = str(exc)
            return
        except Exception:
            self.recorder.restore(batch)
            raise
        self.writes += 1
        if self.failing is not None:
            log.info("history_write_recovered", failed_writes=self.write_failures)
            self.failing = None

    async def flush(self) -> float:
        """Sample every instrument now and write what accumulated (a refused write is kept and logged).

        Returns the time of the sample: the figures in the store cover up to it (unless the write was refused).
        """
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> float:
        now = self.clock()
        self._sample_all(now)
        await self._write()
        return now

    async def run(self) -> None:
        """Sample and write now, then every ``interval_s`` and soon after a state change, until :meth:`close`."""
        gap = min(MIN_WRITE_GAP_S, self.interval_s)
        while not self._stopping.is_set():
            self._wake.clear()
            await self.flush()
            with contextlib.suppress(TimeoutError):  # a flapping link does not turn this into a busy loop
                async with asyncio.timeout(gap):
                    await self._stopping.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s - gap):
                    await self._wake.wait()

    async def close(self, task: asyncio.Task[None] | None = None) -> None:
        """Stop ``task`` (the :meth:`run` loop), then record the last sample and ``stopped`` for every instrument."""
        self._stopping.set()
        self._wake.set()
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        async with self._lock:
            now = self.clock()
            try:
                self._sample_all(now)
                self.recorder.stopped(now)
                await self._write()
            except Exception:  # a bug here must not keep the daemon from closing its store
                log.exception("history_close_failed")
        for health in list(self._observed.values()):
            self._detach(health)

    async def read(self, instrument: str, days: int) -> dict[str, Any]:
        """The instrument's state changes over the last ``days`` x 24 h and its rows of the last ``days`` dates.

        The history is written first and read under the same lock, so the daily seconds cover exactly up to
        ``now`` (the sample just written): from the changes, each state's time can be summed to the same total.
        """
        days = max(1, min(days, MAX_HISTORY_DAYS))
        async with self._lock:
            now = await self._flush_locked()
            since = now - days * 86400.0
            first_day = datetime.fromtimestamp(now, self.recorder.tz).date() - timedelta(days=days - 1)
            found = await self.store.read(functools.partial(stored.read, instrument=instrument, since=since,
                                                            first_day=first_day.isoformat()))

        def change(row: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if row is None else {**row, "at": _iso(row["at"])}

        return {"id": instrument, "days": days, "since": _iso(since), "now": _iso(now),
                "before": change(found["before"]), "changes": [change(row) for row in found["changes"]],
                "daily": found["daily"]}


def _iso(at: float) -> str:
    """ISO 8601 UTC as the rest of the API gives times, to the millisecond (changes may be close together)."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
