"""LinkInput: a session's read under its deadline, woken by new work, losing no byte, on both loops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from labbridge.links.input_wait import LinkInput, LinkReader, Wakeup, open_link_connection, start_link_server
from tests.conftest import run


@contextlib.asynccontextmanager
async def _connection(*, link_reader: bool = False) -> AsyncIterator[tuple[asyncio.StreamReader,
                                                                           asyncio.StreamWriter]]:
    """A loopback connection: (our reader, the peer's writer), closed on exit. With
    ``link_reader``, made by labbridge's helpers, so that our reading end is a LinkReader (as labbridge's TCP
    links have) and so is the accepted side's."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if isinstance(r, LinkReader) == link_reader:
            accepted.set_result(w)
        else:  # raised where the test awaits the connection, not lost in the server's callback
            accepted.set_exception(AssertionError(f"accepted side reads through {type(r).__name__}"))

    start, connect = (start_link_server, open_link_connection) if link_reader else (
        asyncio.start_server, asyncio.open_connection)
    server = await start(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, own = await connect("127.0.0.1", port)  # our writer is kept until exit: it owns the socket
    try:
        yield reader, await accepted
    finally:
        own.close()
        server.close()
        await server.wait_closed()


def test_data_deadline_and_wakeup_lose_no_byte(event_loop_name: str) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with _connection() as (reader, peer):
            wakeup = Wakeup()
            link = LinkInput(reader, 100, wakeup)
            peer.write(b"\x05")
            assert await link.read(loop.time() + 5) == b"\x05"

            # The deadline passes first: None; bytes sent afterwards are read by the next call.
            assert await link.read(loop.time() + 0.05) is None
            peer.write(b"\x02frame")
            assert await link.read(loop.time() + 5) == b"\x02frame"

            # Woken while the read waits (no deadline at all): it returns at once, and the flag says so once.
            pending = asyncio.ensure_future(link.read(None))
            await asyncio.sleep(0.05)
            assert not pending.done()
            started = loop.time()
            wakeup.set()
            assert await asyncio.wait_for(pending, 2) is None
            assert loop.time() - started < 1.0
            assert wakeup.consume() and not wakeup.consume()
            peer.write(b"\x04")
            assert await link.read(None) == b"\x04"

            # Set before the read: no read at all; the bytes wait in the reader.
            peer.write(b"\x05")
            await asyncio.sleep(0.05)
            wakeup.set()
            assert await link.read(None) is None
            assert wakeup.consume()
            assert await link.read(None) == b"\x05"

            # Data and the wake-up in the same loop turn: the bytes are not lost either way.
            pending = asyncio.ensure_future(link.read(None))
            await asyncio.sleep(0.05)
            peer.write(b"ABC")
            await asyncio.sleep(0.02)
            wakeup.set()
            got = await asyncio.wait_for(pending, 2)
            if got is None:
                got = await link.read(loop.time() + 2)
            assert got == b"ABC"
            wakeup.consume()

            peer.close()
            assert await link.read(loop.time() + 5) == b""

    run(body(), loop=event_loop_name)


def test_a_socket_timeout_is_raised_not_taken_for_the_deadline(event_loop_name: str) -> None:
    async def body() -> None:
        reader = asyncio.StreamReader()
        reader.set_exception(TimeoutError(110, "Connection timed out"))  # ETIMEDOUT from the kernel
        with pytest.raises(TimeoutError):
            await LinkInput(reader, 100, Wakeup()).read(asyncio.get_running_loop().time() + 5)

    run(body(), loop=event_loop_name)


def test_a_deadline_is_kept_when_it_moves_later_or_earlier_between_reads(event_loop_name: str) -> None:
    """One timer per session, re-armed lazily: a later deadline is not cut short by the timer armed for an
    earlier one, and an earlier deadline is not missed because a later timer was armed."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with _connection() as (reader, peer):
            link = LinkInput(reader, 100)
            # Arm for +0.1 s, then read with a deadline of +0.4 s: the first timer fires and is re-armed.
            peer.write(b"x")
            assert await link.read(loop.time() + 0.1) == b"x"
            started = loop.time()
            assert await link.read(started + 0.4) is None
            assert 0.35 <= loop.time() - started < 1.5
            # Now a far deadline is armed; an earlier one must still end the read on time.
            peer.write(b"y")
            assert await link.read(loop.time() + 30) == b"y"
            started = loop.time()
            assert await link.read(started + 0.1) is None
            assert loop.time() - started < 1.0
            link.close()

    run(body(), loop=event_loop_name)


def test_a_cancellation_from_outside_goes_through_even_when_the_deadline_passes_at_once(
        event_loop_name: str) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with _connection() as (reader, _peer):
            link = LinkInput(reader, 100, Wakeup())

            async def session() -> bytes | None:
                return await link.read(None)

            task = asyncio.ensure_future(session())
            await asyncio.sleep(0.05)
            task.cancel()  # the daemon stopping
            with pytest.raises(asyncio.CancelledError):
                await task
            # The interruption and an outside cancel in the same turn: the outside one wins.
            link2 = LinkInput(reader, 100, Wakeup())
            task = asyncio.ensure_future(link2.read(loop.time() + 60))
            await asyncio.sleep(0.05)
            assert link2.wakeup is not None
            link2.wakeup.set()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(body(), loop=event_loop_name)


def test_the_fast_path_takes_bytes_while_the_read_waits_and_keeps_their_order(event_loop_name: str) -> None:
    """Bytes arriving while a read waits go to ``consume`` from the transport's callback (the read goes on
    waiting); once ``consume`` interrupts, later bytes wait in the buffer for the next read, in order;
    bytes buffered before a read are returned by it, never given to ``consume``."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with _connection(link_reader=True) as (reader, peer):
            taken: list[bytes] = []
            link: LinkInput

            def consume(data: bytes) -> None:
                taken.append(data)
                if data.endswith(b"!"):
                    link.interrupt()  # what needs the task: it wakes; what follows is buffered

            link = LinkInput(reader, 100, consume=consume)
            pending = asyncio.ensure_future(link.read(loop.time() + 10))
            await asyncio.sleep(0.05)  # the read is waiting
            for chunk in (b"one", b"two"):
                peer.write(chunk)
                await asyncio.sleep(0.05)
            assert taken == [b"one", b"two"] and not pending.done()
            peer.write(b"three!")
            assert await asyncio.wait_for(pending, 2) is None
            peer.write(b"four")  # nobody reads now: buffered
            await asyncio.sleep(0.05)
            peer.write(b"five")
            await asyncio.sleep(0.05)
            assert taken == [b"one", b"two", b"three!"]
            assert await link.read(loop.time() + 5) == b"fourfive"  # buffered bytes come first, by the read
            # A plain StreamReader (serial) never takes the fast path, consume or not.
            plain = LinkInput(asyncio.StreamReader(), 100, consume=consume)
            assert plain._fast_reader is None

    run(body(), loop=event_loop_name)


def test_the_fast_path_moves_the_deadline_of_the_waiting_read(event_loop_name: str) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with _connection(link_reader=True) as (reader, peer):
            link: LinkInput

            def consume(data: bytes) -> None:
                link.move_deadline(loop.time() + (0.1 if data == b"soon" else 30.0))

            link = LinkInput(reader, 100, consume=consume)
            started = loop.time()
            pending = asyncio.ensure_future(link.read(started + 0.3))
            await asyncio.sleep(0.05)
            peer.write(b"later")  # the deadline moves 30 s on: the 0.3 s timer must not end the read
            await asyncio.sleep(0.5)
            assert not pending.done()
            peer.write(b"soon")  # and earlier again: the read ends ~0.1 s after
            assert await asyncio.wait_for(pending, 2) is None
            assert loop.time() - started < 2.0
            link.close()

    run(body(), loop=event_loop_name)
