"""The durable store: SQLite in WAL mode with ``synchronous=FULL`` (each commit fsyncs the WAL).

One writer thread owns the write connection and commits in groups: every write request queued while
the previous commit was on disk goes into the next transaction, each inside its own SAVEPOINT, so a
failing request never takes the others down and durability costs one fsync per group, not per message.
A request's future completes only after the COMMIT returned: that is when an analyzer may be ACKed.

Reads use a second connection on their own thread (WAL readers never block the writer).

Checkpoints (copying the WAL's pages into the database file, with its own fsync) run on a third
connection, in the background, every ``checkpoint_interval_s`` (PASSIVE: they never wait for or block
the writer). SQLite's automatic checkpoint would run them inside a COMMIT every 1,000 pages, the commit
whose analyzer waits for its ACK: measured, that was the whole p99 of the commit at one link (17 ms
against 6.5 ms without). The writer still checkpoints by itself past ``WAL_BACKSTOP_PAGES`` (64 MiB), in
case the background checkpoints cannot keep up.

Tables: ``messages`` (raw bytes as received, per instrument), ``results`` (canonical JSON, unique per
instrument and content key), ``outbox`` (one row per LIS destination and group of results, with its
stable control ID and delivery state; dead letters are outbox rows in state ``dead`` with a ``dead_kind``
and a reason), ``incomplete`` (transmissions that never became a message), ``received_ids`` (HL7 MSH-10
per analyzer), ``orders`` (the embedded order source, :mod:`labbridge.runtime.order_store`), ``audit``
(every operator action: who, when, what, why).

Schema versions live in ``PRAGMA user_version``. Schema 1 is ``SCHEMA``; an older store is brought up to
date by numbered migration steps (``MIGRATIONS``), each idempotent and applied in its own transaction,
so a store written by an earlier labbridge keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from labbridge.errors import StoreError
from labbridge.logs import get_logger
from labbridge.model import Result

log = get_logger("labbridge.store")
T = TypeVar("T")

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


_ORDERS_SQL = """
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
"""


def _migrate_orders(conn: sqlite3.Connection) -> None:
    """The embedded order source (labbridge.runtime.order_store)."""
    for statement in _ORDERS_SQL.split(";"):
        if statement.strip():
            conn.execute(statement)

def _add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    """ALTER TABLE ADD COLUMN unless it is there (steps stay idempotent whatever order branches merge in)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    if column not in have:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _migrate_outbox_operations(conn: sqlite3.Connection) -> None:
    """Dead-letter kinds, backlog flag, the audit trail."""
    # dead_kind: lis-rejected | undelivered | undecodable | unmapped | unknown-sender | held (NULL while alive)
    _add_column(conn, "outbox", "dead_kind", "TEXT")
    _add_column(conn, "outbox", "backlog", "INTEGER NOT NULL DEFAULT 0")
    _add_column(conn, "results", "backlog", "INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, delivered_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_message ON outbox(message_id)")
    conn.execute("CREATE INDEX IF NOT EXISTS results_message ON results(message_id)")
    conn.execute("""CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,            -- retry | purge
        target TEXT NOT NULL,            -- e.g. "outbox:12" or "outbox:state=dead"
        reason TEXT NOT NULL,
        detail TEXT                      -- JSON: what the action did
    )""")


def _migrate_order_notes(conn: sqlite3.Connection) -> None:
    """Why an analyzer refused an order (HL7 ORL^O34 "unable to accept"), shown with the order."""
    _add_column(conn, "orders", "note", "TEXT NOT NULL DEFAULT ''")


