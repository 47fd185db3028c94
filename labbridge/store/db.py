"""The durable store: SQLite in WAL mode with ``synchronous=FULL`` (each commit fsyncs the WAL).

A writer process (:mod:`labbridge.store.writer`) owns the write connection and commits in
groups: every write request waiting while the previous commit was on disk goes into the next
transaction, each inside its own SAVEPOINT, so a failing request never takes the others down and
durability costs one fsync per group, not per message. A request's future completes only after the
COMMIT returned: that is when an analyzer may be ACKed. :class:`WriterClient` is the daemon's end of it,
on the event loop; the SQL it runs is in :mod:`labbridge.store.sql`. A process rather than a thread of
the daemon: measured against the same group commit on a thread (docs/performance.md, issue 14), the
thread stored 35-40 % fewer messages at 100 links and doubled the commit's p99 at 10 links, the SQLite
work and the event loop sharing one GIL on a 2-core machine; the thread saved ~10 MiB.

Every failure a caller sees from a write is a :class:`~labbridge.errors.StoreError` whose ``kind`` comes
from SQLite's error code or the errno (:mod:`labbridge.store.failure`); a writer that stopped fails what
it had in flight with kind ``unavailable``.

Other reads use a connection of their own on a thread (WAL readers never block the writer); the relay's
reads of due items go through the writer (after its group's commit).

Checkpoints (copying the WAL's pages into the database file, with its own fsync) run on a third
connection, in the background, every ``checkpoint_interval_s`` (PASSIVE: they never wait for or block
the writer). SQLite's automatic checkpoint would run them inside a COMMIT every 1,000 pages, the commit
whose analyzer waits for its ACK: measured, that was the whole p99 of the commit at one link (17 ms
against 6.5 ms without). The writer still checkpoints by itself past ``WAL_BACKSTOP_PAGES`` (64 MiB), in
case the background checkpoints cannot keep up.

The WAL only starts again from its beginning when a write transaction begins with every frame copied.
Under writes that never pause, a background checkpoint always ends behind the writer, so the WAL grew to
the backstop, and the writer's own checkpoint there took 15-30 ms inside a commit, every ~16,000 pages
(issue 15: all ten links' ACKs stalled together, the whole p99). So after each background checkpoint the
writer is asked to checkpoint what was committed since (:func:`labbridge.store.sql.finish_checkpoint`,
run as a read after its group's commit: a few hundred pages, about a millisecond), and its next write
starts the WAL again.

The tables and their migrations are in :mod:`labbridge.store.schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from labbridge.errors import StoreError
from labbridge.logs import get_logger
from labbridge.model import Result, result_values
from labbridge.outbox import (
    DEAD_LIS_REJECTED,
    DEAD_UNDECODABLE,
    GROUP_SIZE_BUCKETS,
    Held,
    OutboxItem,
    RawMessage,
    Retention,
    Route,
    StoredMessage,
    StoreSize,
)
from labbridge.store import files, sql
from labbridge.store.failure import store_error
from labbridge.store.schema import migrate
from labbridge.store.sql import OUTBOX_COLUMNS
from labbridge.store.writer import READ, RELAXED, WRITE, BatchStats, FrameBuffer, connect, dumps, frame, loads

log = get_logger("labbridge.store")
T = TypeVar("T")

class WriterClient(asyncio.Protocol):
    """The daemon's end of one writer child, on the event loop: requests out, outcomes back, no thread.

    ``on_stats`` gets each group's :class:`BatchStats` (the store's counters). If the child stops, every
    request in flight fails with a :class:`StoreError` and :attr:`alive` turns false; the store then
    starts another child for the next request.
    """

    def __init__(self, path: str, wal_backstop_pages: int, on_stats: Callable[[BatchStats], None]) -> None:
        self.path = path
        self.wal_backstop_pages = wal_backstop_pages
        self.on_stats = on_stats
        self._transport: asyncio.Transport | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._frames = FrameBuffer()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1
        self._closing = False
        self.lost_reason = ""

    @property
    def alive(self) -> bool:
        return self._transport is not None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # fork + exec returns at once (the child's start-up runs in the child), hence ASYNC220
            self._proc = subprocess.Popen(  # noqa: S603, ASYNC220 - this interpreter, fixed arguments
                [sys.executable, "-c", "from labbridge.store.writer import main; raise SystemExit(main())",
                 str(theirs.fileno()), self.path, str(self.wal_backstop_pages)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        await asyncio.get_running_loop().create_unix_connection(lambda: self, sock=ours)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def submit(self, kind: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               fail_commit: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._transport is None:
            future.set_exception(StoreError(f"the store writer process is not running ({self.lost_reason})",
                                            kind="unavailable"))
            return future
        try:
            body = dumps((kind, fn, args, kwargs, fail_commit))
        except Exception as exc:
            future.set_exception(StoreError(
                f"store request {getattr(fn, '__qualname__', fn)!r} cannot be sent to the writer process (it must"
                f" be a module-level function with picklable arguments): {exc}"))
            return future
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = future
        self._transport.write(frame(request_id, body))
        return future

    def data_received(self, data: bytes) -> None:
        self._frames.feed(data)
        try:
            self._take_answers()
        except Exception as exc:  # a corrupt answer: drop this writer (its requests fail) rather than wait forever
            log.error("store_writer_answer_unreadable", error=f"{type(exc).__name__}: {exc}")
            if self._transport is not None:
                self._transport.abort()

    def _take_answers(self) -> None:
        while (got := self._frames.next()) is not None:
            outcomes, stats = loads(got[1])
            if stats is not None:
                self.on_stats(stats)
            for request_id, ok, value in outcomes:
                future = self._pending.pop(request_id, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        status = None if self._proc is None else self._proc.poll()
        self.lost_reason = "closed" if self._closing else (
            f"it stopped: {exc or 'end of stream'}, exit status {status if status is not None else 'unknown'}")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(StoreError(
                    f"commit failed: the store writer process stopped ({self.lost_reason})", kind="unavailable"))

    async def close(self) -> None:
        """Close our end: the child finishes the group in hand and exits."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()
        if self._proc is not None:
            proc, self._proc = self._proc, None
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


