"""LinkSession, the one connection shell: over real loopback sockets, on both event loops, with a role that
records what it is asked to do and can be held in the middle of a commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from labbridge.health.instrument import InstrumentHealth
from labbridge.links.session import LinkSession, Wakeup
from labbridge.protocols import e1381, mllp, raw
from labbridge.protocols.hl7_ack import Hl7Received, Hl7Receiver, IncompleteBlock
from labbridge.protocols.link import Answer, Link, Outcome
from tests.conftest import run

RECORDS = (b"H|\\^&|||analyzer", b"P|1", b"O|1|S1", b"R|1|^^^GLU|5.5", b"L|1|N")
ENQ, ACK, NAK, EOT = b"\x05", b"\x06", b"\x15", b"\x04"


@dataclass
class Recorder:
    """A role: counts what only counts, records what it handles, commits when ``release`` is set."""

    session: LinkSession[Any]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handled: list[str] = field(default_factory=list)
    works: list[bool] = field(default_factory=list)
    fail_on_message: bool = False

    def on_event(self, event: object) -> bool:
        return not isinstance(event, e1381.MessageReceived | e1381.IncompleteMessage | Hl7Received | IncompleteBlock)

    async def handle(self, event: object) -> None:
        if isinstance(event, e1381.IncompleteMessage | IncompleteBlock):
            self.handled.append(f"incomplete: {getattr(event, 'reason', 'block')}")
            return
        if isinstance(event, Hl7Received):
            assert event.message is not None
            self.handled.append(f"message {event.message.control_id}")
        else:
            assert isinstance(event, e1381.MessageReceived)
            self.handled.append(f"message {event.records[2].decode()}")
        if self.fail_on_message:
            raise RuntimeError("a bug while storing")
        await self.release.wait()
        self.session.link.accept_message(self.session.now(), Answer(Outcome.ACCEPTED, datetime.now(UTC)))

    def deadline(self) -> float | None:
        return None

    async def work(self, now: float, *, woken: bool) -> None:
        self.works.append(woken)

    async def finish(self) -> None:
        self.handled.append("finish")


@contextlib.asynccontextmanager
async def _session(link: Link[Any], wakeup: Wakeup | None = None, *, fail: bool = False,
                   ) -> AsyncIterator[tuple[list[LinkSession[Any]], asyncio.StreamReader, asyncio.StreamWriter]]:
    """A listener whose one connection runs a LinkSession with a Recorder; yields ([session], peer's ends)."""
    sessions: list[LinkSession[Any]] = []
    health = InstrumentHealth(id="an", site="s", driver="d", transport="tcp")

    def make() -> LinkSession[Any]:
        session = LinkSession(link, lambda s: Recorder(s, fail_on_message=fail), health, wakeup=wakeup)
        sessions.append(session)
        return session

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        yield sessions, reader, writer
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def _role(session: LinkSession[Any]) -> Recorder:
    assert isinstance(session.role, Recorder)
    return session.role


def test_frames_are_acked_at_once_and_the_final_one_only_after_the_commit(event_loop_name: str) -> None:
    async def body() -> None:
        async with _session(e1381.E1381Link(e1381.Role.HOST)) as (sessions, reader, writer):
            writer.write(ENQ)
            assert await reader.readexactly(1) == ACK
            frames = e1381.build_frames(RECORDS)
            for frame in frames[:-1]:
                writer.write(frame)
                assert await reader.readexactly(1) == ACK
            writer.write(frames[-1])
            await asyncio.sleep(0.1)
            role = _role(sessions[0])
            assert role.handled == ["message O|1|S1"]
            with pytest.raises(TimeoutError):  # held: no ACK before the commit
                await asyncio.wait_for(reader.readexactly(1), 0.2)
            role.release.set()
            assert await reader.readexactly(1) == ACK
            writer.write(EOT)
            writer.close()
            await asyncio.wait_for(sessions[0].closed, 5)
            assert role.handled == ["message O|1|S1", "finish"]
            assert sessions[0].health.counters.bytes_received == 1 + sum(map(len, frames)) + 1

    run(body(), loop=event_loop_name)


def test_a_message_being_committed_when_the_peer_hangs_up_is_answered_before_the_link_hears_of_it(
        event_loop_name: str) -> None:
    """The end of the connection is told to the link after the event in hand: a whole message that arrived
    behind the one being committed is still taken as a message (stored; its sender resends it, unanswered,
    and the store recognises it), not reported as a transmission cut off."""

    async def body() -> None:
        async with _session(Hl7Receiver()) as (sessions, _, writer):
            first = b"MSH|^~\\&|AN||LIS||20261203||ORU^R01|M1|P|2.5.1\rOBR|1|S1\r"
            writer.write(mllp.frame(first))
            await asyncio.sleep(0.1)  # M1 is being committed: the link holds what comes next
            writer.write(mllp.frame(first.replace(b"M1", b"M2")))
            await asyncio.sleep(0.1)
            writer.close()
            await asyncio.sleep(0.1)
            role = _role(sessions[0])
            assert role.handled == ["message M1"]
            assert not sessions[0].closed.done()  # waits for the commit in hand
            role.release.set()
            await asyncio.wait_for(sessions[0].closed, 5)
            assert role.handled == ["message M1", "message M2", "finish"]

    run(body(), loop=event_loop_name)


def test_a_peer_that_half_closes_after_its_last_frame_still_gets_the_final_ack(event_loop_name: str) -> None:
    async def body() -> None:
        async with _session(e1381.E1381Link(e1381.Role.HOST)) as (sessions, reader, writer):
            writer.write(ENQ + b"".join(e1381.build_frames(RECORDS)))
            writer.write_eof()
            await asyncio.sleep(0.1)
            _role(sessions[0]).release.set()  # committed only now, after the peer's EOF
            assert await asyncio.wait_for(reader.read(), 5) == ACK * (1 + len(RECORDS))  # then we close
            await asyncio.wait_for(sessions[0].closed, 5)

    run(body(), loop=event_loop_name)


def test_the_links_deadline_fires_without_traffic(event_loop_name: str) -> None:
    """A raw-framing link's idle timer ends an unfinished message with no byte arriving (loop.call_at)."""

    async def body() -> None:
        link = raw.RawLink(raw.RawProfile(idle_timeout=0.2))
        async with _session(link) as (sessions, _, writer):
            writer.write(b"H|\\^&\rP|1\r")
            await asyncio.sleep(0.6)
            assert _role(sessions[0]).handled == ["incomplete: no L record and no byte for 0.2 s"]
            assert not sessions[0].closed.done()  # the connection goes on

    run(body(), loop=event_loop_name)


def test_wakeup_runs_the_roles_work_and_a_bug_ends_only_its_connection(event_loop_name: str) -> None:
    async def body() -> None:
        wakeup = Wakeup()
        async with _session(e1381.E1381Link(e1381.Role.HOST), wakeup, fail=True) as (sessions, reader, writer):
            await asyncio.sleep(0.05)
            role = _role(sessions[0])
            assert role.works == [True]  # a first look once connected
            wakeup.set()
            await asyncio.sleep(0.05)
            assert role.works == [True, True]
            writer.write(ENQ + b"".join(e1381.build_frames(RECORDS)))
            assert await reader.readexactly(1) == ACK  # the ENQ's
            assert await asyncio.wait_for(reader.read(), 5) == ACK * (len(RECORDS) - 1)  # then closed, no final ACK
            await asyncio.wait_for(sessions[0].closed, 5)
            assert sessions[0].failure is not None and "RuntimeError" in sessions[0].failure
            assert sessions[0].health.state == "down"
            wakeup.set()  # a closed session is no longer woken
            await asyncio.sleep(0.05)
            assert role.works == [True, True]

    run(body(), loop=event_loop_name)
