"""Waiting for a connection's next bytes, a wake-up and a deadline at once, without a task per read.

A session awaits ``reader.read`` directly under ``asyncio.timeout_at(deadline)``: no task, no
``asyncio.wait`` and no second future per frame (a chemistry message is ~25 frames, each read on this
path). A session that may also send (query answers, order pushes) must wake up when an order is added:
:meth:`Wakeup.set` reschedules the pending read's timeout to now, so the read ends as a timeout would.
``StreamReader.read`` is cancel-safe: bytes that arrive meanwhile stay in the reader's buffer.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """A flag that new work sets (an order added); a session reading under :func:`read_or_wake` wakes at once.

    Set from the event loop's thread only (as an ``asyncio.Event``).
    """

    __slots__ = ("_flag", "_watching")

    def __init__(self) -> None:
        self._flag = False
        self._watching: set[asyncio.Timeout] = set()

    def set(self) -> None:
        self._flag = True
        if self._watching:
            now = asyncio.get_running_loop().time()
            for timeout in self._watching:
                timeout.reschedule(now)
            self._watching.clear()

    def is_set(self) -> bool:
        return self._flag

    def consume(self) -> bool:
        """Whether it was set since the last call (and clear it)."""
        flag, self._flag = self._flag, False
        return flag


async def read_or_wake(reader: asyncio.StreamReader, size: int, deadline: float | None,
                       wakeup: Wakeup | None = None) -> bytes | None:
    """Bytes read (``b""`` at end of stream), or None once the loop time reaches ``deadline`` (None: no
    limit) or ``wakeup`` is set, whichever comes first. A connection error is raised as a read raises it."""
    if wakeup is not None and wakeup.is_set():
        return None
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            if wakeup is None:
                return await reader.read(size)
            wakeup._watching.add(timeout)
            try:
                return await reader.read(size)
            finally:
                wakeup._watching.discard(timeout)
    except TimeoutError:
        if not timeout.expired():
            raise  # the socket's own ETIMEDOUT (an OSError): a connection error, not our deadline
        return None
