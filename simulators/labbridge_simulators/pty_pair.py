"""A pseudo-terminal pair standing in for an RS-232 cable: labbridge opens the slave device with pyserial,
a simulated analyzer reads and writes the master end through asyncio streams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty


class PtyPair:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing: a serial line carries bytes as they are
        self.device = os.ttyname(self.slave)
        self._open = True

    async def open_master(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Asyncio streams on (a duplicate of) the master end."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        read_file = os.fdopen(os.dup(self.master), "rb", buffering=0)
        write_file = os.fdopen(os.dup(self.master), "wb", buffering=0)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_file)
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), write_file)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    def close(self) -> None:
        """Close both ends once (a second call does nothing: the numbers may belong to new files by then)."""
        fds, self._open = (self.master, self.slave) if self._open else (), False
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
