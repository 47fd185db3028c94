"""The store's writer on a thread of the daemon's process: the simpler design, beside the writer process.

One thread owns the write connection and runs the writer process's group commit as it is
(:func:`labbridge.store.writer.run_group`): it waits for one request, takes every request queued
behind it as one group (at most ``GROUP_COMMIT_MAX``), runs the writes in one transaction, each under
its own SAVEPOINT, one COMMIT (``synchronous=FULL``; a group of relaxed marks only commits with
NORMAL), then the reads. A request's future is completed on the event loop
(``loop.call_soon_threadsafe``) only once its group's COMMIT returned: persist-before-ACK holds as
with the process. Nothing is pickled; requests need not be module-level functions here, but the store's
own are, so that both writers run them.

The cost the process avoids: this thread shares the interpreter's GIL with the event loop, and hands it
back and forth at every SQLite call (see :mod:`labbridge.store.writer`). Which design the store uses is
chosen by ``LABBRIDGE_STORE_WRITER`` (:mod:`labbridge.store.db`), so that both can be measured.

If the thread stops (an exception its group commit does not catch), every request in flight fails with
a :class:`StoreError` of kind ``unavailable``, :attr:`alive` turns false, and the store starts another
writer for the next request, as it does for a lost process.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from labbridge.errors import StoreError
from labbridge.logs import get_logger
from labbridge.store.failure import store_error
from labbridge.store.writer import GROUP_COMMIT_MAX, BatchStats, Request, connect_writer, run_group

log = get_logger("labbridge.store")

_Job = tuple[asyncio.Future[Any], Request, bool]  # the caller's future, the request, fail_commit
_Answer = list[tuple[asyncio.Future[Any], bool, Any]]


class WriterThread:
    """The write connection and its group commit on one thread; the same surface as the writer process's
    client (:class:`labbridge.store.db.WriterClient`)."""

    pid = None  # no process of its own

    def __init__(self, path: str, wal_backstop_pages: int, on_stats: Callable[[BatchStats], None]) -> None:
        self.path = path
        self.wal_backstop_pages = wal_backstop_pages
        self.on_stats = on_stats
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: finish and stop
        self._pending: set[asyncio.Future[Any]] = set()  # submitted, not answered (event loop side)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._alive = False
        self.lost_reason = ""

    @property
    def alive(self) -> bool:
        return self._alive

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            conn = await asyncio.to_thread(connect_writer, self.path, self.wal_backstop_pages)
        except sqlite3.Error as exc:
            raise store_error(exc, f"store {self.path}: the writer cannot open it") from exc
        self._thread = threading.Thread(target=self._serve, args=(conn,), name="labbridge-store-writer",
                                        daemon=True)
        self._alive = True
        self._thread.start()

    def submit(self, kind: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               fail_commit: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._alive:
            future.set_exception(StoreError(f"the store writer thread is not running ({self.lost_reason})",
                                            kind="unavailable"))
            return future
        self._pending.add(future)
        self._jobs.put((future, (kind, fn, args, kwargs), fail_commit))
        return future

    async def close(self) -> None:
        """Let the thread finish the group in hand and what is queued, then stop."""
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        self._alive, self.lost_reason = False, "closed"  # no request after the stop mark
        self._jobs.put(None)
        await asyncio.to_thread(thread.join)

    # ---- the thread ----------------------------------------------------------------------------

    def _take_group(self) -> tuple[list[_Job], bool]:
        """Wait for one request, then take every request already queued too: (group, still open)."""
        first = self._jobs.get()
        if first is None:
            return [], False
        group = [first]
        while len(group) < GROUP_COMMIT_MAX:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return group, False
            group.append(job)
        return group, True

    def _serve(self, conn: sqlite3.Connection) -> None:
        reason = "closed"
        try:
            open_ = True
            while open_:
                group, open_ = self._take_group()
                if group:
                    run_group(conn, [(future, request) for future, request, _ in group],
                              any(fail for *_, fail in group), self._answer)
        except BaseException as exc:  # whatever stopped it, the loop side must hear of it
            reason = f"it stopped: {type(exc).__name__}: {exc}"
        finally:
            conn.close()  # a transaction left open by a stop is rolled back
            self._call_on_loop(self._lost, reason)

    def _answer(self, outcomes: _Answer, stats: BatchStats | None) -> None:
        self._call_on_loop(self._settle, outcomes, stats)

    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    # ---- on the event loop ---------------------------------------------------------------------

    def _settle(self, outcomes: _Answer, stats: BatchStats | None) -> None:
        if stats is not None:
            self.on_stats(stats)
        for future, ok, value in outcomes:
            self._pending.discard(future)
            if future.done():  # its caller was cancelled
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _lost(self, reason: str) -> None:
        self._alive = False
        self.lost_reason = reason
        if reason != "closed":
            log.error("store_writer_thread_stopped", reason=reason)
        pending, self._pending = self._pending, set()
        for future in pending:
            if not future.done():
                future.set_exception(StoreError(f"commit failed: the store writer thread stopped ({reason})",
                                                kind="unavailable"))
