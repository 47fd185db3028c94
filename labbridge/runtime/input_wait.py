"""Waiting for a connection's next bytes, a wake-up and a deadline at once (sessions that also send).

A session that only receives awaits ``reader.read`` under ``asyncio.timeout_at``. One that may also have
something to send (query answers, order pushes) must wake up as well when an order is added. This keeps
one outstanding read and one outstanding wait on the event across iterations (cancelling a pending
``StreamReader.read`` loses nothing, but re-creating it each turn is waste), and cancels both on close.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Woken:
    data: bytes | None  # bytes read (b"" at end of stream), or None if the read is still pending
    by_event: bool  # the wake-up event was set (it has been cleared)


class InputWaiter:
    def __init__(self, reader: asyncio.StreamReader, read_size: int) -> None:
        self.reader = reader
        self.read_size = read_size
        self._read: asyncio.Task[bytes] | None = None
        self._wake: asyncio.Task[bool] | None = None

    async def wait(self, deadline: float | None, wakeup: asyncio.Event | None = None) -> Woken:
        """Until bytes arrive, ``wakeup`` is set, or the loop time reaches ``deadline`` (None: no limit)."""
        loop = asyncio.get_running_loop()
        if self._read is None:
            self._read = asyncio.create_task(self.reader.read(self.read_size))
        waiters: set[asyncio.Task[bytes] | asyncio.Task[bool]] = {self._read}
        if wakeup is not None:
            if self._wake is None:
                self._wake = asyncio.create_task(wakeup.wait())
            waiters.add(self._wake)
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        by_event = False
        if self._wake is not None and self._wake in done:
            self._wake = None
            assert wakeup is not None
            wakeup.clear()
            by_event = True
        data: bytes | None = None
        if self._read in done:
            data = self._read.result()  # raises the connection's error, as a direct read would
            self._read = None
        return Woken(data, by_event)

    async def close(self) -> None:
        for task in (self._read, self._wake):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await task
        self._read = self._wake = None
