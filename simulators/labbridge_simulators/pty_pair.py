"""A pseudo-terminal pair standing in for an RS-232 cable: labbridge opens the slave device with pyserial,
a simulated analyzer reads and writes the master end through asyncio streams.

The master end is watched with ``loop.add_reader``/``add_writer`` rather than ``connect_read_pipe``:
uvloop (labbridge's default loop) does not support pseudo-terminals as pipes, and both loops support
watching a file descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from typing import cast


class PtyPair:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing: a serial line carries bytes as they are
        self.device = os.ttyname(self.slave)
        self._open = True

    async def open_master(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Asyncio streams on (a duplicate of) the master end."""
        loop = asyncio.get_running_loop()
        fd = os.dup(self.master)
        os.set_blocking(fd, False)
        reader = asyncio.StreamReader()
        writer = _FdWriter(loop, fd, reader)

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: the slave side is closed
                data = b""
            if data:
                reader.feed_data(data)
            else:
                loop.remove_reader(fd)
                reader.feed_eof()

        loop.add_reader(fd, readable)
        return reader, cast(asyncio.StreamWriter, writer)

    def close(self) -> None:
        """Close both ends once (a second call does nothing: the numbers may belong to new files by then)."""
        fds, self._open = (self.master, self.slave) if self._open else (), False
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class _FdWriter:
    """What the simulator needs of a StreamWriter (write, drain, close, wait_closed) on a non-blocking fd."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, reader: asyncio.StreamReader) -> None:
        self.loop = loop
        self.fd = fd
        self.reader = reader
        self.pending = bytearray()
        self.flushed: asyncio.Future[None] | None = None
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("pseudo-terminal closed")
        if not self.pending:
            with contextlib.suppress(BlockingIOError):
                data = data[os.write(self.fd, data):]
            if not data:
                return
            self.loop.add_writer(self.fd, self._writable)
        self.pending += data

    def _writable(self) -> None:
        try:
            del self.pending[:os.write(self.fd, self.pending)]
        except BlockingIOError:
            return
        except OSError as exc:
            self.pending.clear()
            self._done(exc)
            return
        if not self.pending:
            self._done(None)

    def _done(self, exc: Exception | None) -> None:
        self.loop.remove_writer(self.fd)
        if self.flushed is not None and not self.flushed.done():
            if exc is None:
                self.flushed.set_result(None)
            else:
                self.flushed.set_exception(exc)
        self.flushed = None

    async def drain(self) -> None:
        if self.pending:
            self.flushed = self.flushed or self.loop.create_future()
            await self.flushed

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            with contextlib.suppress(OSError):
                os.close(self.fd)

    async def wait_closed(self) -> None:
        return None
