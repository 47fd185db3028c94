"""The store's writer process: the one SQLite write connection, in a process of its own.

Why a process: the writer's work is a few SQLite calls per message, and each call hands the GIL back
and forth with the event loop. In one interpreter, measured at 10 busy links, a group commit that takes
1.7 ms with the loop idle took 32 ms (the writer thread waited for the GIL after each call, ~24
context switches per message), and that wait was on the path of every analyzer's final ACK. Here the
writer has its own interpreter and GIL, and the daemon's side (:class:`WriterClient`) is a protocol on
the event loop: a request is one pickled frame out, its outcome one frame back, no thread in between.

A request is ``(kind, function, args, kwargs)``: ``function(conn, *args, **kwargs)`` runs in the child.
``function`` must be a module-level function (pickled by reference), its arguments and result picklable.
The child takes every request waiting on its socket as one group (group commit): the writes in one
transaction, each under its own SAVEPOINT (a failing one fails alone), one COMMIT for all; then the
reads, which see every write before them. The relay's reads of due items run here: their results' JSON
is decoded in this process, not on the daemon's GIL, and a read sent after a "delivered" mark sees it.

Durability is unchanged: the child answers a write only after its group's COMMIT returned (WAL,
``synchronous=FULL``: the WAL is fsynced), and the caller's future completes only with that answer. If
the child dies, every request in flight fails (no analyzer is ACKed for it) and the store starts a new
child for the next one.

Wire: frames of a 4-byte length, an 8-byte request id and a pickle, over a Unix socket pair. The child
ignores SIGINT and SIGTERM (a Ctrl-C or a service stop reaches the whole process group): it exits when
the daemon closes its end, after the group in hand, or with the daemon (its end closes then too).
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from labbridge.errors import StoreError
from labbridge.model import positional_pickle
from labbridge.store.failure import store_error

MAX_MESSAGE = 1 << 30  # one request's or answer's pickle: far above any real one, a guard against corruption
GROUP_COMMIT_MAX = 512  # requests folded into one group at most


@positional_pickle  # sent back with every group's answer
@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one group did, for the store's counters (a group of reads only commits nothing)."""

    committed: bool  # a transaction with writes was committed (False: none ran, or it failed)
    seconds: float  # BEGIN..COMMIT, fsync included (or until the failure)
    error: str | None  # the commit's (or the last failing request's) SQLite error
    writes: int = 0  # write requests in the transaction


# What a request is, which decides where it runs in a group:
WRITE = "write"  # in the group's transaction; answered once the COMMIT (WAL fsync) returned
RELAXED = "relaxed"  # the same, but a group of only these commits without waiting for the fsync (see below)
READ = "read"  # after the COMMIT, outside the transaction: sees every write of the group and before it

# A RELAXED request is one whose loss in a power cut is harmless: the LIS's "delivered" marks (a lost mark
# sends the item again, under the same control ID, which the LIS takes as the same message). In WAL mode a
# commit with synchronous=NORMAL is in the operating system's hands at once (a crash of labbridge loses
# nothing) and on disk with the next fsync, which the next durable commit or checkpoint does anyway.

# Where SQLite keeps a request's statement journal (the pages its SAVEPOINT may have to restore). SQLite keeps
# it in memory up to 64 KiB, then spills it to a temporary file, created and deleted in every transaction;
# one chem20 message's commit modifies ~20 pages (80 KiB), so every group paid for a temporary file (strace:
# an open, close, unlink, stat and access and six writes more per commit) and its outbox INSERT, the statement
# that crossed the 64 KiB, took ~80 µs instead of ~15 (docs/performance.md, issue 15 sprint 3). A function
# marked with :func:`journal_in_memory` modifies a bounded number of pages (one message, one batch of marks):
# a group of only such writes keeps the journal in memory (PRAGMA temp_store=MEMORY); any other group, which
# may modify an unbounded number (a prune, an operator's purge), keeps the temporary file, so the writer's
# memory stays bounded.
_IN_MEMORY = "_labbridge_journal_in_memory"
F = TypeVar("F", bound=Callable[..., Any])


