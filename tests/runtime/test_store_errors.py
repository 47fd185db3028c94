"""StoreError's kind: decided from SQLite's error code or the errno, kept across the writer process's pickle,
and right for what a caller of the store meets (a full store, a stopped writer, a closed store)."""

from __future__ import annotations

import errno
import pickle
import sqlite3
from pathlib import Path
from typing import get_args

import pytest

from labbridge.errors import StoreError, StoreErrorKind
from labbridge.model import Result
from labbridge.store.db import Store
from labbridge.store.failure import kind_of, store_error
from tests.conftest import run


def result(sample: str) -> Result:
    return Result(instrument="chem-1", sample_id=sample, test_code="GLU", instrument_test_code="GLU", value="5.1",
                  measured_at="2026-11-23T10:00:00+01:00")


async def _commit(store: Store, sample: str, raw: bytes = b"x") -> int:
    stored = await store.commit_message(instrument="chem-1", protocol="astm", raw=raw, received_at=1.0,
                                        results=[result(sample)], destinations=["lis"])
    return stored.message_id


def _stop_the_writer(conn: sqlite3.Connection) -> None:  # module level: the writer process imports it
    conn.execute("INSERT INTO incomplete (instrument, received_at, raw, reason) VALUES ('x', 1, x'00', 'half')")
    raise SystemExit(3)  # nothing in the group commit catches it: the writer process stops


def _raised(action: object) -> sqlite3.Error:
    assert callable(action)
    with pytest.raises(sqlite3.Error) as caught:
        action()
    return caught.value


def test_sqlite_failures_are_classified_by_their_code_not_their_text(tmp_path: Path) -> None:
    full = sqlite3.connect(tmp_path / "full.db", isolation_level=None)
    full.execute("CREATE TABLE t (b BLOB)")
    full.execute("PRAGMA max_page_count = 2")
    assert kind_of(_raised(lambda: full.execute("INSERT INTO t VALUES (zeroblob(100000))"))) == "full"

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, not at all" * 200)
    assert kind_of(_raised(lambda: sqlite3.connect(garbage).execute("SELECT * FROM sqlite_master"))) == "corrupt"

    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(tmp_path / "busy.db", isolation_level=None, timeout=0)
    assert kind_of(_raised(lambda: other.execute("BEGIN IMMEDIATE"))) == "busy"

    assert kind_of(_raised(lambda: sqlite3.connect(tmp_path / "no-such-dir" / "s.db"))) == "io"

    # The same words without SQLite's code (or with another code) are not taken for a full disk.
    assert kind_of(sqlite3.OperationalError("database or disk is full")) == "other"
    assert kind_of(_raised(lambda: full.execute("SELECT * FROM no_such_table_full"))) == "other"


def test_system_errors_and_store_errors_keep_their_kind() -> None:
    assert kind_of(OSError(errno.ENOSPC, "No space left on device")) == "full"
    assert kind_of(OSError(errno.EIO, "Input/output error")) == "io"
    assert kind_of(StoreError("gone", kind="unavailable")) == "unavailable"
    assert kind_of(ValueError("full")) == "other"
    already = StoreError("x", kind="busy")
    assert store_error(already, "commit failed") is already
    wrapped = store_error(OSError(errno.ENOSPC, "No space left on device"), "commit failed")
    assert wrapped.kind == "full" and str(wrapped).startswith("commit failed: ")


def test_every_kind_has_its_own_hint_and_survives_the_writer_process_pickle() -> None:
    kinds: tuple[StoreErrorKind, ...] = get_args(StoreErrorKind)
    hints = {kind: StoreError("x", kind=kind).hint for kind in kinds}
    assert len(set(hints.values())) == len(kinds) and all(hints.values())
    assert "store.max_size_mb" in hints["full"] and "disk" in hints["io"]
    assert StoreError("x").kind == "other"
    back = pickle.loads(pickle.dumps(StoreError("commit failed: disk full", kind="full")))
    assert isinstance(back, StoreError) and back.kind == "full" and str(back) == "commit failed: disk full"


def test_a_full_store_and_the_fault_drill_fail_with_kind_full(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            await _commit(store, "S0", raw=b"x" * 1000)
            await store.set_size_limit(0)  # SQLite's real SQLITE_FULL from here
            with pytest.raises(StoreError) as caught:
                await _commit(store, "S1", raw=b"y" * 20000)
            assert caught.value.kind == "full" and "store.max_size_mb" in caught.value.hint
            await store.set_size_limit(None)
            store.fail_commits = True  # the operator's drill fails the COMMIT as a full disk would
            with pytest.raises(StoreError) as caught:
                await _commit(store, "S2")
            assert caught.value.kind == "full"
            store.fail_commits = False
            assert await _commit(store, "S3") > 0

    run(body())


def test_a_writer_that_stops_fails_what_it_had_as_unavailable_and_is_replaced(tmp_path: Path) -> None:
    """The request in hand fails with kind "unavailable", its write is not kept, and the next request gets a
    new writer."""

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            assert await _commit(store, "S1") == 1
            with pytest.raises(StoreError) as caught:
                await store.write(_stop_the_writer)
            assert caught.value.kind == "unavailable"
            assert await _commit(store, "S2") == 2
            assert store.writer_starts == 2 and store.writer_restarts == 1
            counts = await store.counts()
            assert counts["incomplete"] == 0 and counts["messages"] == 2

    run(body())


def test_a_closed_store_refuses_as_unavailable(tmp_path: Path) -> None:
    async def body() -> None:
        store = Store(tmp_path / "s.db")
        async with store:
            await _commit(store, "S1")
        with pytest.raises(StoreError) as caught:
            await _commit(store, "S2")
        assert caught.value.kind == "unavailable"
        with pytest.raises(StoreError) as caught:
            await store.counts()
        assert caught.value.kind == "unavailable"

    run(body())


def test_a_file_that_is_no_database_refuses_to_open_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database, not at all" * 200)

    async def body() -> None:
        with pytest.raises(StoreError) as caught:
            await Store(path).open()
        assert caught.value.kind == "corrupt" and "backup" in caught.value.hint

    run(body())
