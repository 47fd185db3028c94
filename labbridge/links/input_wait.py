"""A session's reads: the next bytes, or its deadline, or a wake-up, whichever comes first; nothing lost.

The read is awaited in the session's own task (no task, ``asyncio.wait`` or second future per frame: a
chemistry message is ~25 frames, each read on this path). The deadline (the link's next timer) moves with
almost every frame, so instead of a timer per read (``asyncio.timeout_at``: a timer handle created,
pushed on the loop's heap and cancelled per frame) a :class:`LinkInput` keeps one timer and re-arms it
lazily: only when the deadline comes earlier than the armed timer, or when the timer fires before the
deadline it was armed for has moved to. When the deadline has passed, or :meth:`Wakeup.set` is called
(an order added), the read is interrupted by cancelling the task, and the cancellation is taken back as
``asyncio.timeout`` does (``Task.uncancel``), so a cancellation from anyone else still propagates.
``StreamReader.read`` is cancel-safe: bytes that arrive meanwhile stay in the reader's buffer.

The fast path: when the reader is a :class:`LinkReader` (TCP links, from :func:`start_link_server` and
:func:`open_link_connection`) and the session gives a ``consume`` callback, bytes that arrive while the
read waits, with nothing buffered before them, are handed to ``consume`` from the transport's callback
instead of waking the session's task: an E1381 session acknowledges an intermediate frame there (the
sans-I/O core is synchronous), and wakes its task with :meth:`LinkInput.interrupt` only for what needs
it (a complete message to commit, the end of a transfer). A wake-up per frame (a future resolved, the
task stepped, a read returned) cost ~30 us of the loop's CPU, ~25 times per chemistry message. Once
interrupted, or outside a read, bytes go to the reader's buffer as usual, in order.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, SupportsIndex


class Wakeup:
    """A flag that new work sets (an order added); a session reading through :class:`LinkInput` wakes at once.

    Set from the event loop's thread only (as an ``asyncio.Event``).
    """

    __slots__ = ("_flag", "_watching")

    def __init__(self) -> None:
        self._flag = False
        self._watching: set[LinkInput] = set()

    def set(self) -> None:
        self._flag = True
        for reader in tuple(self._watching):
            reader.interrupt()

    def is_set(self) -> bool:
        return self._flag

    def consume(self) -> bool:
        """Whether it was set since the last call (and clear it)."""
        flag, self._flag = self._flag, False
        return flag


class LinkReader(asyncio.StreamReader):
    """A StreamReader whose bytes a waiting :class:`LinkInput` may take as they arrive (the fast path)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Set by LinkInput while its read waits; True: the bytes were taken, else they are buffered.
        self.consumer: Callable[[bytes], bool] | None = None

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        consumer = self.consumer
        if consumer is not None and isinstance(data, bytes) and data and consumer(data):
            return
        super().feed_data(data)


ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start_link_server(on_client: ClientHandler, host: str, port: int,
                            ssl_ctx: ssl.SSLContext | None = None) -> asyncio.Server:
    """``asyncio.start_server`` whose connections read through a :class:`LinkReader`."""
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(LinkReader(loop=loop), on_client, loop=loop)

    return await loop.create_server(protocol, host, port, ssl=ssl_ctx)


async def open_link_connection(host: str, port: int, *, ssl_ctx: ssl.SSLContext | None = None,
                               server_hostname: str | None = None) -> tuple[LinkReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` reading through a :class:`LinkReader`."""
    loop = asyncio.get_running_loop()
    reader = LinkReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port, ssl=ssl_ctx,
                                                server_hostname=server_hostname if ssl_ctx else None)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class LinkInput:
    """One session's reads (see the module's docstring); one read at a time."""

    __slots__ = ("_consume", "_deadline", "_fast_reader", "_interrupted", "_reading", "_task", "_timer",
                 "_timer_at", "reader", "size", "wakeup")

    def __init__(self, reader: asyncio.StreamReader, size: int, wakeup: Wakeup | None = None,
                 consume: Callable[[bytes], None] | None = None) -> None:
        """``consume``: the fast path (bytes taken while a read waits; see the module's docstring), used if
        ``reader`` is a :class:`LinkReader`."""
        self.reader = reader
        self.size = size
        self.wakeup = wakeup
        self._consume = consume
        self._fast_reader = reader if consume is not None and isinstance(reader, LinkReader) else None
        self._task: asyncio.Task[object] | None = None
        self._reading = False
        self._interrupted = False
        self._deadline: float | None = None  # of the read in progress
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None  # when the armed timer fires

    async def read(self, deadline: float | None) -> bytes | None:
        """Bytes read (``b""`` at end of stream), or None once the loop time reaches ``deadline`` (None: no
        limit) or the wake-up is set. A connection error is raised as a read raises it."""
        wakeup = self.wakeup
        if wakeup is not None and wakeup.is_set():
            return None
        loop = asyncio.get_running_loop()
        if deadline is not None:
            if deadline <= loop.time():
                return None
            if self._timer_at is None or deadline < self._timer_at:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(deadline, self._on_timer)
                self._timer_at = deadline
        task = self._task = asyncio.current_task()
        if task is None:
            raise RuntimeError("LinkInput.read must run in a task")
        self._deadline = deadline
        self._interrupted = False
        cancelling = task.cancelling()
        if wakeup is not None:
            wakeup._watching.add(self)
        self._reading = True
        fast = self._fast_reader
        if fast is not None:
            # Only while this read waits: when the reader holds bytes, read() returns them without waiting
            # (no callback can come in between), so taken bytes never overtake buffered ones.
            fast.consumer = self._take
        try:
            return await self.reader.read(self.size)
        except asyncio.CancelledError:
            if self._interrupted and task.uncancel() <= cancelling:
                return None  # our own interruption, and nobody else's: the deadline or the wake-up
            raise
        finally:
            self._reading = False
            if fast is not None:
                fast.consumer = None
            if wakeup is not None:
                wakeup._watching.discard(self)

    def _take(self, data: bytes) -> bool:
        """The fast path: bytes arriving while the read waits go to ``consume`` (False: to the buffer)."""
        if not self._reading or self._interrupted or self._consume is None:
            return False
        self._consume(data)
        return True

    def move_deadline(self, deadline: float | None) -> None:
        """The deadline of the read in progress changed (the fast path moved the link's timer)."""
        self._deadline = deadline
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def interrupt(self) -> None:
        """End the read in progress (it returns None); nothing if no read is waiting."""
        if self._reading and not self._interrupted and self._task is not None:
            self._interrupted = True
            self._task.cancel()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        deadline = self._deadline
        if not self._reading or deadline is None:
            return  # the next read arms the timer again if it has a deadline
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self.interrupt()
        else:  # the deadline moved later since this timer was armed
            self._timer = loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