def journal_in_memory(fn: F) -> F:
    """Mark a write function whose statement journal stays small (see ``_IN_MEMORY``'s comment)."""
    setattr(fn, _IN_MEMORY, True)
    return fn


def journals_in_memory(fn: Callable[..., Any]) -> bool:
    return bool(getattr(fn, _IN_MEMORY, False))


Request = tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]  # kind, function, args, kwargs
Outcome = tuple[bool, Any]  # (True, value) or (False, exception)
K = TypeVar("K")  # how the caller of run_group tells its requests apart


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def connect_writer(path: str, wal_backstop_pages: int) -> sqlite3.Connection:
    """The write connection: checkpoints by itself only past ``wal_backstop_pages`` (see labbridge.store.db)."""
    conn = connect(path)
    conn.execute(f"PRAGMA wal_autocheckpoint={int(wal_backstop_pages)}")
    return conn


def _sqlite_failure(exc: BaseException) -> BaseException:
    """A SQLite error as a StoreError of its kind; any other exception is the request's own, passed on."""
    return store_error(exc, "commit failed") if isinstance(exc, sqlite3.Error) else exc


def _simulated_full() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database or disk is full (simulated)")
    exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # as SQLite's own error carries it
    return exc


def run_writes(conn: sqlite3.Connection, requests: Sequence[Request],
               fail_commit: bool = False) -> tuple[list[Outcome], BatchStats]:
    """Run a group's writes in one transaction, each in its own SAVEPOINT, one COMMIT for all.

    A write that raises is rolled back alone and fails alone. If the transaction itself fails (the disk
    is full, say), every write fails. A group of RELAXED writes only commits with synchronous=NORMAL.
    ``fail_commit`` makes the COMMIT fail as a full disk would (tests and an operator's fault drill).
    Outcomes are in the order of ``requests``.
    """
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    error: str | None = None
    durable = any(kind == WRITE for kind, *_ in requests)
    try:
        # Set between transactions (SQLite refuses it inside one); a no-op when it is already so.
        in_memory = all(journals_in_memory(fn) for _, fn, _, _ in requests)
        conn.execute("PRAGMA temp_store=MEMORY" if in_memory else "PRAGMA temp_store=DEFAULT")
        if not durable:
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        for _, fn, args, kwargs in requests:
            conn.execute("SAVEPOINT job")
            try:
                value = fn(conn, *args, **kwargs)
            except Exception as exc:  # one bad request must not fail the group
                if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
                    raise  # SQLite rolled the whole group back (e.g. disk full): every request fails
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                if isinstance(exc, sqlite3.Error):  # e.g. "database or disk is full" on this request
                    error = str(exc)
                outcomes.append((False, _sqlite_failure(exc)))
            else:
                conn.execute("RELEASE job")
                outcomes.append((True, value))
        if fail_commit:
            raise _simulated_full()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        failure = store_error(exc, "commit failed")
        return [(False, failure)] * len(requests), BatchStats(False, time.perf_counter() - started, str(exc),
                                                              len(requests))
    finally:
        if not durable:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA synchronous=FULL")
    return outcomes, BatchStats(True, time.perf_counter() - started, error, len(requests))


def run_read(conn: sqlite3.Connection, request: Request) -> Outcome:
    """One READ, outside any transaction; a failing read fails alone."""
    _, fn, args, kwargs = request
    try:
        return True, fn(conn, *args, **kwargs)
    except Exception as exc:
        return False, _sqlite_failure(exc)


def run_group(conn: sqlite3.Connection, requests: Sequence[tuple[K, Request]], fail_commit: bool,
              answer: Callable[[list[tuple[K, bool, Any]], BatchStats | None], None]) -> None:
    """One group, each request tagged with the caller's key: the writes first, in one transaction, answered
    as soon as the COMMIT returned (with the group's stats), then the reads (which see those writes)."""
    writes = [(key, request) for key, request in requests if request[0] != READ]
    if writes:
        outcomes, stats = run_writes(conn, [request for _, request in writes], fail_commit)
        answer([(key, ok, value) for (key, _), (ok, value) in zip(writes, outcomes, strict=True)], stats)
    reads = [(key, *run_read(conn, request)) for key, request in requests if request[0] == READ]
    if reads:
        answer(reads, None)


