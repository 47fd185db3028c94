"""The relay against LIS interfaces as real ones behave, over real sockets: independent MLLP servers (hl7apy's,
which closes its connection after every acknowledgement; python-hl7's asyncio server, which keeps it), a LIS
that drops some connections without answering, and one that acknowledges another control ID than the one sent.

"At the first try" is the outbox's own count: a delivered item with ``attempts == 1`` was never rescheduled."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
from hl7apy.mllp import AbstractHandler, MLLPServer
from structlog.testing import capture_logs

from labbridge.model import Result
from labbridge.relay.relay import Relay
from labbridge.store.db import Store
from tests.conftest import run
from tests.integration.helpers import eventually, relaying

MESSAGES = 200


def _ack(message: str, control_id: str | None = None) -> str:
    """An original-mode AA for ``message`` (MSH-10 echoed in MSA-2, unless ``control_id`` says otherwise)."""
    msh = message.split("\r", 1)[0].split("|")
    return (f"MSH|^~\\&|LIS|HOSP|{msh[2]}|{msh[3]}|20261203120000||ACK^R01^ACK|A{msh[9]}|P|2.5.1\r"
            f"MSA|AA|{msh[9] if control_id is None else control_id}\r")


async def _store_with(tmp_path: Path, count: int) -> Store:
    store = Store(tmp_path / "s.db")
    await store.open()
    for i in range(count):
        await store.commit_message(
            instrument="chem-1", protocol="astm", raw=b"raw", received_at=time.time(), destinations=["lis"],
            results=[Result(instrument="chem-1", sample_id=f"S{i:04d}", test_code="GLU", instrument_test_code="GLU",
                            value="5.1", measured_at="2026-12-03T10:00:00+01:00")])
    return store


async def _messages(reader: asyncio.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """The HL7 messages a hand-made LIS reads, with their MSH-10, until the connection ends."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            message = (await reader.readuntil(b"\x1c\r")).strip(b"\x0b\x1c\r").decode()
            yield message, message.split("\r", 1)[0].split("|")[9]


async def _deliver_all(tmp_path: Path, port: int, booked: Callable[[], int]) -> tuple[Relay, list[dict[str, Any]],
                                                                                         list[dict[str, Any]]]:
    """Relay MESSAGES items to the LIS at ``port``; the relay, the delivered rows and the LIS-state log lines."""
    store = await _store_with(tmp_path, MESSAGES)
    try:
        with capture_logs() as logs:
            async with relaying(store, port) as relay:
                await eventually(lambda: relay.health.delivered == MESSAGES, timeout=60, what="every item delivered")
        rows = await store.outbox_rows(state="delivered", limit=MESSAGES + 1)
    finally:
        await store.close()
    assert booked() == MESSAGES
    return relay, rows, [e for e in logs if e.get("event") == "lis_state"]


def _all_at_first_try(relay: Relay, rows: list[dict[str, Any]], states: list[dict[str, Any]]) -> None:
    assert len(rows) == MESSAGES
    assert {row["attempts"] for row in rows} == {1}, "an item was rescheduled"
    assert all(row["last_error"] is None for row in rows)
    assert relay.health.retried == 0 and relay.health.dead_lettered == 0
    assert [e["state"] for e in states] == ["up"], "the LIS was shown otherwise than up"


def test_hl7apy_mllp_server_that_closes_after_each_ack_gets_every_message_at_the_first_try(tmp_path: Path) -> None:
    booked: set[str] = set()
    lock = threading.Lock()

    class Handler(AbstractHandler):  # type: ignore[misc]
        def reply(self) -> str:
            message = str(self.incoming_message)
            with lock:
                booked.add(message.split("\r", 1)[0].split("|")[9])
            return "\x0b" + _ack(message) + "\x1c\r"

    handlers = dict.fromkeys(("ORU^R01", "ORU^R01^ORU_R01"), (Handler,))
    server = MLLPServer("127.0.0.1", 0, handlers)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        relay, rows, states = run(_deliver_all(tmp_path, server.server_address[1], lambda: len(booked)), timeout=90)
    finally:
        server.shutdown()
        server.server_close()
    _all_at_first_try(relay, rows, states)
    sender = relay.senders[0]
    assert sender.connections >= MESSAGES  # one connection per message: the LIS closed each after its ACK
    assert sender.per_message and sender.resent <= 3  # taken for a connection-per-message LIS after 3 closes


