"""Serial (RS-232 through pyserial) end to end over a pseudo-terminal pair, and what a technician sees."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory
from labbridge_simulators.pty_pair import PtyPair

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab

FAST_REOPEN = {"reopen_initial_s": 0.05, "reopen_max_s": 0.2}


def test_e1381_frames_over_a_pty_reach_the_lis(tmp_path: Path) -> None:
    pty = PtyPair()

    async def body() -> None:
        transport = {"kind": "serial", "port": pty.device, "baudrate": 19200, "parity": "N", **FAST_REOPEN}
        async with running_lab(tmp_path, instruments=1, overrides={"an-0": {"transport": transport}}) as lab:
            runner = lab.daemon.runners["an-0"]
            await eventually(lambda: runner.health.state == "up", what="serial port open")
            assert runner.health.transport == f"serial {pty.device} 19200 8N1"
            sim = AstmAnalyzerSim("an-0", ("127.0.0.1", 0),
                                  MessageFactory("an-0", sample_prefix="SER-", panel_size=5, seed=2),
                                  interval=(0.0, 0.01), max_messages=4, corrupt_every=4, opener=pty.open_master)
            await asyncio.wait_for(sim.run(asyncio.Event()), 30)
            assert len(sim.acked) == 20 and sim.stats.frames_corrupted > 0
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="serial results at the LIS")
            assert lab.lis.duplicates == 0
            assert runner.health.counters.checksum_errors == sim.stats.frames_corrupted

    try:
        run(body())
    finally:
        pty.close()


def test_missing_device_is_failed_with_an_actionable_reason_then_recovers(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB-missing"

    async def body() -> None:
        transport = {"kind": "serial", "port": str(missing), **FAST_REOPEN}
        async with running_lab(tmp_path, instruments=1, overrides={"an-0": {"transport": transport}}) as lab:
            runner = lab.daemon.runners["an-0"]
            await eventually(lambda: runner.health.state == "failed", what="failed state")
            assert "no serial device" in runner.health.reason and "plugged in" in runner.health.reason
            # The adapter is plugged in: a pseudo-terminal appears under that name, and the port opens.
            pty = PtyPair()
            try:
                os.symlink(pty.device, missing)
                await eventually(lambda: runner.health.state == "up", what="reopened")
                # The device goes away (the other end closes): down, then reopened when it is back.
                pty.close()
                await eventually(lambda: runner.health.state != "up", what="device gone")
                assert runner.health.state in ("down", "failed", "connecting")
            finally:
                pty.close()

    run(body())
