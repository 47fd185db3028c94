"""The durable store: SQLite in WAL mode with ``synchronous=FULL`` (each commit fsyncs the WAL).

One writer thread owns the write connection and commits in groups: every write request queued while
the previous commit was on disk goes into the next transaction, each inside its own SAVEPOINT, so a
failing request never takes the others down and durability costs one fsync per group, not per message.
A request's future completes only after the COMMIT returned: that is when an analyzer may be ACKed.

Reads use a second connection on their own thread (WAL readers never block the writer).

Tables: ``messages`` (raw bytes as received, per instrument), ``results`` (canonical JSON, unique per
instrument and content key), ``outbox`` (one row per LIS destination and group of results, with its
stable control ID and delivery state), ``incomplete`` (transmissions that never became a message),
``orders`` (schema 2: the embedded order source, :mod:`labbridge.runtime.order_store`).

Schema versions live in ``PRAGMA user_version``; an older store is migrated step by step on open, in
one transaction per step (``MIGRATIONS``), so a store written by an earlier labbridge keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from labbridge.errors import StoreError
from labbridge.logs import get_logger
from labbridge.model import Result

log = get_logger("labbridge.store")
T = TypeVar("T")

SCHEMA_VERSION = 2
# Schema 1, as the first labbridge wrote it; later versions are MIGRATIONS applied on top.
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    instrument TEXT NOT NULL,
    protocol TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw BLOB NOT NULL,
    status TEXT NOT NULL,            -- decoded | undecodable
    error TEXT,
    result_count INTEGER NOT NULL DEFAULT 0,
    duplicate_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_instrument ON messages(instrument, received_at);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    instrument TEXT NOT NULL,
    key TEXT NOT NULL,
    received_at REAL NOT NULL,
    data TEXT NOT NULL,               -- canonical JSON (labbridge.model.Result)
    UNIQUE (instrument, key)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    key TEXT NOT NULL,
    control_id TEXT NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    instrument TEXT NOT NULL,
    result_ids TEXT NOT NULL,         -- JSON list of results.id
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    UNIQUE (destination, key)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(destination, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS incomplete (
    id INTEGER PRIMARY KEY,
    instrument TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw BLOB NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS received_ids (   -- HL7 MSH-10 per analyzer, to recognise a resent message
    instrument TEXT NOT NULL,
    control_id TEXT NOT NULL,
    digest TEXT NOT NULL,             -- content without MSH-7: a reused MSH-10 with new content is new
    message_id INTEGER NOT NULL REFERENCES messages(id),
    PRIMARY KEY (instrument, control_id, digest)
);
"""

