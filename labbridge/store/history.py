"""Link history in the store: each instrument's state changes and its figures per day (issue 16).

Two tables (schema step :func:`migrate_link_history`):

- ``link_states``: one row per change of an instrument's shown state (``at``, ``state``, ``reason``), and a
  ``stopped`` row when labbridge stops, so the time it was not running shows as a gap, not as the last state.
- ``link_days``: one row per instrument and day (the node's local date, ``YYYY-MM-DD``): the seconds spent
  in each state and the day's counters. Rows grow by deltas (``INSERT ... ON CONFLICT DO UPDATE SET
  x = x + excluded.x``): the daemon's counters restart at 0 with it, so the store adds what happened since
  the last write, never a total.

What is written comes from :class:`labbridge.health.history.HistoryRecorder` (off the data path, in its own
task). The functions taking ``conn`` run in the writer process (``Store.write_relaxed``) or on the read
connection (``Store.read``); the values exchanged are the plain dataclasses below.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The link states a day's seconds are kept for (labbridge.health.instrument.STATES; the store does not
# import health: a test holds the two to the same list).
DAY_STATES: tuple[str, ...] = ("planned", "connecting", "up", "idle", "degraded", "down", "failed")

# The counters kept per day (labbridge.health.instrument.Counters field names, a test holds them to it): those
# link_days was created with (schema 6), then those of what may connect and of limits (docs/security.md,
# added by schema 10).
_SCHEMA6_COUNTERS: tuple[str, ...] = (
    "messages_received", "results_received", "duplicate_results", "bytes_received", "frames_accepted",
    "frames_rejected", "naks_received", "checksum_errors", "retransmissions", "timeouts", "junk_bytes",
    "connections", "connections_refused", "incomplete_transmissions", "decode_errors", "store_failures",
    "duplicate_messages", "acks_sent", "host_queries", "query_answers_sent", "orders_sent", "sends_aborted",
    "keepalives", "contentions",
)
SECURITY_COUNTERS: tuple[str, ...] = ("peers_refused", "connections_replaced", "idle_closed", "throttled",
                                      "over_limit")
DAY_COUNTERS: tuple[str, ...] = (*_SCHEMA6_COUNTERS, *SECURITY_COUNTERS)
NOT_PER_DAY: tuple[str, ...] = ()  # every counter is kept per day

# Recorded when labbridge stops: not a link state, the start of a gap in the history.
STOPPED = "stopped"


def _seconds_column(state: str) -> str:
    return f"{state}_s"


_LINK_HISTORY_SQL = [
    """CREATE TABLE IF NOT EXISTS link_states (
        id INTEGER PRIMARY KEY,
        instrument TEXT NOT NULL,
        at REAL NOT NULL,                -- seconds since the epoch
        state TEXT NOT NULL,             -- a link state, or 'stopped' (labbridge stopped)
        reason TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS link_states_instrument ON link_states(instrument, at)",
    "CREATE INDEX IF NOT EXISTS link_states_at ON link_states(at)",
    "CREATE TABLE IF NOT EXISTS link_days (\n"
    "    instrument TEXT NOT NULL,\n"
    "    day TEXT NOT NULL,               -- the node's local date, YYYY-MM-DD\n"
    + "".join(f"    {_seconds_column(s)} REAL NOT NULL DEFAULT 0,\n" for s in DAY_STATES)
    + "".join(f"    {c} INTEGER NOT NULL DEFAULT 0,\n" for c in _SCHEMA6_COUNTERS)
    + "    PRIMARY KEY (instrument, day)\n)",
    "CREATE INDEX IF NOT EXISTS link_days_day ON link_days(day)",
]


def migrate_link_history(conn: sqlite3.Connection) -> None:
    """Link history: state changes (link_states) and daily seconds per state and counters (link_days)."""
    for statement in _LINK_HISTORY_SQL:
        conn.execute(statement)


