from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from labbridge.errors import StoreError
from labbridge.model import Result, result_values
from labbridge.store.db import Store
from labbridge.store.schema import SCHEMA_VERSION
from tests.conftest import run


def _pragma(conn: sqlite3.Connection, name: str) -> object:  # runs in the writer process: module level
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def result(sample: str, test: str, value: str = "1.0") -> Result:
    return Result(instrument="chem-1", sample_id=sample, test_code=test, instrument_test_code=test, value=value,
                  measured_at="2026-11-23T10:00:00+01:00")


def test_commit_is_durable_and_resent_results_are_recognised(tmp_path: Path) -> None:
    path = tmp_path / "store.db"

    async def body() -> None:
        async with Store(path) as store:
            first = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw-1", received_at=1.0,
                                               results=[result("S1", "GLU"), result("S1", "K"), result("S2", "GLU")],
                                               destinations=["lis-a", "lis-b"])
            assert (first.new_results, first.duplicate_results) == (3, 0)
            assert len(first.outbox_ids) == 4  # two samples x two destinations
            again = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw-1", received_at=2.0,
                                               results=[result("S1", "GLU"), result("S1", "K")],
                                               destinations=["lis-a", "lis-b"])
            assert (again.new_results, again.duplicate_results, again.outbox_ids) == (0, 2, ())
            item, _ = await store.next_due("lis-a", now=10.0)
            assert item is not None and [r.test_code for r in item.results] == ["GLU", "K"]
            assert item.control_id.startswith("LB") and len(item.control_id) == 20

    run(body())
    # A fresh connection (another process after a crash would see the same) finds everything.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_commit_raises_and_keeps_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            store.fail_commits = True
            with pytest.raises(StoreError, match="commit failed"):
                await store.commit_message(instrument="chem-1", protocol="astm", raw=b"x", received_at=1.0,
                                           results=[result("S1", "GLU")], destinations=["lis"])
            store.fail_commits = False
            counts = await store.counts()
            assert counts["messages"] == 0 and counts["results"] == 0

    run(body())


