"""An ASTM peer written by others (PyPI astm-2025, a python-astm fork) sends to labbridge over TCP."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab

ROOT = Path(__file__).resolve().parents[2]


def test_astm2025_client_results_reach_the_lis(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.peers.astm2025_send", runner.bound[0], str(runner.bound[1]),
                "PEER-0001", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()[-2000:]
            assert out.decode().strip() == "sent", err.decode()[-2000:]
            expected = {("an-0", "PEER-0001", "GLU", "5.6"), ("an-0", "PEER-0001", "NA", "141")}
            await eventually(lambda: expected <= lab.lis.delivered, what="astm-2025 results at the LIS")
            counters = lab.daemon.runners["an-0"].health.counters
            assert counters.frames_rejected == 0 and counters.decode_errors == 0 and counters.messages_received == 1

    run(body())