# Messages decoded and not yet committed, all links together: past this, a link's next message waits, still
# undecoded (its bytes only), for a commit to finish (MessageSink). A burst of a thousand analyzers ending their
# messages at once then holds a thousand messages' bytes, not a thousand messages' results and requests; the
# group commit still takes up to this many messages at a time, and an ACK waits for the commit anyway.
MESSAGES_IN_FLIGHT = 128
CHECKPOINT_INTERVAL_S = 0.5  # with the writer's follow-up, the WAL starts again about this often (module docstring)
WAL_BACKSTOP_PAGES = 16384  # 64 MiB of 4 KiB pages: the writer checkpoints itself past this (SQLite's default is 1,000)


class Store:
    """Async facade over the SQLite store."""

    def __init__(self, path: str | Path, *, checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
                 group: str | None = None, keep_group_read: bool = False) -> None:
        self.path = str(path)
        self.group = group  # [store] group: its files 0640 for that group, else 0600 (labbridge.store.files)
        self.keep_group_read = keep_group_read  # the group is not known here (files.secure)
        self.checkpoint_interval_s = checkpoint_interval_s
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_stop = threading.Event()
        self.checkpoints = 0  # background checkpoints run
        self.wal_restarts_asked = 0  # the writer's checkpoints after them (each lets the WAL start again)
        self._finishing: set[asyncio.Future[int]] = set()
        self.checkpoint_seconds = 0.0
        self.last_checkpoint_error: str | None = None
        self._writer: WriterClient | None = None
        self._restart_lock = asyncio.Lock()
        self.writer_starts = 0  # writers started (more than one: a writer died and was replaced)
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
        self.intake = asyncio.Semaphore(MESSAGES_IN_FLIGHT)  # held by a message from its decode to its commit
        self.intake_waits = 0  # messages that waited for a place (MESSAGES_IN_FLIGHT were decoded, uncommitted)

    # ---- lifecycle -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path)

    def writer_alive(self) -> bool:
        """The writer process is running (commits can be made)."""
        return self._writer is not None and self._writer.alive

    @property
    def writer_restarts(self) -> int:
        """Writers that died and were replaced (their in-flight requests failed: nothing ACKed)."""
        return max(0, self.writer_starts - 1)

    async def open(self) -> None:
        try:
            folder = Path(self.path).parent
            folder.mkdir(mode=0o750 if self.group else 0o700, parents=True, exist_ok=True)
            files.check_folder(folder)
            files.secure(self.path, self.group, keep_group_read=self.keep_group_read)
            conn = self._connect()
            try:
                migrate(conn, self.path)
            finally:
                conn.close()
            # Again for the -wal and -shm SQLite made, in case an older mode left them wider.
            files.secure(self.path, self.group, keep_group_read=self.keep_group_read)
        except (OSError, sqlite3.Error) as exc:
            raise store_error(exc, f"store {self.path} cannot be opened") from exc
        await self._start_writer()
        self._read_conn = await asyncio.get_running_loop().run_in_executor(self._reader, self._connect)
        self._checkpoint_stop.clear()
        self._loop = asyncio.get_running_loop()
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
            writer, self._writer = self._writer, None
            await writer.close()
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
                if self._checkpoint(conn):
                    with contextlib.suppress(RuntimeError):  # the loop is closing: the store with it
                        self._loop.call_soon_threadsafe(self._finish_checkpoint)
        finally:
            conn.close()

    def _finish_checkpoint(self) -> None:
        """On the loop, after a background checkpoint: the writer copies what was committed since, so its next
        write starts the WAL again (see the module's docstring). Best effort: a failure is the next one's to mend."""
        if self._writer is None:
            return
        task = asyncio.ensure_future(self._submit(READ, sql.finish_checkpoint))
        self._finishing.add(task)
        task.add_done_callback(self._finished_checkpoint)

    def _finished_checkpoint(self, task: asyncio.Future[int]) -> None:
        self._finishing.discard(task)
        if not task.cancelled() and task.exception() is None:
            self.wal_restarts_asked += 1

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        """One PASSIVE checkpoint on ``conn`` (the checkpointer's connection); errors are counted, not raised.
        True if it ran."""
        started = time.perf_counter()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            if self.last_checkpoint_error != str(exc):
                log.warning("checkpoint_failed", error=str(exc))
            self.last_checkpoint_error = str(exc)
            return False
        self.checkpoints += 1
        self.checkpoint_seconds += time.perf_counter() - started
        self.last_checkpoint_error = None
        return True

    # ---- the writer ----------------------------------------------------------------------------

    async def _start_writer(self) -> None:
        writer = WriterClient(self.path, WAL_BACKSTOP_PAGES, self._count)
        try:
            await writer.start()
        except OSError as exc:  # no process or socket to be had (EAGAIN, EMFILE...)
            raise StoreError(f"the store writer cannot be started: {exc}", kind="unavailable") from exc
        self._writer = writer
        self.writer_starts += 1
        if self.writer_starts > 1:
            log.error("store_writer_restarted", starts=self.writer_starts)

    def _count(self, stats: BatchStats) -> None:
        if stats.committed:
            self.commits += 1
            self.committed_jobs += stats.writes
            self.commit_seconds += stats.seconds
            self.group_sizes[next(i for i, b in enumerate(GROUP_SIZE_BUCKETS) if stats.writes <= b)] += 1
            self.last_commit_error = stats.error
        elif stats.writes:
            self.commit_failures += 1
            self.last_commit_error = stats.error

    async def _submit(self, kind: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        writer = self._writer
        if writer is None:
            raise StoreError("store is not open", kind="unavailable")
        if not writer.alive:  # it died (its requests in flight failed): a new one for this request
            async with self._restart_lock:
                if self._writer is writer:
                    log.error("store_writer_lost", reason=writer.lost_reason)
                    self.commit_failures += 1
                    self.last_commit_error = f"the store writer process stopped ({writer.lost_reason})"
                    await writer.close()
                    await self._start_writer()
            writer = self._writer
            if writer is None:
                raise StoreError("store is not open", kind="unavailable")
        result: T = await writer.submit(kind, fn, args, kwargs, self.fail_commits)
        return result

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in the writer, in a transaction; returns once it is on disk.

        Also for store extensions (the order source). ``fn`` must be a module-level function (the writer
        process gets it pickled by reference), its arguments and result picklable, and it must not commit
        or roll back itself. A SQLite failure is a :class:`StoreError` of its kind; an exception ``fn``
        raises itself reaches the caller as it is (its write rolled back).
        """
        return await self._submit(WRITE, fn, *args, **kwargs)

    async def write_relaxed(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """As :meth:`write`, for what a power cut may lose (the link history): a group of only these skips the fsync."""
        return await self._submit(RELAXED, fn, *args, **kwargs)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the read connection (it sees every committed write)."""
        conn = self._read_conn
        if conn is None:
            raise StoreError("store is not open", kind="unavailable")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)
        except sqlite3.Error as exc:
            raise store_error(exc, "read failed") from exc

    # ---- writes --------------------------------------------------------------------------------

    async def commit_message(self, *, instrument: str, protocol: str, raw: bytes, received_at: float,
                             results: Sequence[Result], destinations: Sequence[str | Route],
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
        Each destination is an ID or a :class:`Route` (an ID alone: the default route): QC results are
        queued, held or left out per destination as its route says.
        Returns only after the commit is on disk.
        """
        dead = list(held)
        if error is not None:
            dead.insert(0, Held(DEAD_UNDECODABLE, f"no driver could decode this message: {error}"))

        # Each result as its values, a plain tuple: the writer process unpickles it without rebuilding a Result.
        return await self.write(sql.commit_message, instrument=instrument, protocol=protocol, raw=raw,
                                 received_at=received_at, results=[result_values(r) for r in results],
                                 destinations=destinations, error=error, sender_id=sender_id, dead=dead,
                                 backlog_after_s=backlog_after_s, held_results=[result_values(r) for r in held_results],
                                 hold_reason=hold_reason)

    async def record_incomplete(self, *, instrument: str, raw: bytes, reason: str, received_at: float) -> None:
        await self.write(sql.record_incomplete, instrument, raw, reason, received_at)

    async def mark_delivered(self, item_id: int, at: float) -> None:
        """Mark an item the LIS accepted; a relaxed write (see :mod:`labbridge.store.writer`)."""
        await self._submit(RELAXED, sql.mark_delivered, item_id, at)

    async def mark_delivered_many(self, marks: Sequence[tuple[int, float]]) -> None:
        """Mark items the LIS accepted, ``(item id, when)`` each, in one relaxed write."""
        await self._submit(RELAXED, sql.mark_delivered_many, list(marks))

    async def schedule_retry(self, item_id: int, next_attempt_at: float | None, error: str) -> None:
        """A failed attempt; ``next_attempt_at`` None: the item keeps its place (the destination was down)."""
        await self.write(sql.schedule_retry, item_id, next_attempt_at, error)

    async def dead_letter(self, item_id: int, reason: str, kind: str = DEAD_LIS_REJECTED) -> None:
        await self.write(sql.dead_letter, item_id, reason, kind)

    async def set_size_limit(self, max_bytes: int | None) -> int:
        """Cap the database file (SQLite ``max_page_count``): past it, commits fail as on a full disk.

        Returns the page limit now in force. ``None`` lifts the cap. SQLite never sets it below the
        pages already used.
        """
        return await self.write(sql.set_size_limit, max_bytes)

    # ---- operator actions (each one audited in the same transaction) ---------------------------

    async def retry_dead(self, item_ids: Sequence[int] | None, *, actor: str, reason: str,
                         now: float) -> list[dict[str, Any]]:
        """Put dead letters the LIS refused (or that expired) back in line; ``None`` = every such one.

        Dead letters that need re-decoding (undecodable, unmapped, unknown sender) are not touched
        here: see :meth:`apply_redecode`. Returns one outcome per item.
        """
        return await self.write(sql.retry_dead, item_ids, actor=actor, reason=reason, now=now)

    async def apply_redecode(self, item_id: int, *, results: Sequence[Result], held: Sequence[Held],
                             actor: str, reason: str, now: float,
                             backlog_after_s: float | None = None, held_results: Sequence[Result] = (),
                             hold_reason: str = "", route: Route | None = None) -> dict[str, Any]:
        """Record what re-decoding a dead letter's raw message gave (with the current driver and config).

        Results not yet sent to this destination are queued for it (never one it already has), as its
        ``route`` says (QC held, sent marked or not queued; default: the defaults); if something is still
        held, the dead letter stays with the new reason, else it is removed. Audited.
        """
        return await self.write(sql.apply_redecode, item_id, results=results, held=held, actor=actor, reason=reason,
                                 now=now, backlog_after_s=backlog_after_s, held_results=held_results,
                                 hold_reason=hold_reason, route=route)

    async def purge(self, *, item_ids: Sequence[int] | None = None, state: str | None = None,
                    older_than_s: float | None = None, actor: str, reason: str, now: float) -> dict[str, Any]:
        """Delete dead or delivered outbox items (never pending ones). Audited; returns what it did."""
        if state not in (None, "dead", "delivered"):
            raise StoreError(f"only dead or delivered items can be purged, not {state!r}")
        if item_ids is None and state is None:
            raise StoreError("name the items to purge (ids) or a state (dead or delivered)")
        return await self.write(sql.purge, item_ids, state=state, older_than_s=older_than_s, actor=actor,
                                 reason=reason, now=now)

    async def prune(self, retention: Retention, now: float) -> dict[str, int]:
        """Drop what retention no longer requires: never a pending or dead item, nor what they refer to."""
        return await self.write(sql.prune, retention, now)

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
        return await self._submit(READ, sql.due_items, destination, now, include_backlog=include_backlog, limit=limit,
                                  exclude=exclude)

    async def due_items_above(self, destination: str, now: float, *, include_backlog: bool = True, limit: int = 64,
                              exclude: Collection[int] = ()) -> tuple[list[OutboxItem], float | None, int]:
        """:meth:`due_items`, and the highest outbox id when it was read (the relay's read: every item queued
        after it has a higher id)."""
        return await self._submit(READ, sql.due_items_above, destination, now, include_backlog=include_backlog,
                                  limit=limit, exclude=exclude)

    async def backlog_waiting(self, destination: str) -> int:
        return int(await self.read(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE destination = ? AND state = 'pending' AND backlog = 1",
            (destination,)).fetchone()[0]))

    async def raw_message(self, message_id: int) -> RawMessage | None:
        def work(conn: sqlite3.Connection) -> RawMessage | None:
            row = conn.execute("SELECT id, instrument, protocol, raw, received_at FROM messages WHERE id = ?",
                               (message_id,)).fetchone()
            return None if row is None else RawMessage(row[0], row[1], row[2], bytes(row[3]), row[4])

        return await self.read(work)

    async def audit_rows(self, limit: int = 200) -> list[dict[str, Any]]:
        def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cols = ("id", "at", "actor", "action", "target", "reason", "detail")
            rows = conn.execute("SELECT id, at, actor, action, target, reason, detail FROM audit"
                                " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            out = [dict(zip(cols, r, strict=True)) for r in rows]
            for item in out:
                item["detail"] = json.loads(item["detail"]) if item["detail"] else None
            return out

        return await self.read(work)

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
            for dest, oldest in conn.execute("SELECT destination, MIN(created_at) FROM outbox WHERE state = 'pending'"
                                             " GROUP BY destination"):
                out["outbox"][dest]["oldest_pending_at"] = oldest
            return out

        return await self.read(work)

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

        return await self.read(work)

    # ---- link health (the daemon's health task; never on a link's path) ------------------------

    async def instrument_outbox_facts(self) -> dict[str, dict[str, Any]]:
        """Per instrument: pending items/results, the oldest pending one's time, dead letters by kind."""
        return await self.read(sql.instrument_outbox_facts)

    async def last_deliveries(self, since: float) -> dict[str, float]:
        """Per instrument, the time of its latest item the LIS accepted at or after ``since``."""
        return await self.read(lambda conn: sql.last_deliveries(conn, since))

    async def last_messages(self, instruments: Sequence[str]) -> dict[str, float]:
        """Per instrument, the time of its latest stored message (survives a restart)."""
        return await self.read(lambda conn: sql.last_messages(conn, instruments))

    async def message_hour_gaps(self, instrument: str, since: float) -> tuple[float | None, list[tuple[int, float]]]:
        """For learning an instrument's traffic: its first message since ``since`` and the longest gap
        between consecutive messages per UTC hour (see :func:`labbridge.health.traffic.learn`)."""
        return await self.read(lambda conn: sql.message_hour_gaps(conn, instrument, since))


def wall_clock() -> float:
    """Seconds since the epoch, for timestamps that survive a restart."""
    return time.time()
