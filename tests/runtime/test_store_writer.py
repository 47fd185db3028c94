"""The store's writer: its failures and its request kinds under either writer, and the writer process's own
(killed, corrupt answers, signals, unpicklable requests, never outliving the daemon)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labbridge.errors import StoreError
from labbridge.model import Result
from labbridge.store import sql
from labbridge.store.db import Store
from labbridge.store.schema import migrate
from labbridge.store.writer import (
    WRITE,
    FrameBuffer,
    connect_writer,
    frame,
    journal_in_memory,
    journals_in_memory,
    run_writes,
)
from tests.conftest import run


def result(sample: str, test: str = "GLU") -> Result:
    return Result(instrument="chem-1", sample_id=sample, test_code=test, instrument_test_code=test, value="5.1",
                  measured_at="2026-11-23T10:00:00+01:00")


def _pragma(conn: sqlite3.Connection, name: str) -> object:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def _fails(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO incomplete (instrument, received_at, raw, reason) VALUES ('x', 1, x'00', 'half')")
    raise ValueError("this request fails after writing")


def _incomplete_rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM incomplete").fetchone()[0])


async def _commit(store: Store, sample: str) -> int:
    stored = await store.commit_message(instrument="chem-1", protocol="astm", raw=sample.encode(), received_at=1.0,
                                        results=[result(sample)], destinations=["lis"])
    return stored.message_id


async def _first_failure(store: Store) -> StoreError:
    for i in range(10_000):  # until the loss is seen: the kill is asynchronous
        try:
            await _commit(store, f"T{i}")
        except StoreError as exc:
            return exc
    raise AssertionError("the killed writer was never noticed")


def test_a_writer_that_dies_fails_its_requests_and_is_replaced(tmp_path: Path) -> None:
    """Killed mid-stream: what was in flight fails (no analyzer would be ACKed for it), nothing committed is
    lost, the next request gets a new writer process, and the store counts the failure."""

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            assert await _commit(store, "S1") == 1
            writer = store._writer
            assert writer is not None and writer.pid is not None
            first_pid = writer.pid
            os.kill(first_pid, signal.SIGKILL)
            error = await _first_failure(store)
            assert "writer process stopped" in str(error) and error.kind == "unavailable"
            assert await _commit(store, "S2") > 1
            assert store.writer_starts == 2 and store._writer is not None and store._writer.pid != first_pid
            assert store.writer_restarts == 1
            assert store.commit_failures >= 1
            counts = await store.counts()
            assert counts["messages"] >= 2  # S1, S2 and whatever committed before the kill landed

    run(body())


def test_an_unreadable_answer_drops_the_writer_instead_of_hanging(tmp_path: Path) -> None:
    """A corrupt frame from the writer fails what waits on it (no caller waits forever) and the next
    request gets a new writer."""

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            writer = store._writer
            assert writer is not None
            waiting = asyncio.ensure_future(_commit(store, "S1"))
            await asyncio.sleep(0)  # sent, not answered yet
            writer.data_received(b"\xff" * 12)  # a length past any frame
            with pytest.raises(StoreError, match="writer process stopped"):
                await asyncio.wait_for(waiting, 10)
            await _commit(store, "S2")
            assert store.writer_starts == 2

    run(body())


def test_the_writer_ignores_sigint_and_sigterm(tmp_path: Path) -> None:
    """Ctrl-C or a service stop reach the whole process group: the writer lets the daemon decide."""

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            writer = store._writer
            assert writer is not None and writer.pid is not None
            await _commit(store, "S0")  # its signal handlers are set before it serves
            for signum in (signal.SIGINT, signal.SIGTERM):
                os.kill(writer.pid, signum)
            await asyncio.sleep(0.2)
            await _commit(store, "S1")
            assert store._writer is writer and writer.alive and store.writer_starts == 1

    run(body())


def test_a_request_that_cannot_be_sent_fails_alone(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            local = 3
            with pytest.raises(StoreError, match="module-level function"):
                await store.write(lambda conn: local)
            assert await _commit(store, "S1") == 1

    run(body())


def test_a_failing_request_rolls_back_alone(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            with pytest.raises(ValueError, match="fails after writing"):
                await store.write(_fails)
            assert await store.write(_incomplete_rows) == 0  # its insert was rolled back with it
            assert await _commit(store, "S1") == 1

    run(body())


@journal_in_memory
def _temp_store_marked(conn: sqlite3.Connection) -> object:
    return _pragma(conn, "temp_store")


@journal_in_memory
def _fails_after_many_pages(conn: sqlite3.Connection) -> None:
    """Writes ~100 pages (far past the 64 KiB SQLite keeps in memory by default), then fails."""
    conn.executemany("INSERT INTO incomplete (instrument, received_at, raw, reason) VALUES ('x', 1, ?, 'big')",
                     [(bytes(4000),) for _ in range(100)])
    raise ValueError("this request fails after writing")


def test_bounded_writes_keep_their_statement_journal_in_memory_and_the_others_a_file(tmp_path: Path) -> None:
    """A group of only bounded writes (a message's commit, delivered marks) journals in memory; a group with
    any other write (a prune, a purge: unbounded) keeps SQLite's temporary file, which bounds the writer's
    memory. temp_store: 2 MEMORY, 0 DEFAULT (a file past 64 KiB)."""
    conn = connect_writer(str(tmp_path / "s.db"), 1000)
    migrate(conn, str(tmp_path / "s.db"))

    def group(*fns: Callable[[sqlite3.Connection], object]) -> list[object]:
        outcomes, stats = run_writes(conn, [(WRITE, fn, (), {}) for fn in fns])
        assert stats.committed
        return [value for ok, value in outcomes if ok]

    assert group(_temp_store_marked) == [2]
    assert group(_incomplete_rows) == [0]
    assert group(_temp_store_marked, _incomplete_rows) == [0, 0]
    assert group(_temp_store_marked, _temp_store_marked) == [2, 2]
    for fn in (sql.commit_message, sql.mark_delivered, sql.mark_delivered_many, sql.record_incomplete,
               sql.schedule_retry, sql.dead_letter):
        assert journals_in_memory(fn), fn.__name__
    for fn in (sql.prune, sql.purge, sql.retry_dead, sql.apply_redecode, sql.set_size_limit):
        assert not journals_in_memory(fn), fn.__name__
    conn.close()


def test_a_failing_request_rolls_back_alone_from_an_in_memory_journal(tmp_path: Path) -> None:
    """The SAVEPOINT of a request journalled in memory still undoes its ~100 pages, and only them."""

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            await store.record_incomplete(instrument="x", raw=b"kept", reason="before", received_at=1.0)
            for _ in range(3):
                with pytest.raises(ValueError, match="fails after writing"):
                    await store.write(_fails_after_many_pages)
                assert await store.write(_incomplete_rows) == 1
            assert await _commit(store, "S1") == 1
            assert await store.write(_incomplete_rows) == 1

    run(body())


def test_delivered_marks_commit_relaxed_and_the_writer_goes_back_to_full_sync(tmp_path: Path) -> None:
    """A group of marks only commits with synchronous=NORMAL; the connection is FULL again for the next
    group, and a read queued after a mark sees it."""

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            await _commit(store, "S1")
            items, _ = await store.due_items("lis", now=10.0)
            assert len(items) == 1
            await store.mark_delivered(items[0].id, at=11.0)
            assert await store.write(_pragma, "synchronous") == 2  # FULL
            items, _ = await store.due_items("lis", now=12.0)
            assert items == []
            assert (await store.counts())["outbox"]["lis"]["delivered"] == 1

    run(body())


def test_the_writer_process_does_not_outlive_a_killed_daemon(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from labbridge.store.db import Store\n"
        "async def main():\n"
        f"    async with Store({str(tmp_path / 's.db')!r}) as store:\n"
        "        print(\"WRITER\", store._writer.pid, flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        writer_pid = int(next(line for line in daemon.stdout if line.startswith("WRITER")).split()[1])
        os.kill(writer_pid, 0)  # it runs
        daemon.kill()
        daemon.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(writer_pid, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{writer_pid}/stat", encoding="ascii") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # exited; a zombie until init reaps it
            time.sleep(0.05)
        else:
            raise AssertionError(f"writer process {writer_pid} still runs after its daemon was killed")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_frames_survive_any_split_and_refuse_a_corrupt_length() -> None:
    stream = frame(7, b"abc") + frame(8, b"") + frame(9, b"x" * 1000)
    for cut in range(1, len(stream)):
        buf = FrameBuffer()
        got = []
        for part in (stream[:cut], stream[cut:]):
            buf.feed(part)
            while (item := buf.next()) is not None:
                got.append(item)
        assert got == [(7, b"abc"), (8, b""), (9, b"x" * 1000)]
    bad = FrameBuffer()
    bad.feed(b"\xff\xff\xff\xff" + b"\x00" * 8)
    with pytest.raises(StoreError, match="corrupt"):
        bad.next()
