"""Beckman Coulter AU (framing = "au", driver beckman-au) end to end: a simulated AU over a real socket and over
a pseudo-terminal, through the daemon to the simulated LIS; every text stored before its last block's ACK."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from labbridge_simulators.au_analyzer import AuAnalyzerSim, AuText, AuTextFactory
from labbridge_simulators.pty_pair import PtyPair

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab


def stored_results(db: Path) -> list[dict[str, object]]:
    with sqlite3.connect(db) as conn:
        return [json.loads(d) for (d,) in conn.execute("SELECT data FROM results")]


def test_au_texts_are_stored_before_their_ack_and_reach_the_lis_with_qc_and_a_nakked_block_resent(
        tmp_path: Path) -> None:
    async def body() -> None:
        # No [link] table: the driver's link defaults give framing = "au" (BCC, class B).
        async with running_lab(tmp_path, drivers=["beckman-au"], extra_lis={"qc": "send-marked"}) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None and runner.cfg.link.framing == "au"
            db = Path(lab.config.store.path)
            missing_at_ack: list[str] = []

            def on_acked(text: AuText) -> None:
                # The AU was told "received": the results must already be in the store.
                there = {(r["instrument"], r["sample_id"], r["instrument_test_code"], r["value"])
                         for r in stored_results(db)}
                missing_at_ack.extend(str(i) for i in text.results - there)

            factory = AuTextFactory("an-0", sample_prefix="AU", seed=5, qc_every=3, rerun_every=4,
                                    tests_per_block=4)
            sim = AuAnalyzerSim("an-0", runner.bound, factory, texts=8, corrupt_every=3, junk=b"\r\n",
                                on_acked=on_acked)
            await asyncio.wait_for(sim.run(), 60)
            assert sim.stats.texts_acked == 8 and sim.stats.texts_given_up == 0
            assert sim.stats.naks >= 4  # every 3rd block went out with a wrong BCC first, and was resent
            assert missing_at_ack == []
            await eventually(lambda: sim.acked <= lab.lis.delivered, what="AU results at the LIS")
            assert lab.lis.delivered == sim.acked and lab.lis.duplicates == 0
            counters = runner.health.counters
            assert counters.messages_received == 8
            assert counters.checksum_errors == sim.stats.naks and counters.junk_bytes == 16
            assert (await lab.daemon.store.counts())["undecodable"] == 0
            stored = stored_results(db)
        kinds = {(r["sample_id"], r["kind"]) for r in stored}
        assert factory.qc_samples and {k for s, k in kinds if s in factory.qc_samples} == {"qc"}
        assert {k for s, k in kinds if s not in factory.qc_samples} == {"patient"}
        # The reruns (DH) of AU0002 and AU0007 are corrections of results sent first as final.
        reruns = {r["sample_id"] for r in stored if r["status"] == "correction"}
        assert reruns == {"AU0002", "AU0007"}
        assert {r["sample_id"] for r in stored if r["status"] == "final"} >= reruns

    run(body())


def test_a_text_that_cannot_be_stored_is_nakked_and_kept_once_the_store_takes_it_again(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, drivers=["beckman-au"]) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            store, health = lab.daemon.store, runner.health
            store.fail_commits = True
            factory = AuTextFactory("an-0", sample_prefix="NS", seed=4, qc_every=0, rerun_every=0,
                                    tests_per_block=2)
            sim = AuAnalyzerSim("an-0", runner.bound, factory, texts=1, retries=50, nak_delay=0.1)
            task = asyncio.create_task(sim.run())
            await eventually(lambda: sim.stats.naks >= 1, what="the AU seeing the NAK of its last block")
            assert not sim.acked and health.counters.store_failures >= 1
            assert "cannot be stored" in health.to_json()["reason"]
            store.fail_commits = False
            await asyncio.wait_for(task, 30)
            assert sim.stats.texts_acked == 1 and len(sim.acked) == 6
            await eventually(lambda: sim.acked <= lab.lis.delivered, what="delivery")
            assert (await store.counts())["messages"] == 1

    run(body())


def test_a_cut_in_the_middle_of_a_text_is_kept_incomplete_and_the_texts_before_it_reach_the_lis(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, drivers=["beckman-au"]) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            factory = AuTextFactory("an-0", sample_prefix="CUT", seed=2, qc_every=0, rerun_every=0,
                                    tests_per_block=2)
            sim = AuAnalyzerSim("an-0", runner.bound, factory, texts=2)
            await asyncio.wait_for(sim.run(), 30)
            # A third text: its first block is ACKed, then the line is cut before the last one.
            cut = factory.next()
            from labbridge.protocols.au_online import ACK, build_block

            reader, writer = await asyncio.open_connection(*runner.bound)
            writer.write(build_block(cut.blocks[0], last=False))
            assert await asyncio.wait_for(reader.readexactly(1), 10) == bytes((ACK,))
            writer.close()
            await writer.wait_closed()
            counters = runner.health.counters
            await eventually(lambda: counters.incomplete_transmissions == 1, what="the cut text kept incomplete")
            await eventually(lambda: sim.acked <= lab.lis.delivered, what="the whole texts at the LIS")
            assert lab.lis.delivered == sim.acked
            assert not {i for i in lab.lis.delivered if i[1] == cut.sample}

    run(body())


def test_au_texts_over_a_serial_line_reach_the_lis(tmp_path: Path) -> None:
    pty = PtyPair()

    async def body() -> None:
        transport = {"kind": "serial", "port": pty.device, "baudrate": 9600, "parity": "N",
                     "reopen_initial_s": 0.05, "reopen_max_s": 0.2}
        async with running_lab(tmp_path, drivers=["beckman-au"], overrides={"an-0": {"transport": transport}},
                               extra_lis={"qc": "send-marked"}) as lab:
            runner = lab.daemon.runners["an-0"]
            await eventually(lambda: runner.health.state == "up", what="serial port open")
            factory = AuTextFactory("an-0", sample_prefix="SER", seed=9, qc_every=2, tests_per_block=3)
            sim = AuAnalyzerSim("an-0", None, factory, texts=4, corrupt_every=4, opener=pty.open_master)
            await asyncio.wait_for(sim.run(), 60)
            assert sim.stats.texts_acked == 4 and sim.stats.naks >= 1
            await eventually(lambda: sim.acked <= lab.lis.delivered, what="serial AU results at the LIS")
            assert lab.lis.delivered == sim.acked

    try:
        run(body())
    finally:
        pty.close()
