"""Faults injected by the analyzer simulator against labbridge as the ASTM sender (query answers, pushed
orders), and a silent analyzer in the middle of its own message; real loopback sockets, shortened LIS1-A
timers (the same code paths as the standard's 15/30/10/20 s, only faster)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, ReceivedOrder
from labbridge_simulators.faults import ReceiverFaults

from labbridge.orders import NewOrder
from labbridge.protocols import e1381
from tests.conftest import run
from tests.integration.helpers import Lab, eventually, running_lab

# labbridge's side: 0.5 s for a reply, 1 s of silence ends a transfer, 0.3 s busy wait, 1.5 s contention wait.
FAST_LINK: dict[str, Any] = {"link": {"reply_timeout_s": 0.5, "receive_timeout_s": 1.0, "busy_wait_s": 0.3,
                                      "contention_wait_s": 1.5}, "test_map": {"GLU": "GLUC"}}
# The analyzer's side.
FAST_ANALYZER = e1381.LinkProfile(reply_timeout=0.5, receive_timeout=1.0, busy_wait=0.2,
                                  contention_wait_instrument=0.1)


async def _push_one(lab: Lab, sim: AstmAnalyzerSim, sample: str) -> int:
    await asyncio.wait_for(sim.connected.wait(), 10)
    await eventually(lambda: lab.daemon.runners["an-0"].health.peer is not None, what="connected")
    order = await lab.daemon.add_order(NewOrder(sample, ("GLUC",), instrument="an-0"), now=time.time())
    return order.id


async def _state(lab: Lab, order_id: int) -> str:
    (order,) = [o for o in await lab.daemon.orders.list_orders() if o.id == order_id]
    return order.state


def test_lost_acks_the_order_is_sent_again_after_the_reply_timeout_and_marked_sent_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra_instrument=FAST_LINK) as lab:
            faults = ReceiverFaults(ignore_frames=2)
            sim = lab.analyzer("an-0", messages=0, linger=True, profile=FAST_ANALYZER, faults=faults)
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            health = lab.daemon.runners["an-0"].health
            order_id = await _push_one(lab, sim, "LOST-1")
            # The first transfer gets no answer: labbridge's reply timer ends it; the link says why.
            await eventually(lambda: health.counters.sends_aborted >= 1, what="first transfer aborted")
            assert health.state == "degraded" and "no reply from the peer within 0.5 s" in health.reason
            assert await _state(lab, order_id) == "pending"
            await eventually(lambda: health.counters.orders_sent == 1, what="order delivered")
            assert health.state == "up" and "accepts labbridge's messages again" in health.reason
            assert faults.ignored == 2 and health.counters.sends_aborted == 2
            assert health.counters.timeouts >= 2
            assert sim.orders_received == [ReceivedOrder("LOST-1", ("GLU",), "O", "R", "")]
            assert await _state(lab, order_id) == "sent"
            stop.set()
            await asyncio.wait_for(task, 10)

    run(body())


def test_nak_storm_six_naks_abort_the_transfer_then_the_order_goes_through(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra_instrument=FAST_LINK) as lab:
            faults = ReceiverFaults(nak_frames=8)  # 6 abort the first transfer, 2 more on the second one
            sim = lab.analyzer("an-0", messages=0, linger=True, profile=FAST_ANALYZER, faults=faults)
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            health = lab.daemon.runners["an-0"].health
            order_id = await _push_one(lab, sim, "NAK-1")
            await eventually(lambda: health.counters.sends_aborted == 1, what="transfer aborted")
            assert health.state == "degraded" and "frame refused 6 times" in health.reason
            assert await _state(lab, order_id) == "pending"
            await eventually(lambda: health.counters.orders_sent == 1, what="order delivered")
            assert faults.naked == 8 and health.counters.naks_received == 8
            assert health.counters.sends_aborted == 1 and health.state == "up"
            assert sim.orders_received == [ReceivedOrder("NAK-1", ("GLU",), "O", "R", "")]
            assert await _state(lab, order_id) == "sent"
            stop.set()
            await asyncio.wait_for(task, 10)

    run(body())


def test_contention_the_analyzer_wins_labbridge_waits_its_contention_time_then_delivers(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra_instrument=FAST_LINK) as lab:
            sim = lab.analyzer("an-0", messages=0, linger=True, profile=FAST_ANALYZER, contend=1)
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            health = lab.daemon.runners["an-0"].health
            started = time.monotonic()
            order_id = await _push_one(lab, sim, "CONT-1")
            # The analyzer's result message goes first, and reaches the LIS.
            await eventually(lambda: sim.stats.messages_acked == 1, what="the analyzer's message")
            assert health.counters.contentions == 1 and sim.stats.contentions == 1
            assert sim.stats.contentions_forced == 1
            assert health.counters.messages_received == 1 and health.counters.orders_sent == 0
            await eventually(lambda: health.counters.orders_sent == 1, what="order delivered after the wait")
            assert time.monotonic() - started >= 1.5  # labbridge's contention wait
            assert sim.orders_received == [ReceivedOrder("CONT-1", ("GLU",), "O", "R", "")]
            assert await _state(lab, order_id) == "sent"
            assert health.counters.sends_aborted == 0 and health.state == "up"
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="results at the LIS")
            stop.set()
            await asyncio.wait_for(task, 10)

    run(body())


def test_analyzer_silent_mid_message_is_an_incomplete_transmission_and_the_link_recovers(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra_instrument=FAST_LINK) as lab:
            # The 2nd message stops halfway for 1.6 s; labbridge's receive timer (1 s) ends that transfer.
            sim = lab.analyzer("an-0", messages=3, profile=FAST_ANALYZER, stall_every=2, stall_for=1.6, linger=True)
            health = lab.daemon.runners["an-0"].health
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await eventually(lambda: health.counters.incomplete_transmissions == 1, what="incomplete transfer")
            assert health.state == "up" and "last transfer was incomplete" in health.reason
            assert "no frame from the sender within 1 s" in health.reason
            await eventually(lambda: health.counters.messages_received == 3, what="all three messages")
            assert health.state == "up" and health.reason == f"analyzer connected from {health.peer}"
            stop.set()
            await asyncio.wait_for(task, 30)
            assert sim.stats.stalls_injected == 1 and sim.stats.messages_acked == 3
            assert health.counters.messages_received == 3 and health.counters.timeouts >= 1
            assert health.counters.junk_bytes > 0  # the frame sent after the stall found a neutral link
            counts = await lab.daemon.store.counts()
            assert counts["incomplete"] == 1 and counts["messages"] == 3  # never a result
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="results at the LIS")
            assert len(sim.acked) == 15 and lab.lis.duplicates == 0

    run(body())
