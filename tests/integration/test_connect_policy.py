"""What may connect, over real loopback sockets: allow_peers on an instrument's listener and on the LIS order
listener (127.0.0.2 is the allowed peer, 127.0.0.1 the stranger), an idle connection that would lock the
analyzer out is replaced, idle_timeout_s closes silent connections, max_connections bounds a listener. Every
refusal is counted (reaching /metrics as labbridge_<counter>_total), shown on the health and logged with the
peer's address."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from labbridge_simulators.lis import order_message
from prometheus_client.parser import text_string_to_metric_families

from labbridge.protocols import mllp
from tests.conftest import run
from tests.integration.helpers import eventually, free_port, running_lab

ALLOWED = "127.0.0.2"


async def closed_without_answer(reader: asyncio.StreamReader) -> bool:
    """The daemon closed the connection and sent nothing at all."""
    return await asyncio.wait_for(reader.read(), 10) == b""


async def http_json(address: tuple[str, int], path: str) -> Any:
    async with aiohttp.ClientSession() as client, client.get(f"http://{address[0]}:{address[1]}{path}") as resp:
        assert resp.status == 200
        return await resp.json()


async def metric(address: tuple[str, int], name: str, instrument: str) -> float:
    async with aiohttp.ClientSession() as client, client.get(f"http://{address[0]}:{address[1]}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("instrument") == instrument:
                return sample.value
    raise AssertionError(f"{name} for {instrument} not in /metrics")


def test_an_instrument_takes_results_only_from_its_allowed_peers(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        overrides = {"an-0": {"transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0,
                                            "allow_peers": [ALLOWED, "10.0.0.0/8"]}}}
        async with running_lab(tmp_path, instruments=1, http=True, overrides=overrides) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            # A stranger sends a whole transfer: closed at once, never acknowledged, nothing stored.
            reader, writer = await asyncio.open_connection(*runner.bound)
            writer.write(b"\x05\x021H|\\^&|||stranger\r\x03")
            await writer.drain()
            assert await closed_without_answer(reader)
            writer.close()
            health = runner.health
            assert health.counters.peers_refused == 1 and health.counters.connections == 0
            # The analyzer at its allowed address gets every message in.
            sim = lab.analyzer("an-0", messages=3)
            sim.opener = lambda: asyncio.open_connection(*runner.bound, local_addr=(ALLOWED, 0))  # type: ignore[misc]
            await asyncio.wait_for(sim.run(asyncio.Event()), 30)
            assert len(sim.acked) == 3 * 5 and health.counters.connections == 1
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="the allowed analyzer's results")
            http = lab.daemon.http_address
            assert http is not None
            [shown] = await http_json(http, "/api/instruments")
            assert shown["counters"]["peers_refused"] == 1
            assert any("127.0.0.1" in n and "allow_peers" in n for n in shown["notices"]), shown["notices"]
            assert await metric(http, "labbridge_peers_refused_total", "an-0") == 1
            counts = await lab.daemon.store.counts()
            assert counts["messages"] == 3  # the stranger's transfer stored nothing
        logged = capsys.readouterr().out
        assert "connection_refused_peer" in logged and "127.0.0.1:" in logged

    run(body())


def test_the_lis_order_listener_takes_orders_only_from_the_lis(tmp_path: Path) -> None:
    async def body() -> None:
        extra = {"lis_orders": [{"id": "his", "host": "127.0.0.1", "port": 0, "instrument": "an-0",
                                 "allow_peers": [ALLOWED], "max_connections": 1}]}
        async with running_lab(tmp_path, instruments=1, http=True, extra=extra) as lab:
            [listener] = lab.daemon.lis_orders
            assert listener.bound is not None
            block = mllp.frame(order_message("OML^O21", sample="O1", tests=["GLU"], control_id="C1").encode())
            reader, writer = await asyncio.open_connection(*listener.bound)
            writer.write(block)
            await writer.drain()
            assert await closed_without_answer(reader)
            writer.close()
            assert await lab.daemon.orders.list_orders() == []
            assert listener.health.counters.peers_refused == 1
            # The LIS itself: AA, the order stored. A second connection at once is over max_connections.
            reader, writer = await asyncio.open_connection(*listener.bound, local_addr=(ALLOWED, 0))
            extra_reader, extra_writer = await asyncio.open_connection(*listener.bound, local_addr=(ALLOWED, 0))
            assert await closed_without_answer(extra_reader)
            extra_writer.close()
            writer.write(block)
            await writer.drain()
            answer = mllp.MllpDecoder()
            events: list[Any] = []
            while not events:
                events = answer.receive_data(await asyncio.wait_for(reader.read(4096), 10))
            assert b"MSA|AA|C1" in events[0].payload
            writer.close()
            [order] = await lab.daemon.orders.list_orders()
            assert order.sample_id == "O1"
            assert listener.health.counters.over_limit == 1
            http = lab.daemon.http_address
            assert http is not None
            shown = (await http_json(http, "/api/outbox"))["lis_orders"]
            assert shown[0]["counters"]["peers_refused"] == 1 and shown[0]["notices"]
            assert await metric(http, "labbridge_peers_refused_total", "lis-orders:his") == 1

    run(body())


def test_an_idle_connection_never_locks_the_analyzer_out(tmp_path: Path) -> None:
    """Under second_connection = "reject", a connection that has sent nothing for longer than the link's receive
    timeout is not shown up, and the analyzer's own connection replaces it (counted, shown, logged)."""
    async def body() -> None:
        overrides = {"an-0": {"link": {"receive_timeout_s": 0.5}}}
        async with running_lab(tmp_path, instruments=1, overrides=overrides) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            squat_reader, squat_writer = await asyncio.open_connection(*runner.bound)
            await eventually(lambda: runner.health.counters.connections == 1, what="the squatter connected")
            await eventually(lambda: runner.health.effective_state()[0] == "idle", what="the squatter not shown up")
            assert "has sent nothing" in runner.health.effective_state()[1]
            sim = lab.analyzer("an-0", messages=2)
            await asyncio.wait_for(sim.run(asyncio.Event()), 30)
            assert len(sim.acked) == 2 * 5
            assert await closed_without_answer(squat_reader)
            squat_writer.close()
            counters = runner.health.counters
            assert counters.connections_replaced == 1 and counters.connections_refused == 0
            assert any("replaced" in n for n in runner.health.notices(time.time()))

    run(body())