# MIGRATIONS[n] takes a store from schema n to n + 1.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    sample_id TEXT NOT NULL,
    tests TEXT NOT NULL,              -- JSON list of LIS test codes
    instrument TEXT NOT NULL DEFAULT '',  -- '' = any instrument of the site
    site TEXT NOT NULL DEFAULT '',
    priority TEXT NOT NULL DEFAULT 'routine',
    patient_id TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | accepted | cancelled
    source TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    sent_to TEXT,
    accepted_at REAL,
    cancelled_at REAL
);
CREATE INDEX IF NOT EXISTS orders_sample ON orders(sample_id, state);
CREATE INDEX IF NOT EXISTS orders_instrument ON orders(instrument, state, id);
CREATE INDEX IF NOT EXISTS orders_site ON orders(site, state, id);
""",
}


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring a store to SCHEMA_VERSION: create schema 1 if empty, then apply each migration in turn."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"store {path} has schema version {version}, newer than this labbridge "
                         f"({SCHEMA_VERSION}): upgrade labbridge")
    if version == 0:
        conn.executescript(SCHEMA)
        conn.execute("PRAGMA user_version=1")
        version = 1
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"store {path}: migration from schema {version} failed: {exc}") from exc
        log.info("store_migrated", from_version=version, to_version=version + 1)
        version += 1


GROUP_COMMIT_MAX = 512  # write requests folded into one transaction at most


@dataclass(frozen=True, slots=True)
class StoredMessage:
    message_id: int
    new_results: int
    duplicate_results: int
    outbox_ids: tuple[int, ...]
    duplicate: bool = False  # the same message (sender's ID and content) was already stored: nothing new


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    destination: str
    control_id: str
    instrument: str
    message_id: int
    attempts: int
    created_at: float
    results: tuple[Result, ...]


def control_id_for(key: str) -> str:
    """A stable HL7 MSH-10 (at most 20 characters) derived from the content key."""
    return "LB" + key[:18].upper()


def _group_by_sample(results: Sequence[tuple[int, Result]]) -> dict[str, list[tuple[int, Result]]]:
    groups: dict[str, list[tuple[int, Result]]] = {}
    for row in results:
        groups.setdefault(row[1].sample_id, []).append(row)
    return groups


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Store:
    """Async facade over the SQLite store."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labbridge-store-read")
        self._read_conn: sqlite3.Connection | None = None
        self.commits = 0
        self.commit_failures = 0
        # Set by tests and by an operator's fault drill: the next commits fail as a full disk would.
        self.fail_commits = False

    # ---- lifecycle -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            migrate(conn, self.path)
        except (StoreError, sqlite3.Error):
            conn.close()
            raise
        self._write_conn = conn
        self._writer = threading.Thread(target=self._write_loop, name="labbridge-store-write", daemon=True)
        self._writer.start()
        self._read_conn = await asyncio.get_running_loop().run_in_executor(self._reader, self._connect)

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._read_conn is not None:
            conn = self._read_conn
            await asyncio.get_running_loop().run_in_executor(self._reader, conn.close)
            self._read_conn = None
        self._reader.shutdown(wait=True)

    # ---- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn = self._write_conn
        assert conn is not None
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < GROUP_COMMIT_MAX:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._run_batch(conn, batch)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as exc:  # one bad request must not fail the group
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((True, value))
            if self.fail_commits:
                raise sqlite3.OperationalError("database or disk is full (simulated)")
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            self.commit_failures += 1
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = StoreError(f"commit failed: {exc}")
            outcomes = [(False, error)] * len(batch)
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
                job.loop.call_soon_threadsafe(_resolve, job.future, ok, value)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, loop, future))
        return await future

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._read_conn
        if conn is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the writer thread inside a transaction; returns after the commit is on disk.

        For store extensions (the order source); ``fn`` must not commit or roll back itself.
        """
        return await self._write(fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the read connection (it sees every committed write)."""
        return await self._read(fn)

    # ---- writes --------------------------------------------------------------------------------

    async def commit_message(self, *, instrument: str, protocol: str, raw: bytes, received_at: float,
                             results: Sequence[Result], destinations: Sequence[str],
                             error: str | None = None, sender_id: tuple[str, str] | None = None) -> StoredMessage:
        """Store one whole message, its results and their outbox entries in one durable transaction.

        A result already stored for this instrument (same content key) is counted as a duplicate and
        queued nowhere again. ``sender_id`` is the sender's message ID and a content digest (HL7 MSH-10):
        a message already stored under both is not stored again (``duplicate``). Returns only after the
        commit is on disk.
        """

        def work(conn: sqlite3.Connection) -> StoredMessage:
            if sender_id is not None:
                row = conn.execute("SELECT message_id FROM received_ids WHERE instrument = ? AND control_id = ?"
                                   " AND digest = ?", (instrument, *sender_id)).fetchone()
                if row is not None:
                    return StoredMessage(int(row[0]), 0, len(results), (), duplicate=True)
            status = "undecodable" if error is not None else "decoded"
            cur = conn.execute(
                "INSERT INTO messages (instrument, protocol, received_at, raw, status, error) "
                "VALUES (?, ?, ?, ?, ?, ?)", (instrument, protocol, received_at, raw, status, error))
            message_id = cur.lastrowid
            assert message_id is not None
            new: list[tuple[int, Result]] = []
            duplicates = 0
            for result in results:
                stored = dataclasses.replace(result, message_id=message_id)
                cur = conn.execute(
                    "INSERT OR IGNORE INTO results (message_id, instrument, key, received_at, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (message_id, instrument, result.idempotency_key(), received_at,
                     json.dumps(stored.to_json(), separators=(",", ":"))))
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    new.append((cur.lastrowid, stored))
                else:
                    duplicates += 1
            conn.execute("UPDATE messages SET result_count = ?, duplicate_count = ? WHERE id = ?",
                         (len(new), duplicates, message_id))
            if sender_id is not None and error is None:
                conn.execute("INSERT INTO received_ids (instrument, control_id, digest, message_id)"
                             " VALUES (?, ?, ?, ?)", (instrument, *sender_id, message_id))
            outbox_ids: list[int] = []
            for group in _group_by_sample(new).values():
                keys = sorted(r.idempotency_key() for _, r in group)
                group_key = hashlib.sha256("".join(keys).encode()).hexdigest()
                ids = json.dumps([rid for rid, _ in group])
                for destination in destinations:
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO outbox (destination, key, control_id, message_id, instrument,"
                        " result_ids, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (destination, group_key, control_id_for(group_key), message_id, instrument, ids,
                         received_at, received_at))
                    if cur.rowcount == 1 and cur.lastrowid is not None:
                        outbox_ids.append(cur.lastrowid)
            return StoredMessage(message_id, len(new), duplicates, tuple(outbox_ids))

        return await self._write(work)

    async def record_incomplete(self, *, instrument: str, raw: bytes, reason: str, received_at: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO incomplete (instrument, received_at, raw, reason) VALUES (?, ?, ?, ?)",
                         (instrument, received_at, raw, reason))

        await self._write(work)

    async def mark_delivered(self, item_id: int, at: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE outbox SET state = 'delivered', delivered_at = ?, attempts = attempts + 1,"
                         " last_error = NULL WHERE id = ?", (at, item_id))

        await self._write(work)

    async def schedule_retry(self, item_id: int, next_attempt_at: float, error: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                         " WHERE id = ? AND state = 'pending'", (next_attempt_at, error, item_id))

        await self._write(work)

    async def dead_letter(self, item_id: int, reason: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?"
                         " WHERE id = ?", (reason, item_id))

        await self._write(work)

    # ---- reads ---------------------------------------------------------------------------------

    async def next_due(self, destination: str, now: float) -> tuple[OutboxItem | None, float | None]:
        """The oldest pending item due now, else None and the time the next one falls due."""

        def work(conn: sqlite3.Connection) -> tuple[OutboxItem | None, float | None]:
            row = conn.execute(
                "SELECT id, control_id, instrument, message_id, attempts, created_at, result_ids,"
                " next_attempt_at FROM outbox WHERE destination = ? AND state = 'pending'"
                " ORDER BY next_attempt_at, id LIMIT 1", (destination,)).fetchone()
            if row is None:
                return None, None
            if row[7] > now:
                return None, float(row[7])
            ids = json.loads(row[6])
            marks = ",".join("?" * len(ids))
            data = conn.execute(f"SELECT data FROM results WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
            results = tuple(Result.from_json(json.loads(d[0])) for d in data)
            return OutboxItem(row[0], destination, row[1], row[2], row[3], row[4], row[5], results), None

        return await self._read(work)

    async def counts(self) -> dict[str, Any]:
        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            out: dict[str, Any] = {
                "messages": conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0],
                "undecodable": conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE status = 'undecodable'").fetchone()[0],
                "results": conn.execute("SELECT COUNT(*) FROM results").fetchone()[0],
                "incomplete": conn.execute("SELECT COUNT(*) FROM incomplete").fetchone()[0],
                "outbox": {},
            }
            for dest, state, n in conn.execute(
                    "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"):
                out["outbox"].setdefault(dest, {"pending": 0, "delivered": 0, "dead": 0})[state] = n
            return out

        return await self._read(work)

    async def outbox_rows(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = ("SELECT id, destination, control_id, instrument, message_id, state, attempts, created_at,"
                   " next_attempt_at, last_error, delivered_at FROM outbox")
            args: tuple[Any, ...] = ()
            if state:
                sql += " WHERE state = ?"
                args = (state,)
            sql += " ORDER BY id DESC LIMIT ?"
            cols = ("id", "destination", "control_id", "instrument", "message_id", "state", "attempts",
                    "created_at", "next_attempt_at", "last_error", "delivered_at")
            return [dict(zip(cols, row, strict=True)) for row in conn.execute(sql, (*args, limit))]

        return await self._read(work)


def wall_clock() -> float:
    """Seconds since the epoch, for timestamps that survive a restart."""
    return time.time()