def migrate_security_counters(conn: sqlite3.Connection) -> None:
    """Link history per day also counts refused peers, replaced connections, idle closes, throttling and input
    over a limit."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(link_days)")}
    for counter in SECURITY_COUNTERS:
        if counter not in present:
            conn.execute(f"ALTER TABLE link_days ADD COLUMN {counter} INTEGER NOT NULL DEFAULT 0")


@dataclass(frozen=True, slots=True)
class StateChange:
    instrument: str
    at: float
    state: str
    reason: str


@dataclass(slots=True)
class DayFigures:
    """What to add to one instrument's row of one day: seconds per state, counter increments."""

    instrument: str
    day: str
    seconds: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, other: DayFigures) -> None:
        for state, s in other.seconds.items():
            self.seconds[state] = self.seconds.get(state, 0.0) + s
        for name, n in other.counters.items():
            self.counters[name] = self.counters.get(name, 0) + n


@dataclass(slots=True)
class HistoryBatch:
    changes: list[StateChange] = field(default_factory=list)
    days: list[DayFigures] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes or self.days)


_UPSERT_DAY = (
    "INSERT INTO link_days (instrument, day, "
    + ", ".join([*map(_seconds_column, DAY_STATES), *DAY_COUNTERS])
    + ") VALUES (?, ?, " + ", ".join("?" * (len(DAY_STATES) + len(DAY_COUNTERS)))
    + ") ON CONFLICT (instrument, day) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in [*map(_seconds_column, DAY_STATES), *DAY_COUNTERS])
)


def record(conn: sqlite3.Connection, batch: HistoryBatch) -> None:
    """Append the batch's state changes and add its per-day figures (deltas) to the day rows."""
    conn.executemany("INSERT INTO link_states (instrument, at, state, reason) VALUES (?, ?, ?, ?)",
                     [(c.instrument, c.at, c.state, c.reason) for c in batch.changes])
    conn.executemany(_UPSERT_DAY, [
        (d.instrument, d.day, *(float(d.seconds.get(s, 0.0)) for s in DAY_STATES),
         *(int(d.counters.get(c, 0)) for c in DAY_COUNTERS))
        for d in batch.days])


def local_day(at: float) -> str:
    """The node's local date of ``at``, as ``link_days.day`` holds it."""
    return datetime.fromtimestamp(at).date().isoformat()


def prune(conn: sqlite3.Connection, cutoff: float) -> dict[str, int]:
    """Drop state changes before ``cutoff`` and the day rows of days before its local date."""
    return {
        "state_changes": conn.execute("DELETE FROM link_states WHERE at < ?", (cutoff,)).rowcount,
        "history_days": conn.execute("DELETE FROM link_days WHERE day < ?", (local_day(cutoff),)).rowcount,
    }


def read(conn: sqlite3.Connection, instrument: str, *, since: float, first_day: str) -> dict[str, Any]:
    """The changes since ``since`` (with the one in force at ``since``), and the day rows from ``first_day`` on.

    Returns ``{"before": change or None, "changes": [...], "daily": [...]}``, times as epoch seconds.
    """
    def change(row: tuple[float, str, str]) -> dict[str, Any]:
        return {"at": row[0], "state": row[1], "reason": row[2]}

    before = conn.execute("SELECT at, state, reason FROM link_states WHERE instrument = ? AND at < ?"
                          " ORDER BY at DESC, id DESC LIMIT 1", (instrument, since)).fetchone()
    changes = conn.execute("SELECT at, state, reason FROM link_states WHERE instrument = ? AND at >= ?"
                           " ORDER BY at, id", (instrument, since)).fetchall()
    columns = [*map(_seconds_column, DAY_STATES), *DAY_COUNTERS]
    daily = []
    for row in conn.execute(f"SELECT day, {', '.join(columns)} FROM link_days WHERE instrument = ? AND day >= ?"
                            " ORDER BY day", (instrument, first_day)):
        values = row[1:]
        daily.append({
            "day": row[0],
            "seconds": {s: round(float(v), 3) for s, v in zip(DAY_STATES, values[:len(DAY_STATES)], strict=True)},
            "counters": {c: int(v) for c, v in zip(DAY_COUNTERS, values[len(DAY_STATES):], strict=True)},
        })
    return {"before": change(before) if before else None, "changes": [change(r) for r in changes], "daily": daily}
