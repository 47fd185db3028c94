"""Link health as a technician sees it, driven by the simulators' faults over real sockets and pseudo-terminals.

Each test brings a link into one state and checks the state and that its reason names what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory
from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory
from labbridge_simulators.pty_pair import PtyPair
from structlog.testing import capture_logs

from labbridge.config import HealthConfig
from labbridge.health.instrument import InstrumentHealth
from labbridge.health.traffic import HOURS_PER_WEEK
from labbridge.protocols import e1381
from labbridge.runtime.health_task import HealthTask
from labbridge.store.db import Store
from tests.conftest import run
from tests.integration.helpers import Lab, eventually, running_lab

FAST_HEALTH = {"health": {"check_interval_s": 0.05, "refresh_interval_s": 0.1, "lis_backlog_after_s": 0.5}}
FAST_REOPEN = {"reopen_initial_s": 0.05, "reopen_max_s": 0.2}
# The analyzer's own timers, shortened so a garbled line retries its ENQ often.
FAST_SENDER = e1381.LinkProfile(reply_timeout=0.05, busy_wait=0.05)


def _shown(health: InstrumentHealth) -> tuple[str, str]:
    return health.effective_state()


def _sim(lab: Lab, instrument: str, *, prefix: str = "S-", **kwargs: Any) -> AstmAnalyzerSim:
    runner = lab.daemon.runners[instrument]
    assert runner.bound is not None
    options: dict[str, Any] = {"interval": (0.0, 0.01), **kwargs}
    return AstmAnalyzerSim(instrument, runner.bound, MessageFactory(instrument, sample_prefix=prefix, panel_size=5,
                                                                    seed=1), **options)


def test_an_analyzer_that_connects_per_transmission_is_idle_waiting_not_down(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH) as lab:
            health = lab.daemon.runners["an-0"].health
            assert _shown(health)[0] == "down" and "has not connected since labbridge started" in health.reason
            sim = _sim(lab, "an-0", max_messages=3, per_transmission=True, interval=(0.05, 0.1))
            await asyncio.wait_for(sim.run(asyncio.Event()), 30)
            assert sim.stats.hang_ups == 3 and health.counters.connections == 3
            await eventually(lambda: health.state != "up", what="the last connection closed")
            state, reason = _shown(health)
            assert state == "idle", reason
            assert reason.startswith("waiting for the next transmission") and "the last message came at" in reason
            assert health.to_json()["last_disconnect_clean"] is True

            # One that hangs up in the middle of a message is not a clean close: down, saying when and how.
            cut = lab.analyzer("an-0", messages=1, disconnect_every=1, reconnect_delay=30)
            stop = asyncio.Event()
            task = asyncio.create_task(cut.run(stop))
            await eventually(lambda: cut.stats.disconnects_injected == 1 and health.state == "down",
                             what="a transfer cut")
            state, reason = _shown(health)
            assert state == "down" and "connection lost at" in reason and "in the middle of a transfer" in reason
            assert "check that the analyzer is on" in reason
            stop.set()
            task.cancel()

    run(body())


def test_an_hl7_analyzer_that_hangs_up_after_its_messages_is_idle(tmp_path: Path) -> None:
    async def body() -> None:
        hl7 = {"driver": "hl7-generic", "link": {"framing": "mllp", "encoding": "utf-8"}}
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH, overrides={"an-0": hl7}) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            sim = Hl7AnalyzerSim("an-0", runner.bound, Hl7MessageFactory("an-0", dialect="law", sample_prefix="H",
                                                                          panel_size=3, seed=1),
                                 interval=(0.0, 0.0), max_messages=2)
            await asyncio.wait_for(sim.run(asyncio.Event()), 20)
            await eventually(lambda: runner.health.state != "up", what="the analyzer hung up")
            state, reason = _shown(runner.health)
            assert state == "idle" and reason.startswith("waiting for the next transmission"), reason
            assert runner.health.counters.messages_received == 2

    run(body())


def test_silence_against_the_configured_traffic(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH,
                               overrides={"an-0": {"expect_message_every": 0.5}}) as lab:
            health = lab.daemon.runners["an-0"].health
            sim = lab.analyzer("an-0", messages=1, linger=True)
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await eventually(lambda: health.counters.messages_received == 1, what="one message")
            with capture_logs() as logs:
                await eventually(lambda: _shown(health)[0] == "idle", what="silent longer than expected")
                await eventually(lambda: any(e["event"] == "link_state" and e["state"] == "idle" for e in logs),
                                 what="the change logged by the health task")
            reason = _shown(health)[1]
            assert reason.startswith("connected, no message for") and "usually sends every 0 s" in reason
            assert "host transmission is switched on" in reason
            assert health.to_json()["expected_every_s"] == 0.5
            stop.set()
            await asyncio.wait_for(task, 10)

    run(body())


def test_junk_without_framing_degrades_naming_the_protocol_setting(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH,
                               overrides={"an-0": {"undecoded_after_s": 0.3}}) as lab:
            health = lab.daemon.runners["an-0"].health
            sim = _sim(lab, "an-0", unframed=True, interval=(0.02, 0.05))
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await eventually(lambda: _shown(health)[0] == "degraded", what="bytes that never frame")
            reason = _shown(health)[1]
            # the cause read from the bytes themselves (labbridge.health.unframed)
            assert 'none formed a frame or message: records without E1381 framing: try link.framing = "raw"' in reason
            assert health.counters.junk_bytes > 0 and health.counters.messages_received == 0
            stop.set()
            await asyncio.wait_for(task, 10)

    run(body())


def test_frames_without_frame_numbers_degrade_naming_the_setting(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH,
                               overrides={"an-0": {"undecoded_after_s": 0.3}}) as lab:
            health = lab.daemon.runners["an-0"].health
            # a MAGLUMI-like analyzer (no frame number after STX) on a standard link: every frame is NAKed
            sim = _sim(lab, "an-0", profile=e1381.LinkProfile(frame_numbers=False, reply_timeout=0.05,
                                                              busy_wait=0.05))
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await eventually(lambda: "none formed a frame" in _shown(health)[1], what="frames that never pass")
            state, reason = _shown(health)
            assert state == "degraded" and health.counters.messages_received == 0
            assert "none formed a frame or message: frames without frame numbers: try link.frame_numbers = false" \
                in reason
            assert "of recent frames rejected (checksum or framing errors): frames without frame numbers" in reason
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_frames_that_never_complete_a_message_degrade_naming_the_dialect(tmp_path: Path) -> None:
    async def body() -> None:
        # the link is set for a MAGLUMI-like dialect (no frame numbers); the analyzer numbers its frames: every
        # frame is accepted ("1H|...", "6L|1|N" are records of no known type) and no message ever completes
        wrong = {"undecoded_after_s": 0.3, "link": {"frame_numbers": False}}
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH, overrides={"an-0": wrong}) as lab:
            health = lab.daemon.runners["an-0"].health
            sim = _sim(lab, "an-0", interval=(0.02, 0.05))
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await eventually(lambda: _shown(health)[0] == "degraded", what="frames without a message")
            reason = _shown(health)[1]
            assert "frames accepted in" in reason and "but none completed a message: frames with frame numbers in " \
                   "a dialect without them: try link.frame_numbers = true" in reason
            assert health.counters.messages_received == 0 and health.counters.frames_accepted > 0
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_an_hl7_analyzer_on_an_astm_link_degrades_naming_the_driver(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH,
                               overrides={"an-0": {"undecoded_after_s": 0.3}}) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            sim = Hl7AnalyzerSim("an-0", runner.bound, Hl7MessageFactory("an-0", dialect="law", sample_prefix="H",
                                                                          panel_size=3, seed=1),
                                 interval=(0.0, 0.0), max_messages=1)
            task = asyncio.create_task(sim.run(asyncio.Event()))
            await eventually(lambda: _shown(runner.health)[0] == "degraded", what="HL7 that never frames as ASTM")
            reason = _shown(runner.health)[1]
            assert "none formed a frame or message: HL7 messages on an ASTM link" in reason
            assert 'link.framing = "mllp"' in reason
            task.cancel()  # it waits for an HL7 ACK that never comes
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_nak_storm_degrades_naming_the_line(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH) as lab:
            health = lab.daemon.runners["an-0"].health
            sim = _sim(lab, "an-0", corrupt_every=1)
            task = asyncio.create_task(sim.run(asyncio.Event()))
            await eventually(lambda: _shown(health)[0] == "degraded", what="every frame NAKed")
            reason = _shown(health)[1]
            assert "of recent frames rejected (checksum or framing errors)" in reason and "cable" in reason
            assert health.counters.checksum_errors > 0
            task.cancel()  # its message never gets through: it would go on
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_transfers_that_time_out_mid_message_degrade_naming_the_cable(tmp_path: Path) -> None:
    async def body() -> None:
        link = {"link": {"receive_timeout_s": 0.2}}
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH, overrides={"an-0": link}) as lab:
            health = lab.daemon.runners["an-0"].health
            # Every message stops halfway for longer than labbridge's receive timer, then is sent again whole.
            sim = _sim(lab, "an-0", max_messages=3, stall_every=1, stall_for=0.5, linger=True,
                       profile=e1381.LinkProfile(reply_timeout=0.3, receive_timeout=1.0, busy_wait=0.1))
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await eventually(lambda: health.counters.messages_received == 3, what="three messages, each after a stall")
            state, reason = _shown(health)
            assert state == "degraded" and "transfers timed out in the last 15 min" in reason
            assert "check the cable" in reason and health.counters.timeouts >= 3
            stop.set()
            await asyncio.wait_for(task, 30)
            assert sim.stats.stalls_injected == 3

    run(body())


def test_lis_backlog_and_dead_letters_degrade_then_recover(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH) as lab:
            health = lab.daemon.runners["an-0"].health
            lab.lis.mode = "silent"  # takes messages and never answers: the results wait in the store
            sim = lab.analyzer("an-0", messages=2, linger=True)
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await eventually(lambda: _shown(health)[0] == "degraded", what="results waiting for the LIS")
            reason = _shown(health)[1]
            assert "results of this analyzer waiting for the LIS" in reason and "LIS destination" in reason
            assert health.to_json()["lis_pending_results"] == 10
            lab.lis.mode = "AA"
            await eventually(lambda: _shown(health)[0] == "up", what="delivered: recovered")
            assert health.to_json()["last_delivery_at"] is not None

            stop.set()
            await asyncio.wait_for(task, 10)

            lab.lis.mode = "AE"  # the LIS refuses: dead letters wait for a person
            more = _sim(lab, "an-0", prefix="more-", max_messages=1)
            await asyncio.wait_for(more.run(asyncio.Event()), 10)
            await eventually(lambda: "dead letters" in _shown(health)[1], what="dead letters")
            state, reason = _shown(health)
            assert state == "degraded" and "lis-rejected 1" in reason and "outbox list --state dead" in reason

    run(body())


def test_wrong_baud_rate_on_a_serial_line_degrades_naming_the_line_settings(tmp_path: Path) -> None:
    pty = PtyPair()

    async def body() -> None:
        transport = {"kind": "serial", "port": pty.device, "baudrate": 9600, **FAST_REOPEN}
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH,
                               overrides={"an-0": {"transport": transport, "undecoded_after_s": 0.3}}) as lab:
            health = lab.daemon.runners["an-0"].health
            await eventually(lambda: health.state == "up", what="serial port open")
            sim = AstmAnalyzerSim("an-0", ("127.0.0.1", 0), MessageFactory("an-0", sample_prefix="B-", seed=3),
                                  interval=(0.0, 0.01), max_messages=1, garble=True, opener=pty.open_master,
                                  profile=FAST_SENDER)
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await eventually(lambda: _shown(health)[0] == "degraded", what="noise on the line")
            reason = _shown(health)[1]
            assert ("none formed a frame or message: bytes look like the wrong baud rate or parity: check that the "
                    f"baud rate, parity, data bits and stop bits (serial {pty.device} 9600 8N1)") in reason
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        run(body())
    finally:
        pty.close()


def test_serial_cable_pulled_is_down_then_failed_naming_the_cable(tmp_path: Path) -> None:
    pty = PtyPair()

    async def body() -> None:
        transport = {"kind": "serial", "port": pty.device, **FAST_REOPEN}
        async with running_lab(tmp_path, instruments=1, extra=FAST_HEALTH,
                               overrides={"an-0": {"transport": transport}}) as lab:
            health = lab.daemon.runners["an-0"].health
            await eventually(lambda: health.state == "up", what="serial port open")
            sim = AstmAnalyzerSim("an-0", ("127.0.0.1", 0), MessageFactory("an-0", sample_prefix="C-", seed=4),
                                  interval=(0.0, 0.01), max_messages=1, opener=pty.open_master)
            await asyncio.wait_for(sim.run(asyncio.Event()), 30)
            await eventually(lambda: health.counters.messages_received == 1, what="a message")
            with capture_logs() as logs:
                pty.close()  # the adapter is unplugged: the device goes away
                await eventually(lambda: health.last_disconnect_at is not None, what="the port's end seen")
                await eventually(lambda: health.state == "failed", what="no device to reopen")
            down = [e for e in logs if e["event"] == "link_state" and e["state"] == "down"]
            assert down and down[0]["log_level"] == "warning"
            assert "went away at" in down[0]["reason"] and "check the cable" in down[0]["reason"]
            assert health.last_disconnect_clean is False
            assert "plugged in" in _shown(health)[1]

    try:
        run(body())
    finally:
        pty.close()


def test_expected_traffic_is_learned_from_the_stored_messages(tmp_path: Path) -> None:
    async def body() -> None:
        now = time.time()
        path = tmp_path / "s.db"
        async with Store(path):  # the schema
            pass
        # Four weeks of history, a message every 5 min, the last one 40 min ago.
        times = [float(t) for t in range(int(now - 28 * 86400), int(now - 2400), 300)]
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.executemany("INSERT INTO messages (instrument, protocol, received_at, raw, status)"
                             " VALUES ('an-0', 'astm', ?, x'', 'decoded')",
                             [(t,) for t in times])
        health = InstrumentHealth(id="an-0", site="s", driver="astm-generic", transport="tcp-server",
                                  timezone="Europe/Brussels")
        health.connected("10.0.0.1:5000", now=now - 3600)
        health.message_counted(now=now - 3000)  # live, older than what the store knows
        async with Store(path) as store:
            task = HealthTask(store, lambda: [health], HealthConfig())
            await task.learn(now)
            await task.refresh(now)
        learned = health.learned
        assert learned is not None and learned.weeks == 4
        assert len(learned.gaps) == HOURS_PER_WEEK and set(learned.gaps) == {300.0}
        assert health.store is not None and health.store.last_stored_message_at == times[-1]
        state, reason = health.effective_state(now)
        assert state == "idle"
        assert "no message for 4" in reason and "usually sends at least every 5 min on " in reason
        assert "(learned from the last 4 weeks)" in reason

    run(body())
