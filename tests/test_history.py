"""The link history's recorder (explicit clock), its tables, their retention (labbridge.health.history)."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from labbridge.health.history import HistoryRecorder, day_spans
from labbridge.health.instrument import STATES, Counters, InstrumentHealth
from labbridge.outbox import Retention
from labbridge.store import history as stored
from labbridge.store.db import Store
from labbridge.store.history import (
    DAY_COUNTERS,
    DAY_STATES,
    NOT_PER_DAY,
    STOPPED,
    DayFigures,
    HistoryBatch,
    StateChange,
)
from tests.conftest import run

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC).timestamp()  # 10:00 UTC
MIDNIGHT = datetime(2026, 12, 4, tzinfo=UTC).timestamp()


def health(ident: str = "chem-1", idle_after_s: float = 1e9) -> InstrumentHealth:
    """A health whose own clock (set_state's ``state_since``) never makes it idle, unless asked for."""
    return InstrumentHealth(ident, "arlon", "astm-generic", "tcp-server", state_since=T0, idle_after_s=idle_after_s)


def by_day(batch: HistoryBatch) -> dict[tuple[str, str], DayFigures]:
    return {(d.instrument, d.day): d for d in batch.days}


def test_the_store_keeps_every_state_and_counter_the_health_has() -> None:
    assert DAY_STATES == STATES
    assert set(DAY_COUNTERS) | set(NOT_PER_DAY) == {f.name for f in dataclasses.fields(Counters)}
    assert not set(DAY_COUNTERS) & set(NOT_PER_DAY)


def test_seconds_go_to_the_state_each_sample_showed_and_counters_to_deltas() -> None:
    rec = HistoryRecorder(tz=UTC)
    h = health()
    rec.sample(h, T0)  # first sight: connecting, nothing before it attributed
    h.set_state("up", "analyzer connected")
    h.counters.messages_received = 3
    h.counters.frames_rejected = 1
    rec.sample(h, T0 + 30)
    h.counters.messages_received = 5
    rec.sample(h, T0 + 100)
    batch = rec.take()
    assert batch.changes == [StateChange("chem-1", T0, "connecting", "starting"),
                             StateChange("chem-1", T0 + 30, "up", "analyzer connected")]
    day = by_day(batch)["chem-1", "2026-12-03"]
    assert day.seconds == {"connecting": 30.0, "up": 70.0}
    assert day.counters == {"messages_received": 5, "frames_rejected": 1}

    # The next batch holds only what happened since: the counters' increase, the seconds since the last sample.
    h.counters.messages_received = 6
    rec.sample(h, T0 + 110)
    batch = rec.take()
    assert batch.changes == []
    assert by_day(batch)["chem-1", "2026-12-03"].seconds == {"up": 10.0}
    assert by_day(batch)["chem-1", "2026-12-03"].counters == {"messages_received": 1}
    assert not rec.take()  # nothing new: nothing to write


def test_derived_states_are_changes_when_sampled() -> None:
    rec = HistoryRecorder(tz=UTC)
    h = health(idle_after_s=600.0)
    h.connected("10.1.2.3:5000", now=T0)  # connected, nothing known of its traffic: the plain idle rule
    h.state_since = T0
    h.last_byte_at = T0
    rec.sample(h, T0)
    rec.sample(h, T0 + 601)  # no byte for longer than idle_after_s: shown idle
    batch = rec.take()
    assert [(c.state, c.at) for c in batch.changes] == [("up", T0), ("idle", T0 + 601)]
    assert by_day(batch)["chem-1", "2026-12-03"].seconds == {"up": 601.0}


def test_seconds_are_split_at_local_midnight_and_add_up() -> None:
    rec = HistoryRecorder(tz=UTC)
    h = health()
    h.set_state("down", "analyzer disconnected")
    rec.sample(h, MIDNIGHT - 90)
    h.counters.timeouts = 2
    rec.sample(h, MIDNIGHT + 30)  # the counters' increase goes to the day it was seen on
    days = by_day(rec.take())
    assert days["chem-1", "2026-12-03"].seconds == {"down": 90.0}
    assert days["chem-1", "2026-12-04"].seconds == {"down": 30.0}
    assert days["chem-1", "2026-12-04"].counters == {"timeouts": 2}
    assert "timeouts" not in days["chem-1", "2026-12-03"].counters
    spans = list(day_spans(T0, T0 + 3 * 86400, UTC))
    assert [d for d, _ in spans] == ["2026-12-03", "2026-12-04", "2026-12-05", "2026-12-06"]
    assert sum(s for _, s in spans) == 3 * 86400 and spans[1][1] == 86400


def test_a_replaced_health_object_starts_from_zero_counters() -> None:
    """A runner restarted (a reload) has new counters from 0: its first figures are not a negative delta."""
    rec = HistoryRecorder(tz=UTC)
    old = health()
    old.set_state("up", "connected")
    old.counters.messages_received = 40
    rec.sample(old, T0)
    new = health()
    new.set_state("up", "connected")
    new.counters.messages_received = 2
    rec.sample(new, T0 + 20)
    batch = rec.take()
    day = by_day(batch)["chem-1", "2026-12-03"]
    assert day.counters == {"messages_received": 42}
    assert day.seconds == {"up": 20.0}
    assert [c.state for c in batch.changes] == ["up"]  # the same state again is no change


def test_a_runner_restarted_with_its_counters_is_not_counted_twice() -> None:
    """A reload restarts a changed instrument's runner with the old counters (the same object)."""
    rec = HistoryRecorder(tz=UTC)
    old = health()
    old.counters.messages_received = 40
    rec.sample(old, T0)
    new = health()
    new.counters = old.counters
    new.counters.messages_received = 43
    rec.sample(new, T0 + 20)
    assert by_day(rec.take())["chem-1", "2026-12-03"].counters == {"messages_received": 43}


def test_set_state_tells_its_observers_of_changes_only() -> None:
    h = health()
    seen: list[str] = []
    h.observers.append(lambda x: seen.append(x.state))
    h.set_state("up", "connected")
    h.set_state("up", "connected, 3 messages")  # a new reason alone: no change of state
    h.set_state("down", "cable")
    assert seen == ["up", "down"]


def test_a_refused_batch_goes_back_in_front_and_stop_marks_a_gap() -> None:
    rec = HistoryRecorder(tz=UTC, max_changes=3)
    h = health()
    rec.sample(h, T0)
    h.counters.junk_bytes = 10
    h.set_state("up", "connected")
    rec.sample(h, T0 + 10)
    failed = rec.take()
    h.counters.junk_bytes = 15
    h.set_state("down", "cable")
    rec.sample(h, T0 + 20)
    rec.restore(failed)
    rec.stopped(T0 + 25)
    batch = rec.take()
    # Bounded: the oldest change went first (the restored ones are older than those since).
    assert [c.state for c in batch.changes] == ["up", "down", STOPPED]
    assert rec.dropped_changes == 1
    day = by_day(batch)["chem-1", "2026-12-03"]
    assert day.counters == {"junk_bytes": 15}
    assert day.seconds == {"connecting": 10.0, "up": 10.0, "down": 5.0}
    # After a stop, the next sample of the instrument starts over (a restart).
    rec.sample(h, T0 + 500)
    assert [c.state for c in rec.take().changes] == ["down"]


def test_the_store_adds_deltas_reads_back_and_prunes(tmp_path: Path) -> None:
    day = datetime.fromtimestamp(T0).date().isoformat()  # link_days are in the node's local dates

    async def body() -> None:
        async with Store(tmp_path / "h.db") as store:
            first = HistoryBatch([StateChange("chem-1", T0, "up", "connected")],
                                 [DayFigures("chem-1", day, {"up": 60.0}, {"messages_received": 4})])
            second = HistoryBatch([StateChange("chem-1", T0 + 60, "down", "cable")],
                                  [DayFigures("chem-1", day, {"up": 5.0, "down": 10.0}, {"messages_received": 1})])
            old = HistoryBatch([StateChange("chem-1", T0 - 40 * 86400, "up", "long ago")],
                               [DayFigures("chem-1", "2026-10-01", {"up": 1.0}, {})])
            for batch in (first, second, old):
                await store.write_relaxed(stored.record, batch)
            found = await store.read(lambda c: stored.read(c, "chem-1", since=T0 - 1, first_day="2026-01-01"))
            assert found["before"] == {"at": T0 - 40 * 86400, "state": "up", "reason": "long ago"}
            assert [c["state"] for c in found["changes"]] == ["up", "down"]
            assert [d["day"] for d in found["daily"]] == ["2026-10-01", day]
            today = found["daily"][1]
            assert today["seconds"]["up"] == 65.0 and today["seconds"]["down"] == 10.0
            assert today["counters"]["messages_received"] == 5

            pruned = await store.prune(Retention(raw_messages_s=1e9, delivered_s=1e9, incomplete_s=1e9,
                                                 history_s=30 * 86400), T0 + 100)
            assert pruned["state_changes"] == 1 and pruned["history_days"] == 1
            found = await store.read(lambda c: stored.read(c, "chem-1", since=0, first_day="2000-01-01"))
            assert [c["reason"] for c in found["changes"]] == ["connected", "cable"]
            assert [d["day"] for d in found["daily"]] == [day]

    run(body())


def test_a_version_5_store_gets_the_history_tables(tmp_path: Path) -> None:
    from labbridge.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION

    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    for step in range(2, 6):
        MIGRATIONS[step](conn)
    conn.execute("PRAGMA user_version=5")
    conn.commit()
    conn.close()

    async def body() -> None:
        async with Store(path) as store:
            await store.write_relaxed(stored.record, HistoryBatch([StateChange("a", 1.0, "up", "x")], []))

    run(body())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # 6, and on to the latest
    assert conn.execute("SELECT state FROM link_states").fetchall() == [("up",)]


def test_a_version_9_store_keeps_the_security_counters_per_day_after_its_upgrade(tmp_path: Path) -> None:
    """Schema 10 adds a column per counter of what may connect and of limits to link_days; the day rows
    written before stay, and the new counters are added up per day from then on."""
    from labbridge.store.history import SECURITY_COUNTERS, DayFigures
    from labbridge.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION

    path = tmp_path / "v9.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    for step in range(2, 10):
        MIGRATIONS[step](conn)
    conn.execute("PRAGMA user_version=9")
    conn.execute("INSERT INTO link_days (instrument, day, up_s, messages_received) VALUES ('a', '2026-12-01', 60, 3)")
    conn.commit()
    assert "over_limit" not in {row[1] for row in conn.execute("PRAGMA table_info(link_days)")}
    conn.close()
    day = DayFigures("a", "2026-12-03", counters={"peers_refused": 2, "over_limit": 1, "throttled": 4})

    async def body() -> None:
        async with Store(path) as store:
            await store.write_relaxed(stored.record, HistoryBatch([], [day]))
            await store.write_relaxed(stored.record, HistoryBatch([], [day]))

    run(body())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = {row[1] for row in conn.execute("PRAGMA table_info(link_days)")}
    assert set(SECURITY_COUNTERS) <= columns
    assert conn.execute("SELECT up_s, messages_received FROM link_days WHERE day = '2026-12-01'").fetchone() == (60, 3)
    assert conn.execute("SELECT peers_refused, over_limit, throttled, connections_replaced FROM link_days "
                        "WHERE day = '2026-12-03'").fetchone() == (4, 2, 8, 0)


def test_link_history_sees_set_state_at_once_and_marks_removed_and_stopped_instruments(tmp_path: Path) -> None:
    from labbridge.health.history import LinkHistory

    clock = [T0]
    a, b = health("a"), health("b")
    sources = [a, b]

    async def body() -> None:
        async with Store(tmp_path / "h.db") as store:
            hist = LinkHistory(store, lambda: list(sources), interval_s=10.0, clock=lambda: clock[0],
                               recorder=HistoryRecorder(tz=UTC))
            await hist.flush()  # first sight of both: observed from now on
            clock[0] = T0 + 5
            a.set_state("up", "connected")  # dated now, not at the next sample
            clock[0] = T0 + 20
            sources.remove(b)  # removed from the configuration while running
            await hist.flush()
            clock[0] = T0 + 30
            await hist.close()
            assert not a.observers and not b.observers

    run(body())
    conn = sqlite3.connect(tmp_path / "h.db")
    changes = conn.execute("SELECT instrument, at - ?, state, reason FROM link_states ORDER BY instrument, at",
                           (T0,)).fetchall()
    assert changes == [("a", 0.0, "connecting", "starting"), ("a", 5.0, "up", "connected"),
                       ("a", 30.0, STOPPED, "labbridge stopped"),
                       ("b", 0.0, "connecting", "starting"), ("b", 20.0, STOPPED, "removed from the configuration")]
    seconds = conn.execute("SELECT instrument, connecting_s, up_s FROM link_days ORDER BY instrument").fetchall()
    assert seconds == [("a", 5.0, 25.0), ("b", 20.0, 0.0)]
