"""Limits over real sockets: over a configured limit the sender gets the protocol's refusal (E1381: a NAK
before the final ACK; HL7: AR with the reason), what came is kept for inspection, counted (over_limit) and
shown; a link over its byte rate is slowed down by flow control, counted (throttled), and loses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from labbridge_simulators.hl7_analyzer import Hl7MessageFactory

from labbridge.protocols import e1381, mllp
from tests.conftest import run
from tests.integration.helpers import Lab, eventually, running_lab


async def stored(lab: Lab, what: str) -> dict[str, Any]:
    """The store's counts once it holds something of ``what``."""
    for _ in range(400):
        counts = await lab.daemon.store.counts()
        if counts[what]:
            return counts
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing in the store's {what}")


async def reply(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readexactly(1), 10)


def test_an_astm_message_over_its_record_limit_is_naked_before_the_final_ack_and_kept(tmp_path: Path) -> None:
    async def body() -> None:
        overrides = {"an-0": {"link": {"max_records_per_message": 6}}}
        async with running_lab(tmp_path, instruments=1, overrides=overrides) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            records = [b"H|\\^&|||SIM^1", b"P|1", b"O|1|S1||^^^GLU"]
            records += [b"R|%d|^^^T%d|%d|mg/dL||N||F" % (n, n, n) for n in range(1, 7)] + [b"L|1|N"]
            reader, writer = await asyncio.open_connection(*runner.bound)
            writer.write(bytes([e1381.ENQ]))
            assert await reply(reader) == bytes([e1381.ACK])
            answers = []
            for frame in e1381.build_frames(records):
                writer.write(frame)
                answers.append(await reply(reader))
            writer.write(bytes([e1381.EOT]))
            await writer.drain()
            # Records 1..6 are acknowledged; the 7th and every frame after it in the transfer, the last one
            # included, are refused: the message was never acknowledged as received.
            assert answers[:6] == [bytes([e1381.ACK])] * 6
            assert set(answers[6:]) == {bytes([e1381.NAK])}
            writer.close()
            health = runner.health
            await eventually(lambda: health.counters.over_limit == 1, what="the refusal counted")
            counts = await stored(lab, "incomplete")  # its commit follows the count
            assert counts["results"] == 0 and counts["incomplete"] == 1  # kept for inspection, never a result
            assert any("more than 6 records" in n for n in health.to_json()["notices"])

    run(body())


def test_an_hl7_message_over_its_segment_limit_is_answered_ar_with_the_reason(tmp_path: Path) -> None:
    async def body() -> None:
        overrides = {"an-0": {"link": {"framing": "mllp", "encoding": "utf-8", "max_records_per_message": 8}}}
        async with running_lab(tmp_path, instruments=1, drivers=["hl7-generic"], overrides=overrides) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            message = Hl7MessageFactory("an-0", dialect="law", sample_prefix="S", panel_size=10, seed=1).next()
            reader, writer = await asyncio.open_connection(*runner.bound)
            writer.write(mllp.frame(message.payload))
            await writer.drain()
            decoder = mllp.MllpDecoder()
            events: list[mllp.MllpEvent] = []
            while not events:
                events = decoder.receive_data(await asyncio.wait_for(reader.read(4096), 10))
            assert isinstance(events[0], mllp.MllpMessage)
            ack = events[0].payload.decode()
            # A refusal in the sender's acknowledgement mode (this one asks for enhanced mode: CE), with the reason.
            msa = next(line for line in ack.split("\r") if line.startswith("MSA|")).split("|")
            assert msa[1] in ("AR", "AE", "CR", "CE") and "more than 8 segments" in ack
            writer.close()
            await eventually(lambda: runner.health.counters.over_limit == 1, what="the refusal counted")
            counts = await stored(lab, "messages")  # its commit follows the count
            assert counts["results"] == 0 and counts["messages"] == 1  # the refused message is kept

    run(body())


def test_a_link_over_its_byte_rate_is_slowed_down_and_loses_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        overrides = {"an-0": {"link": {"max_bytes_per_s": 1024}}}
        async with running_lab(tmp_path, instruments=1, overrides=overrides) as lab:
            sim = lab.analyzer("an-0", messages=6, tests=10)
            await asyncio.wait_for(sim.run(asyncio.Event()), 60)
            assert len(sim.acked) == 6 * 10 and sim.stats.aborted_transfers == 0
            counters = lab.daemon.runners["an-0"].health.counters
            assert counters.throttled >= 1 and counters.frames_rejected == 0
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="every result relayed")

    run(body())
