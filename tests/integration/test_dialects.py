"""Analyzer dialects end to end: a scripted MAGLUMI-style analyzer (no FN, no checksum, one frame) with slow
split writes, configured by flags, reaches the LIS."""

from __future__ import annotations

import asyncio
from pathlib import Path

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, ScriptedMessages

from labbridge.protocols.e1381 import LinkProfile
from tests.conftest import run
from tests.integration.helpers import eventually, running_lab

SCRIPT = """H|\\^&|||Maglumi 800^1.0|||||||P|LIS2-A2|20240501101500
P|1||PAT-1||DOE^JANE
O|1|MAG-0001||^^^TSH\\^^^FT4|R
R|1|^^^TSH|1.23|uIU/mL||N||F
R|2|^^^FT4|14.2|pmol/L||N||F
L|1|N

H|\\^&|||Maglumi 800^1.0|||||||P|LIS2-A2|20240501101600
P|1||PAT-2
O|1|MAG-0002||^^^TSH|R
R|1|^^^TSH|0.02|uIU/mL||L||F
L|1|N
"""


def test_scripted_maglumi_dialect_with_split_slow_writes(tmp_path: Path) -> None:
    async def body() -> None:
        link = {"frame_numbers": False, "checksums": False, "record_terminator": "crlf"}
        async with running_lab(tmp_path, instruments=1, overrides={"an-0": {"link": link}}) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            script = ScriptedMessages("an-0", SCRIPT)
            sim = AstmAnalyzerSim("an-0", runner.bound, script, interval=(0.0, 0.01), max_messages=2,
                                  profile=LinkProfile(frame_numbers=False, checksums=False, record_terminator=b"\r\n",
                                                      one_frame_per_message=True),
                                  write_chunk=7, write_delay=0.001)
            await asyncio.wait_for(sim.run(asyncio.Event()), 30)
            expected = {("an-0", "MAG-0001", "TSH", "1.23"), ("an-0", "MAG-0001", "FT4", "14.2"),
                        ("an-0", "MAG-0002", "TSH", "0.02")}
            assert set(sim.acked) == expected
            await eventually(lambda: expected <= lab.lis.delivered, what="dialect results at the LIS")
            counters = runner.health.counters
            assert counters.frames_rejected == 0 and counters.junk_bytes == 0 and counters.decode_errors == 0

    run(body())
