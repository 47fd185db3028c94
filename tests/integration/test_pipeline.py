"""Analyzer -> labbridge -> LIS over real loopback sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab


def test_results_reach_the_lis_once_with_a_corrupting_analyzer_beside_a_clean_one(tmp_path: Path,
                                                                                   event_loop_name: str) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=2) as lab:
            clean = lab.analyzer("an-0", messages=6)
            noisy = lab.analyzer("an-1", messages=6, corrupt_every=3)
            stop = asyncio.Event()
            await asyncio.gather(clean.run(stop), noisy.run(stop))
            acked = set(clean.acked) | set(noisy.acked)
            assert len(acked) == 12 * 5
            await eventually(lambda: acked <= lab.lis.delivered, what="delivery to the LIS")
            assert lab.lis.duplicates == 0
            assert lab.lis.delivered == acked  # nothing that was not ACKed arrived either
            noisy_health = lab.daemon.runners["an-1"].health.counters
            assert noisy.stats.frames_corrupted > 0
            assert noisy_health.checksum_errors == noisy.stats.frames_corrupted
            assert noisy.stats.naks_received == noisy.stats.frames_corrupted
            assert lab.daemon.runners["an-0"].health.counters.frames_rejected == 0
            # The LIS books a message before its AA reaches the relay: wait for the relay to record it.
            delivered: list[int] = []

            async def poll() -> None:
                counts = await lab.daemon.store.counts()
                assert counts["results"] == 60
                delivered.append(counts["outbox"]["lis"].get("delivered", 0))

            for _ in range(100):
                await poll()
                if delivered[-1] == 12:
                    break
                await asyncio.sleep(0.05)
            assert delivered[-1] == 12

    run(body(), loop=event_loop_name)


def test_lis_outage_results_wait_in_the_store_and_flow_when_it_returns(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            await lab.lis.go_down()
            sim = lab.analyzer("an-0", messages=4)
            await sim.run(asyncio.Event())
            assert len(sim.acked) == 20  # the analyzer is acknowledged although the LIS is down
            await eventually(lambda: lab.daemon.relays[0].health.state == "down", what="LIS marked down")
            counts = await lab.daemon.store.counts()
            assert counts["outbox"]["lis"]["pending"] == 4 and not lab.lis.delivered
            await asyncio.sleep(0.5)  # a few failed attempts
            await lab.lis.come_back()
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="delivery after the outage")
            assert lab.lis.duplicates == 0
            assert lab.daemon.relays[0].health.state == "up"

    run(body())


def test_store_failure_means_no_ack_and_the_retransmission_is_kept(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            store = lab.daemon.store
            health = lab.daemon.runners["an-0"].health
            store.fail_commits = True
            sim = lab.analyzer("an-0", messages=1)
            task = asyncio.create_task(sim.run(asyncio.Event()))
            await eventually(lambda: health.counters.store_failures >= 1, what="a failed commit")
            # The NAK goes out after the failed commit: wait until the analyzer has read it.
            await eventually(lambda: sim.stats.naks_received >= 1, what="the analyzer seeing the NAK")
            assert sim.acked == []
            assert health.to_json()["state"] == "degraded"
            assert "cannot be stored" in health.to_json()["reason"]
            store.fail_commits = False
            await asyncio.wait_for(task, 30)
            assert len(sim.acked) == 5
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="delivery")
            assert (await store.counts())["messages"] == 1

    run(body())


def test_lis_answering_ae_or_ar_dead_letters_with_its_reason(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            for n, code in enumerate(("AE", "AR"), start=1):
                lab.lis.mode = code  # type: ignore[assignment]
                lab.lis.error_text = f"unknown test code GLU ({code})"
                sim = lab.analyzer("an-0", messages=1)
                sim.factory.counter = 10 * n  # new samples each time
                await sim.run(asyncio.Event())
                await eventually(lambda n=n: lab.daemon.relays[0].health.dead_lettered == n, what="dead letter")
            dead = await lab.daemon.store.outbox_rows(state="dead")
            assert {d["last_error"] for d in dead} == {"LIS answered AE: unknown test code GLU (AE)",
                                                       "LIS answered AR: unknown test code GLU (AR)"}
            assert lab.daemon.relays[0].health.retried == 0

    run(body())


def test_lis_answering_ar_is_retried_when_the_site_says_so(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra_lis={"dead_letter_codes": ["AE", "CE"]}) as lab:
            lab.lis.mode = "AR"
            sim2 = lab.analyzer("an-0", messages=1)
            sim2.factory.counter = 100  # new samples
            await sim2.run(asyncio.Event())
            await eventually(lambda: lab.daemon.relays[0].health.retried >= 2, what="AR retried")
            lab.lis.mode = "AA"
            await eventually(lambda: set(sim2.acked) <= lab.lis.delivered, what="delivery after AR")

    run(body())


def test_garbage_and_undecodable_messages_on_one_link_do_not_disturb_another(tmp_path: Path) -> None:
    from labbridge.protocols.e1381 import build_frames

    async def body() -> None:
        async with running_lab(tmp_path, instruments=2) as lab:
            bound = lab.daemon.runners["an-1"].bound
            assert bound is not None
            reader, writer = await asyncio.open_connection(*bound)
            writer.write(b"\x00\xff garbage \x02 no frame end \r\n" * 50)
            # A well-framed message the driver cannot understand (a result without an order).
            writer.write(b"\x05")
            await writer.drain()
            assert await reader.readexactly(1) == b"\x06"
            for frame in build_frames([b"H|\\^&", b"P|1", b"R|1|^^^GLU|1", b"L|1|N"]):
                writer.write(frame)
                await writer.drain()
                assert await reader.readexactly(1) == b"\x06"  # stored raw, so acknowledged
            writer.write(b"\x04")
            sim = lab.analyzer("an-0", messages=3)
            await sim.run(asyncio.Event())
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="the clean link's delivery")
            bad = lab.daemon.runners["an-1"].health.counters
            assert bad.junk_bytes > 0 and bad.decode_errors == 1
            counts = await lab.daemon.store.counts()
            assert counts["undecodable"] == 1
            writer.close()

    run(body())


def test_no_patient_data_in_log_events(tmp_path: Path) -> None:
    async def body() -> list[dict[str, object]]:
        with structlog.testing.capture_logs() as logs:
            async with running_lab(tmp_path, instruments=1) as lab:
                sim = lab.analyzer("an-0", messages=3)
                await sim.run(asyncio.Event())
                await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="delivery")
                identifiers = {sample for _, sample, _, _ in sim.acked}
        text = repr(logs)
        assert logs, "expected log events"
        for sample in identifiers:
            assert sample not in text
        for name in ("DUPONT", "MARTIN", "LAMBERT", "DUBOIS", "PEETERS", "JANSSENS", "PAT"):
            assert name not in text
        return logs

    logs = run(body())
    assert any(e.get("event") == "message_stored" for e in logs)


def test_every_destination_gets_every_result(tmp_path: Path) -> None:
    from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory
    from labbridge_simulators.lis import SimulatedLis

    from labbridge.config import parse_config
    from labbridge.runtime.daemon import Daemon
    from tests.integration.helpers import lab_config

    async def body() -> None:
        first, second = SimulatedLis(), SimulatedLis()
        await first.start()
        await second.start()
        data = lab_config(tmp_path, instruments=1, lis_port=first.port)
        data["lis"].append({**data["lis"][0], "id": "lis-b", "port": second.port})
        daemon = Daemon(parse_config(data))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await asyncio.wait_for(daemon.started.wait(), 10)
            bound = daemon.runners["an-0"].bound
            assert bound is not None
            sim = AstmAnalyzerSim("an-0", bound, MessageFactory("an-0", sample_prefix="M", panel_size=3),
                                  interval=(0.0, 0.01), max_messages=5)
            await sim.run(asyncio.Event())
            # Well under the relays' 5 s idle poll: both were woken by the commit.
            await eventually(lambda: set(sim.acked) <= first.delivered and set(sim.acked) <= second.delivered,
                             timeout=3, what="both destinations")
        finally:
            stop.set()
            await task
            await first.stop()
            await second.stop()

    run(body())


def test_a_driver_exception_quoting_patient_data_stays_out_of_the_logs(tmp_path: Path) -> None:
    from collections.abc import Sequence

    from labbridge.driver import AstmDriver, DecodeContext
    from labbridge.model import Decoded

    class LeakyDriver(AstmDriver):
        name = "leaky"

        def decode(self, records: Sequence[bytes], context: DecodeContext) -> Decoded:
            raise ValueError("could not convert 'DUPONT^JANE' to float")

    async def body() -> None:
        with structlog.testing.capture_logs() as logs:
            async with running_lab(tmp_path, instruments=1) as lab:
                lab.daemon.runners["an-0"].driver = LeakyDriver()
                sim = lab.analyzer("an-0", messages=1)
                await sim.run(asyncio.Event())
                assert len(sim.acked) == 5  # stored raw, so acknowledged
                counts = await lab.daemon.store.counts()
                assert counts["undecodable"] == 1
        assert any(e.get("event") == "decode_failed" and e.get("reason") == "ValueError" for e in logs)
        assert "DUPONT" not in repr(logs)

    run(body())


def test_what_starting_made_is_set_apart_from_the_collector_while_the_daemon_runs(tmp_path: Path) -> None:
    """The daemon's startup objects are frozen (gc.freeze) once it has started, so the collector's full passes
    during traffic look only at what the links made; they are given back when it stops."""
    import gc

    from labbridge_simulators.lis import SimulatedLis

    from labbridge.config import parse_config
    from labbridge.runtime.daemon import Daemon
    from tests.integration.helpers import lab_config

    async def body() -> None:
        gc.unfreeze()
        lis = SimulatedLis()
        await lis.start()
        daemon = Daemon(parse_config(lab_config(tmp_path, instruments=1, lis_port=lis.port)))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await asyncio.wait_for(daemon.started.wait(), 10)
            assert gc.get_freeze_count() > 1000  # the modules, the configuration's models, the parts
        finally:
            stop.set()
            await task
            await lis.stop()
        assert gc.get_freeze_count() == 0

    run(body())