def test_idle_timeout_closes_a_silent_connection(tmp_path: Path) -> None:
    async def body() -> None:
        overrides = {"an-0": {"transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0,
                                            "idle_timeout_s": 0.3}}}
        async with running_lab(tmp_path, instruments=1, overrides=overrides) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            reader, writer = await asyncio.open_connection(*runner.bound)
            assert await closed_without_answer(reader)
            writer.close()
            assert runner.health.counters.idle_closed == 1
            await eventually(lambda: runner.health.effective_state()[0] != "up", what="not shown up once closed")

    run(body())


def test_a_shared_listener_takes_connections_only_from_its_allowed_peers(tmp_path: Path) -> None:
    async def body() -> None:
        port = free_port()
        transport = {"kind": "tcp-server", "host": "127.0.0.1", "port": port, "allow_peers": [ALLOWED]}
        overrides = {"an-0": {"transport": transport, "sender": ["ChemA"]},
                     "an-1": {"transport": transport, "listener_default": True}}
        async with running_lab(tmp_path, instruments=2, overrides=overrides) as lab:
            first = lab.daemon.runners["an-0"]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x05")
            await writer.drain()
            assert await closed_without_answer(reader)
            writer.close()
            assert first.health.counters.peers_refused == 1
            assert any("shared listener" in n for n in first.health.notices(time.time()))
            sim = lab.analyzer("an-0", messages=2)
            sim.opener = lambda: asyncio.open_connection("127.0.0.1", port, local_addr=(ALLOWED, 0))  # type: ignore[misc]
            await asyncio.wait_for(sim.run(asyncio.Event()), 30)
            assert len(sim.acked) == 2 * 5
            assert (await lab.daemon.store.counts())["messages"] == 2

    run(body())
