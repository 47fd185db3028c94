"""Both roles of the ASTM link, simulated: the analyzer simulator delivers to the simulated host under
each receiver-side fault, and the host delivers to the analyzer under the analyzer's; loopback TCP,
shortened LIS1-A timers, no labbridge daemon in the middle."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory, ReceivedOrder
from labbridge_simulators.astm_host import AstmHostSim
from labbridge_simulators.faults import ReceiverFaults

from labbridge.protocols import e1381
from labbridge.protocols.e1394 import encode_record
from tests.conftest import run
from tests.integration.helpers import eventually

FAST = e1381.LinkProfile(reply_timeout=0.4, receive_timeout=1.0, busy_wait=0.2, contention_wait_instrument=0.1,
                         contention_wait_host=0.5, interrupt_wait=0.3)


def _analyzer(host: AstmHostSim, messages: int, profile: e1381.LinkProfile = FAST, **kwargs: Any) -> AstmAnalyzerSim:
    return AstmAnalyzerSim("an-x", ("127.0.0.1", host.port),
                           MessageFactory("an-x", sample_prefix="X-", panel_size=3, seed=7),
                           interval=(0.0, 0.01), max_messages=messages, profile=profile, **kwargs)


def _with_host(faults: ReceiverFaults, check: Callable[[AstmHostSim], Awaitable[None]]) -> None:
    async def body() -> None:
        host = AstmHostSim(profile=FAST, faults=faults)
        await host.start()
        try:
            await check(host)
        finally:
            await host.stop()

    run(body())


def _delivered_once(host: AstmHostSim, sim: AstmAnalyzerSim, messages: int) -> None:
    assert sim.stats.messages_acked == messages and host.stats.messages == messages
    assert sorted(host.results) == sorted(sim.acked) and len(set(host.results)) == len(host.results)


def test_nak_storm_six_naks_abort_the_analyzers_transfer_then_it_delivers() -> None:
    faults = ReceiverFaults(nak_frames=8)

    async def check(host: AstmHostSim) -> None:
        sim = _analyzer(host, 2)
        await asyncio.wait_for(sim.run(asyncio.Event()), 30)
        assert faults.naked == 8 and host.stats.naks_sent == 8 and sim.stats.naks_received == 8
        assert sim.stats.aborted_transfers == 1  # the 6th NAK of one frame
        _delivered_once(host, sim, 2)

    _with_host(faults, check)


def test_lost_acks_the_analyzer_times_out_and_sends_again() -> None:
    faults = ReceiverFaults(ignore_frames=2)

    async def check(host: AstmHostSim) -> None:
        sim = _analyzer(host, 2)
        await asyncio.wait_for(sim.run(asyncio.Event()), 30)
        assert faults.ignored == 2 and sim.stats.aborted_transfers == 2  # its 0.4 s reply timer, twice
        assert host.incomplete == []  # an unanswered first frame left nothing behind
        _delivered_once(host, sim, 2)

    _with_host(faults, check)


def test_lost_ack_mid_message_leaves_an_incomplete_transmission_never_a_result() -> None:
    faults = ReceiverFaults(after_frames=2, ignore_frames=1)  # H and P pass, the O frame gets no answer

    async def check(host: AstmHostSim) -> None:
        sim = _analyzer(host, 1)
        await asyncio.wait_for(sim.run(asyncio.Event()), 30)
        assert faults.ignored == 1 and sim.stats.aborted_transfers == 1
        assert host.incomplete == ["EOT before the message terminator (L) record"]
        _delivered_once(host, sim, 1)

    _with_host(faults, check)


def test_receiver_interrupt_ignored_by_default_honoured_when_configured() -> None:
    faults = ReceiverFaults(interrupt_frames=1)

    async def carry_on(host: AstmHostSim) -> None:
        sim = _analyzer(host, 1)
        await asyncio.wait_for(sim.run(asyncio.Event()), 30)
        assert faults.interrupted == 1 and sim.stats.aborted_transfers == 0
        _delivered_once(host, sim, 1)

    _with_host(faults, carry_on)

    honouring = ReceiverFaults(interrupt_frames=1)

    async def stop(host: AstmHostSim) -> None:
        sim = _analyzer(host, 1, profile=e1381.LinkProfile(**{**_fields(FAST), "honor_interrupt": True}))
        await asyncio.wait_for(sim.run(asyncio.Event()), 30)
        assert honouring.interrupted == 1 and sim.stats.aborted_transfers == 1
        # The analyzer stopped after the first frame: the host keeps that as incomplete, then gets it whole.
        assert host.incomplete == ["EOT before the message terminator (L) record"]
        _delivered_once(host, sim, 1)

    _with_host(honouring, stop)


def _fields(profile: e1381.LinkProfile) -> dict[str, object]:
    return {name: getattr(profile, name) for name in profile.__dataclass_fields__}


def test_the_host_pushes_an_order_through_the_analyzers_nak_storm_and_lost_acks() -> None:
    async def check(host: AstmHostSim) -> None:
        order = (b"H|\\^&|||SimLIS", b"P|1|P-7",
                 encode_record("O", ["1", "ORD-1", "", [["", "", "", "GLU"]], "S"] + [""] * 19 + ["O"]), b"L|1|N")
        host.send(order)
        analyzer_faults = ReceiverFaults(nak_frames=7, ignore_frames=1)
        sim = _analyzer(host, 0, linger=True, faults=analyzer_faults)
        stop = asyncio.Event()
        task = asyncio.create_task(sim.run(stop))
        await eventually(lambda: host.stats.messages_sent == 1, what="order delivered")
        # The host's first frame went unanswered (its reply timer), then 6 NAKs aborted a transfer, then 1 more.
        assert host.stats.sends_aborted == 2 and analyzer_faults.ignored == 1 and analyzer_faults.naked == 7
        assert sim.orders_received == [ReceivedOrder("ORD-1", ("GLU",), "O", "S", "P-7")]
        assert host.outbox == []
        stop.set()
        await asyncio.wait_for(task, 10)

    _with_host(ReceiverFaults(), check)


def test_host_simulator_command_line_starts(tmp_path: Path) -> None:
    async def body() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "labbridge.cli", "simulate", "astm-host", "--nak-frames", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line.startswith("simulated ASTM host listening on 127.0.0.1:")
            port = int(line.rsplit(":", 1)[1])
            sim = AstmAnalyzerSim("an-y", ("127.0.0.1", port), MessageFactory("an-y", sample_prefix="Y-",
                                                                              panel_size=2, seed=3),
                                  interval=(0.0, 0.01), max_messages=1, profile=FAST)
            await asyncio.wait_for(sim.run(asyncio.Event()), 30)
            assert sim.stats.naks_received == 1 and sim.stats.messages_acked == 1
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line.startswith("1 messages, 2 results, 0 incomplete")
        finally:
            proc.terminate()
            await proc.wait()

    run(body())