def test_concurrent_commits_are_grouped_and_all_land(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            await asyncio.gather(*(
                store.commit_message(instrument="chem-1", protocol="astm", raw=b"x", received_at=float(i),
                                     results=[result(f"S{i}", "GLU")], destinations=["lis"])
                for i in range(200)))
            counts = await store.counts()
            assert counts["results"] == 200 and counts["outbox"]["lis"]["pending"] == 200
            assert store.commits < 200  # group commit folded requests together

    run(body())


def test_outbox_retry_and_dead_letter_states(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            stored = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"x", received_at=1.0,
                                                results=[result("S1", "GLU"), result("S2", "GLU")],
                                                destinations=["lis"])
            a, b = stored.outbox_ids
            await store.schedule_retry(a, next_attempt_at=100.0, error="LIS answered AR")
            item, _ = await store.next_due("lis", now=50.0)
            assert item is not None and item.id == b  # the refused one does not block the next
            await store.dead_letter(b, "LIS answered AE: unknown test")
            item, next_at = await store.next_due("lis", now=50.0)
            assert item is None and next_at == 100.0
            rows = await store.outbox_rows(state="dead")
            assert rows[0]["last_error"] == "LIS answered AE: unknown test"

    run(body())


# ---- schema migration, operator actions, retention, size cap, backlog ------------------------------------

def old(sample: str, test: str, hours_ago: float, received_at: float) -> Result:
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(received_at - hours_ago * 3600, UTC).isoformat()
    return Result(instrument="chem-1", sample_id=sample, test_code=test, instrument_test_code=test, value="2",
                  measured_at=at)


def test_a_version_1_store_is_migrated_in_place_and_keeps_its_data(tmp_path: Path) -> None:
    from labbridge.store.schema import SCHEMA, SCHEMA_VERSION

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO messages (instrument, protocol, received_at, raw, status)"
                 " VALUES ('a', 'astm', 1, x'01', 'decoded')")
    conn.execute("INSERT INTO outbox (destination, key, control_id, message_id, instrument, result_ids, state,"
                 " created_at, next_attempt_at, last_error)"
                 " VALUES ('lis', 'k', 'LBK', 1, 'a', '[]', 'dead', 1, 1, 'LIS answered AE')")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    async def body() -> None:
        async with Store(path) as store:
            rows = await store.outbox_rows()
            assert rows[0]["last_error"] == "LIS answered AE" and rows[0]["backlog"] is False
            # An item dead-lettered before the migration counts as refused by the LIS, and can be retried.
            outcome = await store.retry_dead(None, actor="ops", reason="LIS fixed", now=5.0)
            assert outcome == [{"id": 1, "outcome": "queued"}]
            assert (await store.audit_rows())[0]["actor"] == "ops"

    run(body())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_version_4_store_gets_results_unique_by_sample_and_keeps_its_rows(tmp_path: Path) -> None:
    """Schema 5 rebuilds ``results`` (unique per instrument, sample and content key): ids, contents and the
    recognition of resent results survive it."""
    import json

    from labbridge.store.schema import MIGRATIONS, SCHEMA

    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    for step in (2, 3, 4):
        MIGRATIONS[step](conn)
    conn.execute("INSERT INTO messages (instrument, protocol, received_at, raw, status)"
                 " VALUES ('chem-1', 'astm', 1, x'01', 'decoded')")
    stored = [result("S1", "GLU"), result("S1", "K"), result("S2", "GLU")]
    for i, r in enumerate(stored, start=7):  # as schema 4 wrote them (no sample column), ids not from 1
        data = {**r.to_json(), "message_id": 1}
        conn.execute("INSERT INTO results (id, message_id, instrument, key, received_at, data, backlog)"
                     " VALUES (?, 1, 'chem-1', ?, 1.0, ?, ?)", (i, r.idempotency_key(), json.dumps(data), i % 2))
    conn.execute("PRAGMA user_version=4")
    conn.commit()
    conn.close()

    async def body() -> None:
        async with Store(path) as store:
            again = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"again", received_at=2.0,
                                               results=[result("S1", "GLU"), result("S2", "GLU"),
                                                        result("S2", "K")], destinations=["lis"])
            assert (again.new_results, again.duplicate_results) == (1, 2)  # resent ones still recognised

    run(body())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT id, sample, key, backlog, data FROM results ORDER BY id").fetchall()
    assert [(r[0], r[1], r[3]) for r in rows] == [(7, "S1", 1), (8, "S1", 0), (9, "S2", 1), (10, "S2", 0)]
    assert [r[2] for r in rows[:3]] == [r.idempotency_key() for r in stored]
    assert Result.from_json(json.loads(rows[1][4])) == dataclasses.replace(stored[1], message_id=1)
    unique = [name for _, name, is_unique, *_ in conn.execute("PRAGMA index_list(results)") if is_unique]
    assert [[c[2] for c in conn.execute(f"PRAGMA index_info({name})")] for name in unique] == \
        [["instrument", "sample", "key"]]
    assert {name for _, name, *_ in conn.execute("PRAGMA index_list(results)")} >= {"results_message"}


def test_retry_and_purge_are_audited_and_purge_never_touches_pending(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            stored = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"x", received_at=1.0,
                                                results=[result("S1", "GLU"), result("S2", "GLU"), result("S3", "K")],
                                                destinations=["lis"])
            a, b, c = stored.outbox_ids
            await store.dead_letter(a, "LIS answered AE: unknown test")
            await store.mark_delivered(b, 2.0)
            with pytest.raises(StoreError, match="only dead or delivered"):
                await store.purge(state="pending", actor="ops", reason="x", now=3.0)
            done = await store.purge(item_ids=[b, c], actor="ops", reason="cleanup", now=3.0)
            assert done["purged"] == 1 and done["skipped"] == [c]  # c is pending: kept
            outcome = await store.retry_dead([a, c, 999], actor="alice", reason="LIS mapping fixed", now=4.0)
            assert [o["outcome"] for o in outcome] == ["queued", "not-dead (pending)", "not-found"]
            row = (await store.outbox_rows(item_id=a))[0]
            assert (row["state"], row["attempts"], row["dead_kind"]) == ("pending", 0, None)
            assert row["next_attempt_at"] == 4.0
            audit = await store.audit_rows()
            assert [(e["action"], e["actor"], e["reason"]) for e in audit] == [
                ("retry", "alice", "LIS mapping fixed"), ("purge", "ops", "cleanup")]
            assert audit[0]["detail"]["previous_error"] == "LIS answered AE: unknown test"

    run(body())