# Step n brings a store from user_version n-1 to n. Version 1 is SCHEMA itself.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _migrate_orders,
    3: _migrate_outbox_operations,
    4: _migrate_order_notes,
}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring a store to SCHEMA_VERSION: create schema 1 if empty, then apply each step in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"store {path} has schema version {version}, newer than this labbridge "
                         f"({SCHEMA_VERSION}): upgrade labbridge")
    if version == 0:
        conn.executescript(SCHEMA)
        conn.execute("PRAGMA user_version=1")
        version = 1
    while version < SCHEMA_VERSION:
        step = version + 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[step](conn)
            conn.execute(f"PRAGMA user_version={step}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"store {path}: migration to schema {step} failed: {exc}") from exc
        log.info("store_migrated", from_version=version, to_version=step)
        version = step

GROUP_COMMIT_MAX = 512  # write requests folded into one transaction at most
GROUP_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Why an item is in the dead letters (outbox.dead_kind).
DEAD_LIS_REJECTED = "lis-rejected"
DEAD_UNDELIVERED = "undelivered"
DEAD_UNDECODABLE = "undecodable"
DEAD_UNMAPPED = "unmapped"
DEAD_UNKNOWN_SENDER = "unknown-sender"
# Results the instrument's mapping holds back (hold_tests): stored, not sent until an operator
# releases them with a retry (which puts them in line as they are, no re-decoding).
DEAD_HELD = "held"
# Kinds fixed by re-decoding the stored raw message with the current driver and config.
REDECODE_KINDS = frozenset({DEAD_UNDECODABLE, DEAD_UNMAPPED, DEAD_UNKNOWN_SENDER})


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
    backlog: bool = False


@dataclass(frozen=True, slots=True)
class Held:
    """Part of a message kept out of the LIS for a person to fix: one dead letter per destination."""

    kind: str  # one of the DEAD_* kinds
    reason: str


@dataclass(frozen=True, slots=True)
class RawMessage:
    id: int
    instrument: str
    protocol: str
    raw: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class StoreSize:
    file_bytes: int
    wal_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.file_bytes + self.wal_bytes


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the store keeps what no longer waits for anyone (seconds)."""

    raw_messages_s: float
    delivered_s: float
    incomplete_s: float


def control_id_for(key: str) -> str:
    """A stable HL7 MSH-10 (at most 20 characters) derived from the content key."""
    return "LB" + key[:18].upper()


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def is_backlog(results: Sequence[Result], received_at: float, threshold_s: float | None) -> bool:
    """Every result was measured more than ``threshold_s`` before it reached us (an analyzer's resent backlog)."""
    if threshold_s is None or not results:
        return False
    times = [_epoch(r.measured_at) for r in results]
    return all(t is not None and received_at - t > threshold_s for t in times)


def group_key_for(results: Sequence[Result]) -> str:
    return _group_key([r.idempotency_key() for r in results])


def _group_key(result_keys: list[str]) -> str:
    return hashlib.sha256("".join(sorted(result_keys)).encode()).hexdigest()


def _group_by_sample(results: Sequence[tuple[int, Result]]) -> dict[str, list[tuple[int, Result]]]:
    groups: dict[str, list[tuple[int, Result]]] = {}
    for row in results:
        groups.setdefault(row[1].sample_id, []).append(row)
    return groups


_compact_json = json.JSONEncoder(separators=(",", ":"))  # json.dumps builds a new encoder per call with options


# One multi-row INSERT ... RETURNING per message (SQLite 3.35+) instead of one statement per result: the
# same rows, but one statement to run where there were twenty (each also hands the GIL to the event loop
# and back while SQLite works: the writer thread's main cost under load). Older SQLite: row by row.
_MULTI_ROW_INSERT = sqlite3.sqlite_version_info >= (3, 35, 0)
_ROWS_PER_INSERT = 100  # 500 parameters per statement: under every SQLite's limit (999 before 3.32)
_INSERT_RESULT = "INSERT OR IGNORE INTO results (message_id, instrument, key, received_at, data) VALUES "


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_results_sql(rows: int) -> str:
    return _INSERT_RESULT + ",".join(["(?, ?, ?, ?, ?)"] * rows) + " RETURNING id, key"


def _insert_results(conn: sqlite3.Connection, message_id: int, instrument: str, results: Sequence[Result],
                    received_at: float, *, keys: dict[int, str] | None = None) -> tuple[list[tuple[int, Result]], int]:
    """Insert results not yet stored for this instrument; returns the new ones (with ids) and the duplicates.

    A result whose content key is already stored for this instrument (or repeated within ``results``) is
    a duplicate. ``keys``, if given, gets each new row's content key (row id -> key), so that queueing
    does not hash the results again. The returned results are the caller's (``message_id`` not filled in).
    """
    new: list[tuple[int, Result]] = []
    duplicates = 0
    dumps = _compact_json.encode
    if not _MULTI_ROW_INSERT:
        for result in results:
            data = result.to_json()
            data["message_id"] = message_id
            key = result.idempotency_key()
            cur = conn.execute(_INSERT_RESULT + "(?, ?, ?, ?, ?)", (message_id, instrument, key, received_at,
                                                                     dumps(data)))
            rowid = cur.lastrowid
            if cur.rowcount == 1 and rowid is not None:
                new.append((rowid, result))
                if keys is not None:
                    keys[rowid] = key
            else:
                duplicates += 1
        return new, duplicates
    for start in range(0, len(results), _ROWS_PER_INSERT):
        chunk = results[start:start + _ROWS_PER_INSERT]
        params: list[object] = []
        chunk_keys: list[str] = []
        for result in chunk:
            data = result.to_json()
            data["message_id"] = message_id
            key = result.idempotency_key()
            params += (message_id, instrument, key, received_at, dumps(data))
            chunk_keys.append(key)
        # RETURNING lists the rows actually inserted (not the ignored ones), in no set order: by key.
        inserted = {key: rowid for rowid, key in conn.execute(_insert_results_sql(len(chunk)), params).fetchall()}
        for result, key in zip(chunk, chunk_keys, strict=True):
            rowid = inserted.pop(key, None)  # popped: the same key twice in one message is one new row
            if rowid is None:
                duplicates += 1
                continue
            new.append((rowid, result))
            if keys is not None:
                keys[rowid] = key
    return new, duplicates


def _queue_groups(conn: sqlite3.Connection, destination: str, *, message_id: int, instrument: str,
                  rows: Sequence[tuple[int, Result]], received_at: float,
                  backlog_after_s: float | None, hold: Held | None = None,
                  keys: dict[int, str] | None = None) -> list[int]:
    """One outbox item per sample; the same group of results (same key) is never queued twice.

    With ``hold``, the items start in the dead letters with its kind and reason (released by a retry).
    ``keys``: the rows' content keys as :func:`_insert_results` collected them (else they are computed).
    """
    ids: list[int] = []
    for group in _group_by_sample(rows).values():
        if keys is not None:
            group_key = _group_key([keys[rid] for rid, _ in group])
        else:
            group_key = group_key_for([r for _, r in group])
        backlog = is_backlog([r for _, r in group], received_at, backlog_after_s)
        result_ids = [rid for rid, _ in group]
        cur = conn.execute(
            "INSERT OR IGNORE INTO outbox (destination, key, control_id, message_id, instrument,"
            " result_ids, created_at, next_attempt_at, backlog, state, dead_kind, last_error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (destination, group_key, control_id_for(group_key), message_id, instrument, json.dumps(result_ids),
             received_at, received_at, int(backlog), "pending" if hold is None else "dead",
             None if hold is None else hold.kind, None if hold is None else hold.reason))
        if cur.rowcount == 1 and cur.lastrowid is not None:
            if hold is None:
                ids.append(cur.lastrowid)
            if backlog:
                marks = ",".join("?" * len(result_ids))
                conn.execute(f"UPDATE results SET backlog = 1 WHERE id IN ({marks})", result_ids)
    return ids


def _insert_dead(conn: sqlite3.Connection, destination: str, *, message_id: int, instrument: str, entry: Held,
                 at: float) -> None:
    key = f"{entry.kind}:{message_id}"
    conn.execute(
        "INSERT OR IGNORE INTO outbox (destination, key, control_id, message_id, instrument, result_ids, state,"
        " created_at, next_attempt_at, last_error, dead_kind) VALUES (?, ?, ?, ?, ?, '[]', 'dead', ?, ?, ?, ?)",
        (destination, key, control_id_for(hashlib.sha256(key.encode()).hexdigest()), message_id, instrument,
         at, at, entry.reason, entry.kind))


def _audit(conn: sqlite3.Connection, *, at: float, actor: str, action: str, target: str, reason: str,
           detail: dict[str, Any]) -> None:
    conn.execute("INSERT INTO audit (at, actor, action, target, reason, detail) VALUES (?, ?, ?, ?, ?, ?)",
                 (at, actor, action, target, reason, json.dumps(detail, separators=(",", ":"))))


OUTBOX_COLUMNS = ("id", "destination", "control_id", "instrument", "message_id", "state", "attempts",
                  "created_at", "next_attempt_at", "last_error", "delivered_at", "dead_kind", "backlog")


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


CHECKPOINT_INTERVAL_S = 1.0
WAL_BACKSTOP_PAGES = 16384  # 64 MiB of 4 KiB pages: the writer checkpoints itself past this (SQLite's default is 1,000)


class Store:
    """Async facade over the SQLite store."""

    def __init__(self, path: str | Path, *, checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.path = str(path)
        self.checkpoint_interval_s = checkpoint_interval_s
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_stop = threading.Event()
        self.checkpoints = 0  # background checkpoints run
        self.checkpoint_seconds = 0.0
        self.last_checkpoint_error: str | None = None
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labbridge-store-read")
        self._read_conn: sqlite3.Connection | None = None
        self.commits = 0
        self.commit_failures = 0
        self.committed_jobs = 0  # write requests in committed groups (committed_jobs / commits = mean group)
        self.commit_seconds = 0.0  # time spent in BEGIN..COMMIT, fsync included
        self.group_sizes = [0] * len(GROUP_SIZE_BUCKETS)  # committed groups per size bucket (<=, not cumulative)
        self.last_commit_error: str | None = None
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
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        self._write_conn = conn
        self._writer = threading.Thread(target=self._write_loop, name="labbridge-store-write", daemon=True)
        self._writer.start()
        self._read_conn = await asyncio.get_running_loop().run_in_executor(self._reader, self._connect)
        self._checkpoint_stop.clear()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="labbridge-store-checkpoint",
                                              daemon=True)
        self._checkpointer.start()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpoint_stop.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._read_conn is not None:
            conn = self._read_conn
            await asyncio.get_running_loop().run_in_executor(self._reader, conn.close)
            self._read_conn = None
        self._reader.shutdown(wait=True)

    # ---- background checkpoints ----------------------------------------------------------------

    def _checkpoint_loop(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:  # the writer's backstop checkpoints instead
            self.last_checkpoint_error = str(exc)
            log.error("checkpointer_unavailable", error=str(exc))
            return
        try:
            while not self._checkpoint_stop.wait(self.checkpoint_interval_s):
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """One PASSIVE checkpoint on ``conn`` (the checkpointer's connection); errors are counted, not raised."""
        started = time.perf_counter()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            if self.last_checkpoint_error != str(exc):
                log.warning("checkpoint_failed", error=str(exc))
            self.last_checkpoint_error = str(exc)
            return
        self.checkpoints += 1
        self.checkpoint_seconds += time.perf_counter() - started
        self.last_checkpoint_error = None

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
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as exc:  # one bad request must not fail the group
                    if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
                        raise  # SQLite rolled the whole group back (e.g. disk full): every request fails
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    if isinstance(exc, sqlite3.Error):  # e.g. "database or disk is full" on this request
                        self.last_commit_error = str(exc)
                        exc = StoreError(f"commit failed: {exc}")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((True, value))
            if self.fail_commits:
                raise sqlite3.OperationalError("database or disk is full (simulated)")
            conn.execute("COMMIT")
            self.commits += 1
            self.committed_jobs += len(batch)
            self.commit_seconds += time.perf_counter() - started
            self.group_sizes[next(i for i, b in enumerate(GROUP_SIZE_BUCKETS) if len(batch) <= b)] += 1
            self.last_commit_error = None
        except sqlite3.Error as exc:
            self.commit_failures += 1
            self.last_commit_error = str(exc)
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
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
                             error: str | None = None, sender_id: tuple[str, str] | None = None,
                             held: Sequence[Held] = (), backlog_after_s: float | None = None,
                             held_results: Sequence[Result] = (), hold_reason: str = "") -> StoredMessage:
        """Store one whole message, its results and their outbox entries in one durable transaction.

        A result already stored for this instrument (same content key) is counted as a duplicate and
        queued nowhere again. ``sender_id`` is the sender's message ID and a content digest (HL7 MSH-10):
        a message already stored under both is not stored again (``duplicate``). ``error`` (the driver
        could not decode it) and each ``held`` entry (e.g. an unmapped test code) become one dead letter
        per destination, naming the reason. A group of results all measured more than ``backlog_after_s``
        before ``received_at`` is flagged as backlog. ``held_results`` are stored like the others, but
        their outbox items start in the dead letters (kind ``held``, ``hold_reason``) until released.
        Returns only after the commit is on disk.
        """
        dead = list(held)
        if error is not None:
            dead.insert(0, Held(DEAD_UNDECODABLE, f"no driver could decode this message: {error}"))

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
            keys: dict[int, str] = {}
            new, duplicates = _insert_results(conn, message_id, instrument, results, received_at, keys=keys)
            new_held: Sequence[tuple[int, Result]] = ()
            if held_results:
                new_held, held_duplicates = _insert_results(conn, message_id, instrument, held_results, received_at,
                                                            keys=keys)
                duplicates += held_duplicates
            conn.execute("UPDATE messages SET result_count = ?, duplicate_count = ? WHERE id = ?",
                         (len(new) + len(new_held), duplicates, message_id))
            if sender_id is not None and error is None:
                conn.execute("INSERT INTO received_ids (instrument, control_id, digest, message_id)"
                             " VALUES (?, ?, ?, ?)", (instrument, *sender_id, message_id))
            outbox_ids: list[int] = []
            for destination in destinations:
                outbox_ids += _queue_groups(conn, destination, message_id=message_id, instrument=instrument,
                                            rows=new, received_at=received_at, backlog_after_s=backlog_after_s,
                                            keys=keys)
                if new_held:
                    _queue_groups(conn, destination, message_id=message_id, instrument=instrument, rows=new_held,
                                  received_at=received_at, backlog_after_s=backlog_after_s,
                                  hold=Held(DEAD_HELD, hold_reason or "held by configuration"), keys=keys)
                for entry in dead:
                    _insert_dead(conn, destination, message_id=message_id, instrument=instrument, entry=entry,
                                 at=received_at)
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

    async def dead_letter(self, item_id: int, reason: str, kind: str = DEAD_LIS_REJECTED) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?, dead_kind = ?"
                         " WHERE id = ?", (reason, kind, item_id))

        await self._write(work)

    async def set_size_limit(self, max_bytes: int | None) -> int:
        """Cap the database file (SQLite ``max_page_count``): past it, commits fail as on a full disk.

        Returns the page limit now in force. ``None`` lifts the cap. SQLite never sets it below the
        pages already used.
        """

        def work(conn: sqlite3.Connection) -> int:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = 4294967294 if max_bytes is None else max(1, max_bytes // page_size)
            return int(conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0])

        return await self._write(work)

    # ---- operator actions (each one audited in the same transaction) ---------------------------

    async def retry_dead(self, item_ids: Sequence[int] | None, *, actor: str, reason: str,
                         now: float) -> list[dict[str, Any]]:
        """Put dead letters the LIS refused (or that expired) back in line; ``None`` = every such one.

        Dead letters that need re-decoding (undecodable, unmapped, unknown sender) are not touched
        here: see :meth:`apply_redecode`. Returns one outcome per item.
        """

        def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if item_ids is None:
                rows = conn.execute("SELECT id, state, dead_kind, last_error FROM outbox WHERE state = 'dead'"
                                    " ORDER BY id").fetchall()
            else:
                rows = []
                for item_id in item_ids:
                    row = conn.execute("SELECT id, state, dead_kind, last_error FROM outbox WHERE id = ?",
                                       (item_id,)).fetchone()
                    rows.append(row if row is not None else (item_id, None, None, None))
            out: list[dict[str, Any]] = []
            for item_id, state, kind, last_error in rows:
                if state is None:
                    out.append({"id": item_id, "outcome": "not-found"})
                elif state != "dead":
                    out.append({"id": item_id, "outcome": f"not-dead ({state})"})
                elif kind in REDECODE_KINDS:
                    out.append({"id": item_id, "outcome": "needs-redecode", "dead_kind": kind})
                else:
                    conn.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                                 " dead_kind = NULL, last_error = NULL WHERE id = ?", (now, item_id))
                    _audit(conn, at=now, actor=actor, action="retry", target=f"outbox:{item_id}", reason=reason,
                           detail={"previous_error": last_error, "dead_kind": kind, "outcome": "queued"})
                    out.append({"id": item_id, "outcome": "queued"})
            return out

        return await self._write(work)

    async def apply_redecode(self, item_id: int, *, results: Sequence[Result], held: Sequence[Held],
                             actor: str, reason: str, now: float,
                             backlog_after_s: float | None = None, held_results: Sequence[Result] = (),
                             hold_reason: str = "") -> dict[str, Any]:
        """Record what re-decoding a dead letter's raw message gave (with the current driver and config).

        Results not yet sent to this destination are queued for it (never one it already has); if
        something is still held, the dead letter stays with the new reason, else it is removed. Audited.
        """

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT destination, message_id, instrument, state, dead_kind, last_error, created_at"
                               " FROM outbox WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                return {"id": item_id, "outcome": "not-found"}
            destination, message_id, instrument, state, kind, last_error, created_at = row
            if state != "dead" or kind not in REDECODE_KINDS:
                return {"id": item_id, "outcome": f"not-a-redecode-dead-letter ({state}, {kind})"}
            def not_yet_queued(batch: Sequence[Result]) -> list[tuple[int, Result]]:
                _insert_results(conn, message_id, instrument, batch, created_at)
                rows: list[tuple[int, Result]] = []
                for result in batch:
                    rid, data = conn.execute("SELECT id, data FROM results WHERE instrument = ? AND key = ?",
                                             (instrument, result.idempotency_key())).fetchone()
                    already = conn.execute(
                        "SELECT 1 FROM outbox o, json_each(o.result_ids) j WHERE o.destination = ?"
                        " AND o.instrument = ? AND j.value = ? LIMIT 1", (destination, instrument, rid)).fetchone()
                    if already is None:
                        rows.append((rid, Result.from_json(json.loads(data))))
                return rows

            queued = _queue_groups(conn, destination, message_id=message_id, instrument=instrument,
                                   rows=not_yet_queued(results), received_at=created_at,
                                   backlog_after_s=backlog_after_s)
            if held_results:
                _queue_groups(conn, destination, message_id=message_id, instrument=instrument,
                              rows=not_yet_queued(held_results), received_at=created_at,
                              backlog_after_s=backlog_after_s, hold=Held(DEAD_HELD, hold_reason or "held"))
            detail: dict[str, Any] = {"previous_error": last_error, "dead_kind": kind, "results": len(results),
                                      "queued_items": queued}
            if held:
                conn.execute("UPDATE outbox SET dead_kind = ?, last_error = ?, attempts = attempts + 1"
                             " WHERE id = ?", (held[0].kind, "; ".join(h.reason for h in held), item_id))
                detail["outcome"] = "still-dead"
                detail["reason_now"] = "; ".join(h.reason for h in held)
            else:
                conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
                if kind == DEAD_UNDECODABLE:
                    conn.execute("UPDATE messages SET status = 'decoded', error = NULL WHERE id = ?", (message_id,))
                detail["outcome"] = "redecoded"
            _audit(conn, at=now, actor=actor, action="retry", target=f"outbox:{item_id}", reason=reason,
                   detail=detail)
            return {"id": item_id, **detail}

        return await self._write(work)

    async def purge(self, *, item_ids: Sequence[int] | None = None, state: str | None = None,
                    older_than_s: float | None = None, actor: str, reason: str, now: float) -> dict[str, Any]:
        """Delete dead or delivered outbox items (never pending ones). Audited; returns what it did."""
        if state not in (None, "dead", "delivered"):
            raise StoreError(f"only dead or delivered items can be purged, not {state!r}")
        if item_ids is None and state is None:
            raise StoreError("name the items to purge (ids) or a state (dead or delivered)")

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            sql = "SELECT id, state FROM outbox WHERE state IN ('dead', 'delivered')"
            args: list[Any] = []
            if item_ids is not None:
                sql += f" AND id IN ({','.join('?' * len(item_ids))})"
                args += list(item_ids)
            if state is not None:
                sql += " AND state = ?"
                args.append(state)
            if older_than_s is not None:
                sql += " AND created_at < ?"
                args.append(now - older_than_s)
            found = conn.execute(sql, args).fetchall()
            ids = [r[0] for r in found]
            skipped = sorted(set(item_ids or ()) - set(ids))
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(part))})", part)
            detail = {"purged": len(ids), "ids": ids[:1000], "skipped": skipped, "state": state,
                      "older_than_s": older_than_s}
            target = "outbox:" + (",".join(map(str, item_ids)) if item_ids is not None else f"state={state}")
            _audit(conn, at=now, actor=actor, action="purge", target=target, reason=reason, detail=detail)
            return detail

        return await self._write(work)

    async def prune(self, retention: Retention, now: float) -> dict[str, int]:
        """Drop what retention no longer requires: never a pending or dead item, nor what they refer to."""

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            cutoff = now - retention.delivered_s
            out["delivered_items"] = conn.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < ?", (cutoff,)).rowcount
            out["results"] = conn.execute(
                "DELETE FROM results WHERE received_at < ? AND message_id NOT IN"
                " (SELECT message_id FROM outbox WHERE state IN ('pending', 'dead'))", (cutoff,)).rowcount
            raw_cutoff = now - retention.raw_messages_s
            keep = ("id NOT IN (SELECT message_id FROM outbox) AND id NOT IN (SELECT message_id FROM results)")
            out["messages"] = conn.execute(
                f"DELETE FROM messages WHERE received_at < ? AND {keep}", (raw_cutoff,)).rowcount
            # Still referenced by stored (delivered) results: keep the row, drop the raw bytes.
            out["raw_cleared"] = conn.execute(
                "UPDATE messages SET raw = X'' WHERE received_at < ? AND length(raw) > 0 AND id NOT IN"
                " (SELECT message_id FROM outbox WHERE state IN ('pending', 'dead'))", (raw_cutoff,)).rowcount
            out["incomplete"] = conn.execute(
                "DELETE FROM incomplete WHERE received_at < ?", (now - retention.incomplete_s,)).rowcount
            return out

        return await self._write(work)

    def size(self) -> StoreSize:
        def stat(path: str) -> int:
            try:
                return os.stat(path).st_size
            except OSError:
                return 0

        return StoreSize(stat(self.path), stat(self.path + "-wal"))

    # ---- reads ---------------------------------------------------------------------------------

    async def next_due(self, destination: str, now: float,
                       include_backlog: bool = True) -> tuple[OutboxItem | None, float | None]:
        """The pending item to send now, else None and the time the next one falls due.

        Live items come before backlog ones; with ``include_backlog`` false, backlog items are left
        waiting (the relay's pacing) and do not count for the next due time.
        """
        items, next_at = await self.due_items(destination, now, include_backlog=include_backlog, limit=1)
        return (items[0] if items else None), next_at

    async def due_items(self, destination: str, now: float, *, include_backlog: bool = True, limit: int = 64,
                        exclude: Collection[int] = ()) -> tuple[list[OutboxItem], float | None]:
        """Up to ``limit`` pending items to send now, in sending order (as :meth:`next_due`), in one read.

        Items whose ids are in ``exclude`` (handed over, their ``mark_delivered`` not committed yet) are
        skipped. With none due, returns ``[]`` and the time the next one falls due.
        """

        def work(conn: sqlite3.Connection) -> tuple[list[OutboxItem], float | None]:
            only_live = "" if include_backlog else " AND backlog = 0"
            rows = conn.execute(
                "SELECT id, control_id, instrument, message_id, attempts, created_at, result_ids, backlog"
                " FROM outbox WHERE destination = ? AND state = 'pending' AND next_attempt_at <= ?" + only_live +
                " ORDER BY backlog, next_attempt_at, id LIMIT ?", (destination, now, limit + len(exclude))).fetchall()
            rows = [row for row in rows if row[0] not in exclude][:limit]
            if not rows:
                nxt = conn.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE destination = ?"
                                   " AND state = 'pending'" + only_live, (destination,)).fetchone()[0]
                return [], None if nxt is None else float(nxt)
            id_lists = [json.loads(row[6]) for row in rows]
            wanted = [rid for ids in id_lists for rid in ids]
            data: dict[int, Result] = {}
            for start in range(0, len(wanted), 500):  # stay under SQLite's host-parameter limit
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for rid, text in conn.execute(f"SELECT id, data FROM results WHERE id IN ({marks})", chunk):
                    data[rid] = Result.from_json(json.loads(text))
            items = [OutboxItem(row[0], destination, row[1], row[2], row[3], row[4], row[5],
                                tuple(data[rid] for rid in sorted(ids) if rid in data), bool(row[7]))
                     for row, ids in zip(rows, id_lists, strict=True)]
            return items, None

        return await self._read(work)

    async def backlog_waiting(self, destination: str) -> int:
        return int(await self._read(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE destination = ? AND state = 'pending' AND backlog = 1",
            (destination,)).fetchone()[0]))

    async def raw_message(self, message_id: int) -> RawMessage | None:
        def work(conn: sqlite3.Connection) -> RawMessage | None:
            row = conn.execute("SELECT id, instrument, protocol, raw, received_at FROM messages WHERE id = ?",
                               (message_id,)).fetchone()
            return None if row is None else RawMessage(row[0], row[1], row[2], bytes(row[3]), row[4])

        return await self._read(work)

    async def audit_rows(self, limit: int = 200) -> list[dict[str, Any]]:
        def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cols = ("id", "at", "actor", "action", "target", "reason", "detail")
            rows = conn.execute("SELECT id, at, actor, action, target, reason, detail FROM audit"
                                " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            out = [dict(zip(cols, r, strict=True)) for r in rows]
            for item in out:
                item["detail"] = json.loads(item["detail"]) if item["detail"] else None
            return out

        return await self._read(work)

    async def counts(self) -> dict[str, Any]:
        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            out: dict[str, Any] = {
                "messages": conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0],
                "undecodable": conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE status = 'undecodable'").fetchone()[0],
                "results": conn.execute("SELECT COUNT(*) FROM results").fetchone()[0],
                "incomplete": conn.execute("SELECT COUNT(*) FROM incomplete").fetchone()[0],
                "backlog_results": conn.execute("SELECT COUNT(*) FROM results WHERE backlog = 1").fetchone()[0],
                "outbox": {},
            }
            for dest, state, backlog, n in conn.execute(
                    "SELECT destination, state, backlog, COUNT(*) FROM outbox GROUP BY destination, state, backlog"):
                books = out["outbox"].setdefault(dest, {"pending": 0, "delivered": 0, "dead": 0,
                                                        "backlog_pending": 0, "backlog_delivered": 0})
                books[state] = books.get(state, 0) + n
                if backlog and state in ("pending", "delivered"):
                    books[f"backlog_{state}"] += n
            for dest, kind, n in conn.execute("SELECT destination, dead_kind, COUNT(*) FROM outbox"
                                              " WHERE state = 'dead' GROUP BY destination, dead_kind"):
                books = out["outbox"][dest]
                books.setdefault("dead_kinds", {})[kind or DEAD_LIS_REJECTED] = n
            return out

        return await self._read(work)

    async def outbox_rows(self, state: str | None = None, limit: int = 200, destination: str | None = None,
                          item_id: int | None = None) -> list[dict[str, Any]]:
        def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox WHERE 1 = 1"
            args: tuple[Any, ...] = ()
            if item_id is not None:
                sql += " AND id = ?"
                args += (item_id,)
            if state:
                sql += " AND state = ?"
                args += (state,)
            if destination:
                sql += " AND destination = ?"
                args += (destination,)
            sql += " ORDER BY id DESC LIMIT ?"
            rows = [dict(zip(OUTBOX_COLUMNS, row, strict=True)) for row in conn.execute(sql, (*args, limit))]
            for row in rows:
                row["backlog"] = bool(row["backlog"])
            return rows

        return await self._read(work)


def wall_clock() -> float:
    """Seconds since the epoch, for timestamps that survive a restart."""
    return time.time()
