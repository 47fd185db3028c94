from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from labbridge.errors import StoreError
from labbridge.model import Result
from labbridge.runtime.store import Store
from tests.conftest import run


def result(sample: str, test: str, value: str = "1.0") -> Result:
    return Result(instrument="chem-1", sample_id=sample, test_code=test, instrument_test_code=test, value=value,
                  measured_at="2026-11-23T10:00:00+01:00")


def test_commit_is_durable_and_resent_results_are_recognised(tmp_path: Path) -> None:
    path = tmp_path / "store.db"

    async def body() -> None:
        store = Store(path)
        await store.open()
        try:
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
        finally:
            await store.close()

    run(body())
    # A fresh connection (another process after a crash would see the same) finds everything.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_commit_raises_and_keeps_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        store = Store(tmp_path / "s.db")
        await store.open()
        try:
            store.fail_commits = True
            with pytest.raises(StoreError, match="commit failed"):
                await store.commit_message(instrument="chem-1", protocol="astm", raw=b"x", received_at=1.0,
                                           results=[result("S1", "GLU")], destinations=["lis"])
            store.fail_commits = False
            counts = await store.counts()
            assert counts["messages"] == 0 and counts["results"] == 0
        finally:
            await store.close()

    run(body())


def test_concurrent_commits_are_grouped_and_all_land(tmp_path: Path) -> None:
    async def body() -> None:
        store = Store(tmp_path / "s.db")
        await store.open()
        try:
            await asyncio.gather(*(
                store.commit_message(instrument="chem-1", protocol="astm", raw=b"x", received_at=float(i),
                                     results=[result(f"S{i}", "GLU")], destinations=["lis"])
                for i in range(200)))
            counts = await store.counts()
            assert counts["results"] == 200 and counts["outbox"]["lis"]["pending"] == 200
            assert store.commits < 200  # group commit folded requests together
        finally:
            await store.close()

    run(body())


def test_outbox_retry_and_dead_letter_states(tmp_path: Path) -> None:
    async def body() -> None:
        store = Store(tmp_path / "s.db")
        await store.open()
        try:
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
        finally:
            await store.close()

    run(body())