def test_prune_keeps_pending_and_dead_items_and_what_they_refer_to(tmp_path: Path) -> None:
    from labbridge.outbox import Held, Retention

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            delivered = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"d", received_at=100.0,
                                                   results=[result("S1", "GLU")], destinations=["lis"])
            await store.mark_delivered(delivered.outbox_ids[0], 101.0)
            await store.commit_message(instrument="chem-1", protocol="astm", raw=b"p", received_at=100.0,
                                       results=[result("S2", "GLU")], destinations=["lis"])
            await store.commit_message(instrument="chem-1", protocol="astm", raw=b"u", received_at=100.0,
                                       results=[], destinations=["lis"], held=[Held("unmapped", "code X")])
            await store.record_incomplete(instrument="chem-1", raw=b"i", reason="timeout", received_at=100.0)
            recent = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"r", received_at=10_000.0,
                                                results=[result("S3", "GLU")], destinations=["lis"])
            await store.mark_delivered(recent.outbox_ids[0], 10_001.0)
            keep = Retention(raw_messages_s=1000, delivered_s=1000, incomplete_s=1000)
            pruned = await store.prune(keep, now=10_500.0)
            assert pruned["delivered_items"] == 1 and pruned["results"] == 1 and pruned["incomplete"] == 1
            assert pruned["messages"] == 1
            counts = await store.counts()
            assert counts["outbox"]["lis"] == {**counts["outbox"]["lis"], "pending": 1, "delivered": 1, "dead": 1}
            assert counts["results"] == 2 and counts["messages"] == 3 and counts["incomplete"] == 0
            item, _ = await store.next_due("lis", now=20_000.0)
            assert item is not None and [r.sample_id for r in item.results] == ["S2"]  # still whole
            dead = await store.outbox_rows(state="dead")
            raw = await store.raw_message(dead[0]["message_id"])
            assert raw is not None and raw.raw == b"u"  # a dead letter's raw message is kept for re-decoding

    run(body())


def test_a_full_store_refuses_the_commit_keeps_nothing_partial_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def body() -> None:
        async with Store(path) as store:
            await store.commit_message(instrument="chem-1", protocol="astm", raw=b"x" * 1000, received_at=1.0,
                                       results=[result("S0", "GLU")], destinations=["lis"])
            await store.set_size_limit(0)  # no page more than now: SQLite's real SQLITE_FULL
            with pytest.raises(StoreError, match="database or disk is full"):
                await store.commit_message(instrument="chem-1", protocol="astm", raw=b"y" * 20000, received_at=2.0,
                                           results=[result("S1", "GLU")], destinations=["lis"])
            assert store.last_commit_error is not None and "full" in store.last_commit_error
            before = await store.counts()
            await store.set_size_limit(None)
            stored = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"z" * 20000,
                                                received_at=3.0, results=[result("S99", "GLU")], destinations=["lis"])
            assert stored.new_results == 1
            after = await store.counts()
            assert after["messages"] == before["messages"] + 1
            # Every stored message has its results and outbox item: nothing half-written.
            assert after["results"] == after["messages"] == after["outbox"]["lis"]["pending"]

    run(body())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_backlog_is_flagged_and_live_items_come_first(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            now = 1_800_000_000.0
            backlog = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"o", received_at=now,
                                                 results=[old("B1", "GLU", 30, now)], destinations=["lis"],
                                                 backlog_after_s=3600)
            live = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"n", received_at=now + 1,
                                              results=[old("L1", "GLU", 0.1, now)], destinations=["lis"],
                                              backlog_after_s=3600)
            item, _ = await store.next_due("lis", now=now + 10)
            assert item is not None and item.id == live.outbox_ids[0] and not item.backlog
            await store.mark_delivered(item.id, now + 10)
            item, next_at = await store.next_due("lis", now=now + 10, include_backlog=False)
            assert item is None and next_at is None  # only backlog is left, and it is being paced
            item, _ = await store.next_due("lis", now=now + 10)
            assert item is not None and item.id == backlog.outbox_ids[0] and item.backlog
            counts = await store.counts()
            assert counts["backlog_results"] == 1 and counts["outbox"]["lis"]["backlog_pending"] == 1

    run(body())


