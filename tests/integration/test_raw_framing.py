"""framing = "raw" end to end: bare records over TCP reach the LIS; an unfinished message never does."""

from __future__ import annotations

import asyncio
from pathlib import Path

from labbridge_simulators.astm_analyzer import MessageFactory

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab


def test_raw_records_over_tcp_reach_the_lis_and_a_cut_message_is_kept_incomplete(tmp_path: Path) -> None:
    async def body() -> None:
        overrides = {"an-0": {"link": {"framing": "raw", "record_terminator": "crlf"}}}
        async with running_lab(tmp_path, instruments=1, overrides=overrides) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            factory = MessageFactory("an-0", sample_prefix="RAW-", panel_size=4, seed=3)
            sent = [factory.next() for _ in range(3)]
            reader, writer = await asyncio.open_connection(*runner.bound)
            stream = b"".join(r + b"\r\n" for m in sent for r in m.records)
            for i in range(0, len(stream), 37):  # split writes that do not align with records
                writer.write(stream[i:i + 37])
                await writer.drain()
            cut = factory.next()
            writer.write(b"".join(r + b"\r\n" for r in cut.records[:-2]))  # no final R, no L
            await writer.drain()
            expected = {identity for m in sent for identity in m.results}
            await eventually(lambda: expected <= lab.lis.delivered, what="raw results at the LIS")
            writer.close()
            await writer.wait_closed()
            counters = runner.health.counters
            await eventually(lambda: counters.incomplete_transmissions == 1, what="incomplete transmission")
            assert await reader.read() == b""  # raw framing never answers
            assert lab.lis.delivered == expected
            assert counters.messages_received == 3
            # The counter moves before the incomplete transmission is written: wait for the store too.
            deadline = asyncio.get_running_loop().time() + 10
            while (await lab.daemon.store.counts())["incomplete"] != 1:
                assert asyncio.get_running_loop().time() < deadline, "incomplete transmission not stored"
                await asyncio.sleep(0.05)

    run(body())