def test_python_hl7_server_that_keeps_its_connection_gets_every_message_at_the_first_try(tmp_path: Path) -> None:
    async def body() -> tuple[Relay, list[dict[str, Any]], list[dict[str, Any]], set[str]]:
        booked: set[str] = set()

        async def on_client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    message = await reader.readmessage()
                    booked.add(str(message.segment("MSH")[10]))
                    writer.writemessage(message.create_ack("AA"))
                    await writer.drain()

        server = await hl7.mllp.start_hl7_server(on_client, "127.0.0.1", 0, encoding="utf-8")
        try:
            relay, rows, states = await _deliver_all(tmp_path, server.sockets[0].getsockname()[1], lambda: len(booked))
        finally:
            server.close()
        return relay, rows, states, booked

    relay, rows, states, _ = run(body(), timeout=90)
    _all_at_first_try(relay, rows, states)
    assert relay.senders[0].connections == 1


def test_a_lis_that_drops_some_connections_without_answering_costs_only_those_messages_a_resend(
        tmp_path: Path) -> None:
    """Every 5th message's connection is dropped unanswered (after the LIS read and booked it, or not): each is
    sent again at once on a new connection, booked once by control ID, and the LIS is never shown down."""

    async def body() -> tuple[Relay, list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
        seen: dict[str, int] = {}
        received = 0

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal received
            async for message, control_id in _messages(reader):
                seen[control_id] = seen.get(control_id, 0) + 1
                received += 1
                if received % 5 == 0:
                    writer.transport.abort()  # dropped without an answer
                    return
                writer.write(b"\x0b" + _ack(message).encode() + b"\x1c\r")
                await writer.drain()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        try:
            relay, rows, states = await _deliver_all(tmp_path, server.sockets[0].getsockname()[1], lambda: len(seen))
        finally:
            server.close()
        return relay, rows, states, seen

    relay, rows, states, seen = run(body(), timeout=90)
    _all_at_first_try(relay, rows, states)
    assert relay.senders[0].resent >= MESSAGES // 5 - 1
    assert sum(seen.values()) == MESSAGES + relay.senders[0].resent  # each resend reached the LIS again


def test_an_ack_naming_another_control_id_is_refused_loudly_and_nothing_is_taken_as_delivered(
        tmp_path: Path) -> None:
    async def body() -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async for message, _ in _messages(reader):
                writer.write(b"\x0b" + _ack(message, control_id="SOMETHING-ELSE").encode() + b"\x1c\r")
                await writer.drain()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        store = await _store_with(tmp_path, 3)
        try:
            with capture_logs() as logs:
                async with relaying(store, server.sockets[0].getsockname()[1]) as relay:
                    await eventually(lambda: any(e.get("event") == "lis_ack_mismatch" for e in logs),
                                     what="the mismatch logged")
                    await eventually(lambda: relay.health.state == "down", what="the LIS shown down")
                    assert "MSA-2" in relay.health.reason and "SOMETHING-ELSE" in relay.health.reason
            assert relay.health.delivered == 0
            assert await store.outbox_rows(state="delivered") == []
            mismatch = next(e for e in logs if e.get("event") == "lis_ack_mismatch")
            assert mismatch["log_level"] == "error" and mismatch["acknowledged"] == "SOMETHING-ELSE"
        finally:
            server.close()
            await store.close()

    run(body(), timeout=60)