def test_group_commit_counters(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            await asyncio.gather(*(
                store.commit_message(instrument="chem-1", protocol="astm", raw=b"x", received_at=float(i),
                                     results=[result(f"S{i}", "GLU")], destinations=["lis"]) for i in range(100)))
            assert store.committed_jobs == 100 and sum(store.group_sizes) == store.commits < 100
            assert store.commit_seconds > 0

    run(body())


@pytest.mark.parametrize("multi_row", [True, False], ids=["multi-row-insert", "row-by-row"])
def test_each_outbox_item_points_at_its_own_results_with_repeats_and_many_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multi_row: bool) -> None:
    """Both insert paths (SQLite 3.35+ multi-row INSERT ... RETURNING, and row by row) give each result its
    own row id: a repeat inside one message and a result stored before are duplicates, over 100 rows span
    several statements, and every outbox item lists exactly its sample's results. (The SQL functions run
    here, in this process, on a migrated store: the writer process would not see the monkeypatch.)"""
    from labbridge.outbox import StoredMessage
    from labbridge.store import sql as store_sql
    from labbridge.store.writer import connect

    if multi_row and not store_sql._MULTI_ROW_INSERT:
        pytest.skip("this SQLite has no RETURNING (3.35+)")
    monkeypatch.setattr(store_sql, "_MULTI_ROW_INSERT", multi_row)
    path = tmp_path / "store.db"

    async def migrate() -> None:
        async with Store(path):
            pass

    run(migrate())
    conn = connect(str(path))
    try:
        def commit(raw: bytes, received_at: float, results: list[Result]) -> StoredMessage:
            return store_sql.commit_message(
                conn, instrument="chem-1", protocol="astm", raw=raw, received_at=received_at,
                results=[result_values(r) for r in results], destinations=["lis"], error=None,
                sender_id=None, dead=[], backlog_after_s=None, held_results=(), hold_reason="")

        commit(b"first", 1.0, [result("S0", "T0", "0")])
        many = [result(f"S{i % 5}", f"T{i}", str(i)) for i in range(250)]
        sent = [*many, many[7], result("S0", "T0", "0")]  # a repeat inside, and one stored before
        stored = commit(b"second", 2.0, sent)
        assert (stored.new_results, stored.duplicate_results) == (249, 3)  # S0/T0/"0" is many[0] too
        items, _ = store_sql.due_items(conn, "lis", 10.0, include_backlog=True, limit=100, exclude=())
        by_sample = {item.results[0].sample_id: item for item in items if item.message_id == stored.message_id}
        assert sorted(by_sample) == [f"S{i}" for i in range(5)]
        for sample, item in by_sample.items():
            expected = sorted((r.test_code, r.value) for r in many[1:] if r.sample_id == sample)
            assert sorted((r.test_code, r.value) for r in item.results) == expected
    finally:
        conn.close()


