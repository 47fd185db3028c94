"""read_or_wake: a session's read under its deadline, woken by new work, losing no byte, on both loops."""

from __future__ import annotations

import asyncio

import pytest

from labbridge.runtime.input_wait import Wakeup, read_or_wake
from tests.conftest import run


async def _pair() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Server]:
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result(w)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the writer is kept: it owns the socket
    return reader, writer, await accepted, server


def test_data_deadline_and_wakeup_lose_no_byte(event_loop_name: str) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        reader, own, peer, server = await _pair()
        wakeup = Wakeup()
        peer.write(b"\x05")
        assert await read_or_wake(reader, 100, loop.time() + 5, wakeup) == b"\x05"

        # The deadline passes first: None; bytes sent afterwards are read by the next call.
        assert await read_or_wake(reader, 100, loop.time() + 0.05, wakeup) is None
        peer.write(b"\x02frame")
        assert await read_or_wake(reader, 100, loop.time() + 5, wakeup) == b"\x02frame"

        # Woken while the read waits (no deadline at all): it returns at once, and the flag says so once.
        pending = asyncio.ensure_future(read_or_wake(reader, 100, None, wakeup))
        await asyncio.sleep(0.05)
        assert not pending.done()
        started = loop.time()
        wakeup.set()
        assert await asyncio.wait_for(pending, 2) is None
        assert loop.time() - started < 1.0
        assert wakeup.consume() and not wakeup.consume()
        peer.write(b"\x04")
        assert await read_or_wake(reader, 100, None, wakeup) == b"\x04"

        # Set before the read: no read at all; the bytes wait in the reader.
        peer.write(b"\x05")
        await asyncio.sleep(0.05)
        wakeup.set()
        assert await read_or_wake(reader, 100, None, wakeup) is None
        assert wakeup.consume()
        assert await read_or_wake(reader, 100, None, wakeup) == b"\x05"

        # Data and the wake-up in the same loop turn: the bytes are not lost either way.
        pending = asyncio.ensure_future(read_or_wake(reader, 100, None, wakeup))
        await asyncio.sleep(0.05)
        peer.write(b"ABC")
        await asyncio.sleep(0.02)
        wakeup.set()
        got = await asyncio.wait_for(pending, 2)
        if got is None:
            got = await read_or_wake(reader, 100, loop.time() + 2)
        assert got == b"ABC"
        wakeup.consume()

        peer.close()
        assert await read_or_wake(reader, 100, loop.time() + 5, wakeup) == b""
        own.close()
        server.close()
        await server.wait_closed()

    run(body(), loop=event_loop_name)


def test_a_socket_timeout_is_raised_not_taken_for_the_deadline(event_loop_name: str) -> None:
    async def body() -> None:
        reader = asyncio.StreamReader()
        reader.set_exception(TimeoutError(110, "Connection timed out"))  # ETIMEDOUT from the kernel
        with pytest.raises(TimeoutError):
            await read_or_wake(reader, 100, asyncio.get_running_loop().time() + 5, Wakeup())

    run(body(), loop=event_loop_name)
