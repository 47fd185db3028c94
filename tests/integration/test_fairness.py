"""One link cannot starve the others: a peer flooding one ASTM port with ENQs or junk, as fast as it can from its
own process, leaves every other analyzer's transfers acknowledged within its sender timeout (no timeout, no NAK,
every result stored and relayed) and the HTTP API answering."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REPO, run
from tests.integration.helpers import eventually, running_lab


@pytest.mark.parametrize("kind", ["enq", "junk", "mixed"])
def test_a_flood_on_one_port_leaves_the_other_analyzer_and_the_api_working(tmp_path: Path, kind: str) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=2, http=True) as lab:
            flooded = lab.daemon.runners["an-1"]
            assert flooded.bound is not None
            flood = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.peers.flood", flooded.bound[0], str(flooded.bound[1]), kind,
                cwd=REPO, stdout=asyncio.subprocess.PIPE)
            try:
                assert flood.stdout is not None
                assert await flood.stdout.readline() == b"flooding\n"
                await eventually(lambda: flooded.health.counters.bytes_received > 1_000_000, what="the flood")
                clean = lab.analyzer("an-0", messages=12)
                stop = asyncio.Event()
                task = asyncio.create_task(clean.run(stop))
                http = lab.daemon.http_address
                assert http is not None
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client:
                    while not task.done():
                        async with client.get(f"http://{http[0]}:{http[1]}/api/instruments") as resp:
                            assert resp.status == 200
                            assert {i["id"] for i in await resp.json()} == {"an-0", "an-1"}
                        await asyncio.sleep(0.2)
                await task
                # Every transmission went through the first time: the sender's 15 s reply timer never ran out.
                assert clean.stats.aborted_transfers == 0 and clean.stats.naks_received == 0
                assert len(clean.acked) == 12 * 5
                assert flood.returncode is None, "the flood was still running throughout"
                await eventually(lambda: set(clean.acked) <= lab.lis.delivered, what="the clean link's results")
                good = lab.daemon.runners["an-0"].health.counters
                assert good.junk_bytes == 0 and good.frames_rejected == 0 and good.timeouts == 0
            finally:
                if flood.returncode is None:
                    flood.kill()
                await flood.wait()

    run(body(), timeout=180)