def test_checkpoints_run_in_the_background_not_inside_a_commit(tmp_path: Path) -> None:
    """The WAL passes SQLite's default 1,000-page checkpoint without any commit copying it into the
    database file (the commit an analyzer waits on stays short); the background checkpointer does it."""
    from labbridge.store.db import WAL_BACKSTOP_PAGES

    db = tmp_path / "s.db"
    big = b"R" * 6000  # two pages of raw bytes per message

    async def fill(store: Store, first: int, count: int) -> None:
        await asyncio.gather(*(
            store.commit_message(instrument="chem-1", protocol="astm", raw=big, received_at=float(i),
                                 results=[result(f"S{i}", "GLU")], destinations=["lis"])
            for i in range(first, first + count)))

    async def body() -> None:
        # No background checkpoint during this part.
        async with Store(db, checkpoint_interval_s=3600.0) as store:
            assert await store.write(_pragma, "wal_autocheckpoint") == WAL_BACKSTOP_PAGES
            size_before = store.size().file_bytes
            await fill(store, 0, 600)
            size = store.size()
            assert size.wal_bytes > 1000 * 4096  # past SQLite's default checkpoint...
            assert size.file_bytes == size_before  # ...and no commit copied it into the database file
            assert store.checkpoints == 0

        async with Store(db, checkpoint_interval_s=0.05) as store:
            await fill(store, 600, 100)
            for _ in range(200):
                if store.checkpoints >= 2:
                    break
                await asyncio.sleep(0.05)
            assert store.checkpoints >= 2 and store.last_checkpoint_error is None
            assert store.size().file_bytes > 700 * 6000  # the messages are in the database file now
            counts = await store.counts()
            assert counts["messages"] == 700

    run(body())


def test_a_result_reads_back_as_stored_whatever_its_characters_and_value(tmp_path: Path) -> None:
    """The stored form (orjson, UTF-8 rather than \\u escapes; a value that parses as NaN or infinity) reads
    back as the same result."""
    from labbridge.model import Patient

    patient = Patient(name=("Ζαχαρίου", "Élodie"), birth_date="19800101", sex="F", comments=("née Müller",))
    sent = [dataclasses.replace(result("S1", "GLU", value), patient=patient, comments=("hémolysé ✓",),
                                units="µmol/L", flags=("H", "↑"))
            for value in ("NaN", "inf", "-Infinity", "5.5", "1e400", "<0.1")]

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            stored = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw", received_at=1.0,
                                                results=[dataclasses.replace(r, test_code=f"T{i}",
                                                                             instrument_test_code=f"T{i}")
                                                         for i, r in enumerate(sent)],
                                                destinations=["lis"])
            items, _ = await store.due_items("lis", now=2.0)
        assert len(items) == 1
        got = [dataclasses.replace(r, message_id=None) for r in items[0].results]
        assert got == [dataclasses.replace(r, test_code=f"T{i}", instrument_test_code=f"T{i}")
                       for i, r in enumerate(sent)]
        assert items[0].results[0].message_id == stored.message_id

    run(body())


def test_the_wal_starts_again_under_writes_that_never_pause(tmp_path: Path) -> None:
    """With the writer never idle, a background checkpoint always ends behind it, and the WAL would grow to
    the backstop and be checkpointed inside a commit. After each background checkpoint the writer copies
    the rest, and the WAL starts again from its beginning (its header's salt changes each time)."""
    import time

    from benchmarks.commit_tail import wal_salt

    wal = tmp_path / "s.db-wal"

    async def body() -> tuple[int, int]:
        salts: set[int] = set()
        async with Store(tmp_path / "s.db", checkpoint_interval_s=0.05) as store:
            stop = time.monotonic() + 1.5

            async def commit_forever(worker: int) -> None:
                n = 0
                while time.monotonic() < stop:
                    n += 1
                    await store.commit_message(
                        instrument="chem-1", protocol="astm", raw=b"x" * 2000, received_at=1.0,
                        results=[result(f"W{worker}-{n}", f"T{i}", f"{i}.5") for i in range(20)], destinations=["lis"])

            async def watch() -> None:
                while time.monotonic() < stop:
                    if (value := wal_salt(wal)) is not None:
                        salts.add(value)
                    await asyncio.sleep(0.01)

            await asyncio.gather(watch(), *(commit_forever(w) for w in range(16)))
            asked = store.wal_restarts_asked
        return len(salts), asked

    restarts, asked = run(body(), timeout=60)
    assert asked >= 8
    assert restarts >= 8  # the WAL started again many times (without the follow-up: 3, those of opening)