# ---- wire: frames of a 4-byte length, an 8-byte request id and a pickle -----------------------------

_HEAD = struct.Struct(">IQ")


def frame(request_id: int, body: bytes) -> bytes:
    return _HEAD.pack(len(body), request_id) + body


class FrameBuffer:
    """Bytes in, whole frames out (``(request_id, body)``); refuses a length past ``MAX_MESSAGE``."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> tuple[int, bytes] | None:
        if len(self._buf) < _HEAD.size:
            return None
        length, request_id = _HEAD.unpack_from(self._buf)
        if length > MAX_MESSAGE:
            raise StoreError(f"store writer: a frame of {length} bytes refused (corrupt stream)")
        end = _HEAD.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[_HEAD.size:end])
        del self._buf[:end]
        return request_id, body


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(body: bytes) -> Any:
    return pickle.loads(body)  # noqa: S301 - only between the daemon and its own writer, over a private socket pair


# ---- the child --------------------------------------------------------------------------------------

# Answer frames carry request id 0 and a pickled ([(request_id, ok, value), ...], stats): one for a group's
# writes (sent as soon as its COMMIT returned, with the group's stats), one for its reads (stats None).

def _answer(outcomes: list[tuple[int, bool, Any]], stats: BatchStats | None) -> bytes:
    try:
        body = dumps((outcomes, stats))
    except Exception:  # a value or an exception that cannot be pickled: that request gets a StoreError
        safe: list[tuple[int, bool, Any]] = []
        for request_id, ok, value in outcomes:
            try:
                dumps(value)
            except Exception:
                safe.append((request_id, False, StoreError(
                    f"the store's answer cannot be sent back to the daemon: {type(value).__name__}", kind="other")))
            else:
                safe.append((request_id, ok, value))
        body = dumps((safe, stats))
    return frame(0, body)


def _take_group(sock: socket.socket, frames: FrameBuffer) -> tuple[list[tuple[int, bytes]], bool]:
    """Wait for one request, then take every request already sent too (group commit): (group, still open)."""
    group: list[tuple[int, bytes]] = []
    while True:
        while len(group) < GROUP_COMMIT_MAX and (got := frames.next()) is not None:
            group.append(got)
        if len(group) >= GROUP_COMMIT_MAX:
            return group, True
        try:
            data = sock.recv(1 << 16, socket.MSG_DONTWAIT if group else 0)
        except BlockingIOError:
            return group, True
        if not data:
            return group, False
        frames.feed(data)


def serve(sock: socket.socket, path: str, wal_backstop_pages: int) -> None:
    conn = connect_writer(path, wal_backstop_pages)
    frames = FrameBuffer()

    def answer(outcomes: list[tuple[int, bool, Any]], stats: BatchStats | None) -> None:
        sock.sendall(_answer(outcomes, stats))

    try:
        open_ = True
        while open_:
            group, open_ = _take_group(sock, frames)
            if not group:
                return
            requests: list[tuple[int, Request]] = []
            refused: list[tuple[int, bool, Any]] = []
            fail_commit = False
            for request_id, body in group:
                try:
                    kind, fn, args, kwargs, fail = loads(body)
                except Exception as exc:  # e.g. a function this process cannot import
                    refused.append((request_id, False, StoreError(f"store request refused by the writer: {exc}")))
                    continue
                fail_commit = fail_commit or bool(fail)
                requests.append((request_id, (kind, fn, args, kwargs)))
            if refused:
                answer(refused, None)
            run_group(conn, requests, fail_commit, answer)
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fd, path, backstop = int(args[0]), args[1], int(args[2])
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    try:
        serve(sock, path, backstop)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the daemon went away mid-answer: what was committed stays, nothing was ACKed for it
    finally:
        sock.close()
    return 0
