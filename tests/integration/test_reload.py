"""Changes without restart, over real sockets: a reload starts, restarts and stops one instrument while
another sends without a pause (it loses nothing and keeps its one connection); a link being changed
finishes the transfer in hand first; an invalid config is refused with every reason and nothing changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory
from labbridge_simulators.lis import SimulatedLis, order_message
from labbridge_simulators.pty_pair import PtyPair

from labbridge import logs
from labbridge.cli import main
from labbridge.config import load_config
from labbridge.protocols import e1381
from labbridge.runtime.daemon import Daemon
from labbridge.runtime.reload import Action, Outcome
from tests.conftest import run
from tests.integration.helpers import daemon_running, eventually, free_port, lab_config, running_lab
from tests.integration.test_crash import write_toml

pytestmark = pytest.mark.slow

THIRD: dict[str, Any] = {"id": "an-2", "site": "arlon", "driver": "astm-generic",
                         "transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0}}


def daemon_from_file(path: Path, data: dict[str, Any]) -> contextlib.AbstractAsyncContextManager[Daemon]:
    """The daemon as ``labbridge run -c PATH`` builds it: from the file, which a reload reads again."""
    write_toml(path, data)
    config = load_config(path)
    return daemon_running(Daemon(config, config_path=path), config)


def analyzer(daemon: Daemon, instrument: str, messages: int | None, *, seed: int = 1) -> AstmAnalyzerSim:
    bound = daemon.runners[instrument].bound
    assert bound is not None
    return AstmAnalyzerSim(instrument, bound, MessageFactory(instrument, sample_prefix=f"{instrument}-{seed}-",
                                                             panel_size=2, seed=seed),
                           interval=(0.0, 0.005), max_messages=messages)


def lis_codes(store: str, instrument: str) -> set[tuple[str, str]]:
    """(LIS test code, instrument test code) of an instrument's stored results."""
    with contextlib.closing(sqlite3.connect(store)) as db:
        rows = db.execute("SELECT json_extract(data, '$.test_code'), json_extract(data, '$.instrument_test_code') "
                          "FROM results WHERE instrument = ?", (instrument,)).fetchall()
    return {(str(a), str(b)) for a, b in rows}


def test_reload_under_load_adds_changes_and_removes_an_instrument(tmp_path: Path) -> None:
    async def body() -> None:
        lis = SimulatedLis()
        await lis.start()
        path = tmp_path / "labbridge.toml"
        data = lab_config(tmp_path, instruments=2, lis_port=lis.port)
        try:
            async with daemon_from_file(path, data) as daemon:
                steady_runner = daemon.runners["an-1"]
                steady = analyzer(daemon, "an-1", None)  # sends until told to stop
                stop_steady = asyncio.Event()
                steady_task = asyncio.create_task(steady.run(stop_steady))
                await eventually(lambda: len(steady.acked) >= 10, what="the steady analyzer under way")

                data["instruments"].append(dict(THIRD))
                write_toml(path, data)
                report = await daemon.reload(by="test")
                assert report.outcome is Outcome.APPLIED
                assert [(c.kind, c.id, c.why) for c in report.changes] == [("instrument", "an-2", "added")]
                assert report.unchanged == {"instrument": 2, "lis": 1, "lis_orders": 0}
                third = analyzer(daemon, "an-2", 3)
                await asyncio.wait_for(third.run(asyncio.Event()), 20)
                assert lis_codes(daemon.config.store.path, "an-2") == {("GLU", "GLU"), ("CREA", "CREA")}

                data["instruments"][2] = {**THIRD, "test_map": {"GLU": "GLUC"}}
                write_toml(path, data)
                busy = analyzer(daemon, "an-2", None, seed=2)  # sending while its link is changed
                stop_busy = asyncio.Event()
                busy_task = asyncio.create_task(busy.run(stop_busy))
                await eventually(lambda: len(busy.acked) >= 2, what="the third analyzer under way")
                report = await daemon.reload(by="test")
                assert [(c.action, c.id, c.why, c.aborted) for c in report.changes] == [
                    (Action.RESTARTED, "an-2", "changed: test_map", 0)]
                stop_busy.set()
                await asyncio.wait_for(busy_task, 20)  # its link closed after a transfer: nothing in flight
                changed = analyzer(daemon, "an-2", 2, seed=3)
                await asyncio.wait_for(changed.run(asyncio.Event()), 20)
                codes = lis_codes(daemon.config.store.path, "an-2")
                assert ("GLUC", "GLU") in codes  # the new mapping applies to what came after the reload

                del data["instruments"][2]
                write_toml(path, data)
                report = await daemon.reload(by="test")
                assert [(c.action, c.id) for c in report.changes] == [(Action.STOPPED, "an-2")]
                assert "an-2" not in daemon.runners and "instrument:an-2" not in daemon.endpoints()["instruments"]

                stop_steady.set()
                await asyncio.wait_for(steady_task, 20)
                assert daemon.runners["an-1"] is steady_runner  # never restarted...
                assert steady.stats.connects == 1 and steady_runner.health.counters.connections == 1  # ...nor cut
                sent = set(steady.acked) | set(third.acked) | set(busy.acked) | set(changed.acked)
                await eventually(lambda: sent <= lis.delivered, what="every acknowledged result at the LIS")
                assert lis.duplicates == 0
                assert {r for r in lis.delivered if r[0] == "an-1"} == set(steady.acked)
        finally:
            await lis.stop()

    run(body(), timeout=120)


async def _read_byte(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(1), 10)


def test_a_changed_link_finishes_the_transfer_in_hand_before_it_closes(tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "labbridge.toml"
        data = lab_config(tmp_path, instruments=1, lis_port=9)
        data["instruments"].append(dict(THIRD))
        async with daemon_from_file(path, data) as daemon:
            runner = daemon.runners["an-2"]
            assert runner.bound is not None
            reader, writer = await asyncio.open_connection(*runner.bound)
            records = [b"H|\\^&|||an-2", b"P|1", b"O|1|S-DRAIN||^^^GLU", b"R|1|^^^GLU|5.4|mmol/L||N||F",
                       b"L|1|N"]
            frames = e1381.build_frames(records)  # one frame per record: the transfer takes several steps
            assert len(frames) > 2
            writer.write(bytes([e1381.ENQ]))
            assert await _read_byte(reader) == bytes([e1381.ACK])
            writer.write(frames[0])
            assert await _read_byte(reader) == bytes([e1381.ACK])

            data["instruments"][1] = {**THIRD, "test_map": {"GLU": "GLUC"}}
            write_toml(path, data)
            reload = asyncio.create_task(daemon.reload(by="test"))
            await eventually(lambda: runner.retiring, what="the reload retiring the link")
            assert not reload.done()  # it waits for the transfer: the analyzer is mid-message
            for frame in frames[1:]:
                writer.write(frame)
                assert await _read_byte(reader) == bytes([e1381.ACK])  # the last one: committed, then ACKed
            writer.write(bytes([e1381.EOT]))
            assert await asyncio.wait_for(reader.read(), 10) == b""  # then the link closes: the transfer ended
            writer.close()
            report = await asyncio.wait_for(reload, 20)
            assert [(c.action, c.id, c.aborted) for c in report.changes] == [(Action.RESTARTED, "an-2", 0)]
            assert daemon.runners["an-2"] is not runner
            assert lis_codes(daemon.config.store.path, "an-2") == {("GLU", "GLU")}  # stored under the old mapping
            assert daemon.runners["an-2"].health.counters.messages_received == 1  # the counts go on

    run(body(), timeout=60)


@pytest.mark.usefixtures("logging_restored")
def test_an_invalid_config_is_refused_with_every_reason_and_nothing_changes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        lis = SimulatedLis()
        await lis.start()
        path = tmp_path / "labbridge.toml"
        data = lab_config(tmp_path, instruments=2, lis_port=lis.port, http=True)
        try:
            async with daemon_from_file(path, data) as daemon:
                assert daemon.http_address is not None
                url = f"http://{daemon.http_address[0]}:{daemon.http_address[1]}"
                config, runners, relays = daemon.config, dict(daemon.runners), list(daemon.relays)
                steady = analyzer(daemon, "an-1", None)
                stop = asyncio.Event()
                steady_task = asyncio.create_task(steady.run(stop))
                await eventually(lambda: len(steady.acked) >= 4, what="the analyzer under way")

                bad = {**data, "instruments": [*data["instruments"],
                                               {**THIRD, "site": "nowhere"},
                                               {**THIRD, "id": "an-3", "driver": "no-such-driver"}]}
                write_toml(path, bad)
                capsys.readouterr()
                code = await asyncio.to_thread(main, ["reload", "--url", url, "--by", "anna"])
                out = capsys.readouterr().out
                assert code == 2
                assert "\nreload refused: nothing changed" in "\n" + out
                assert "instruments[2].site" in out and "nowhere" in out
                bad = {**data, "instruments": [*data["instruments"], {**THIRD, "id": "an-3",
                                                                      "driver": "no-such-driver"}]}
                write_toml(path, bad)
                report = await daemon.reload(by="test")  # the drivers are checked as check-config does
                assert report.outcome is Outcome.REFUSED
                assert [k for k, _ in report.refused] == ["instruments[2].driver"]
                assert daemon.config is config and daemon.runners == runners and daemon.relays == relays

                data["http"] = {**data["http"], "port": 1}  # only at a restart; the rest applies now
                data["sites"][0] = {"id": "arlon", "name": "Arlon (clean zone 1)"}
                write_toml(path, data)
                code = await asyncio.to_thread(main, ["reload", "--url", url])
                out = capsys.readouterr().out
                assert code == 0, out
                assert "updated    site arlon: changed: name" in out
                assert "needs a restart: http" in out
                assert daemon.config.http == config.http and daemon.sites_json()[0]["name"] == "Arlon (clean zone 1)"
                assert daemon.runners == runners and daemon.relays == relays  # the same objects, untouched

                stop.set()
                await asyncio.wait_for(steady_task, 20)
                assert steady.stats.connects == 1
                await eventually(lambda: set(steady.acked) <= lis.delivered, what="delivery")
                assert lis.duplicates == 0
        finally:
            await lis.stop()

    run(body(), timeout=90)


def test_sighup_reloads_a_daemon_process(tmp_path: Path) -> None:
    """``labbridge reload --ready-file`` of a daemon without HTTP sends it SIGHUP: it applies the file and says so."""
    path = tmp_path / "labbridge.toml"
    data = lab_config(tmp_path, instruments=1, lis_port=9)
    write_toml(path, data)
    ready, log_file = tmp_path / "ready.json", tmp_path / "daemon.log"
    with log_file.open("w") as err:  # the daemon's JSON log lines
        proc = subprocess.Popen([sys.executable, "-m", "labbridge.cli", "run", "-c", str(path), "--ready-file",
                                 str(ready)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        run(eventually(lambda: ready.exists() or proc.poll() is not None, what="the daemon ready"))
        assert proc.poll() is None, log_file.read_text()
        before = json.loads(ready.read_text())
        assert before["http"] is None and set(before["instruments"]) == {"an-0"}
        data["instruments"].append(dict(THIRD))
        write_toml(path, data)
        done = subprocess.run([sys.executable, "-m", "labbridge.cli", "reload", "--ready-file", str(ready)],
                              capture_output=True, text=True, timeout=20, check=False)
        assert done.returncode == 0, done.stderr
        assert f"SIGHUP sent to labbridge (pid {proc.pid})" in done.stdout
        deadline = time.monotonic() + 20
        while "an-2" not in json.loads(ready.read_text())["instruments"]:  # the ready file lists what runs now
            assert time.monotonic() < deadline, "the reload did not happen"
            time.sleep(0.05)
        after = json.loads(ready.read_text())
        assert after["instruments"]["an-0"] == before["instruments"]["an-0"]  # still on the same port
        port = after["instruments"]["an-2"]["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # the new link answers
            sock.sendall(bytes([e1381.ENQ]))
            assert sock.recv(1) == bytes([e1381.ACK])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, log_file.read_text()
    events = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    reloads = [e for e in events if e["event"] == "config_reloaded"]
    assert [(e["outcome"], e["by"], e["started"]) for e in reloads] == [("applied", "SIGHUP", ["instrument:an-2"])]
    # Audited as a reload through the API is, under the one who could signal it: someone on this machine.
    audit = subprocess.run([sys.executable, "-m", "labbridge.cli", "audit", "export", "--format", "jsonl", "--store",
                            data["store"]["path"]], capture_output=True, text=True, timeout=30, check=True)
    entries = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [("local:SIGHUP", "reload", "config")]
    verify = subprocess.run([sys.executable, "-m", "labbridge.cli", "audit", "verify", "--store",
                             data["store"]["path"]], capture_output=True, text=True, timeout=30, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_shared_listener_restarts_as_one_on_its_port_and_is_left_alone_otherwise(tmp_path: Path) -> None:
    async def body() -> None:
        port = free_port()
        shared = {"transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": port}}
        path = tmp_path / "labbridge.toml"
        data = lab_config(tmp_path, instruments=2, lis_port=9, overrides={
            "an-0": {**shared, "sender": ["ChemA"]}, "an-1": {**shared, "sender": ["ChemB"]}})
        async with daemon_from_file(path, data) as daemon:
            listener = daemon.shared[0]
            data["instruments"].append(dict(THIRD))  # on a port of its own: the shared one is not touched
            write_toml(path, data)
            report = await daemon.reload(by="test")
            assert [(c.action, c.id) for c in report.changes] == [(Action.STARTED, "an-2")]
            assert daemon.shared == [listener]

            data["instruments"][1] = {**data["instruments"][1], "test_map": {"GLU": "GLUC"}}
            write_toml(path, data)
            report = await daemon.reload(by="test")
            assert [(c.action, c.id) for c in report.changes] == [(Action.RESTARTED, "an-0"),
                                                                  (Action.RESTARTED, "an-1")]
            assert daemon.shared != [listener] and set(daemon.shared[0].runners) == {"an-0", "an-1"}
            # The new listener took the port back: an analyzer reaches it and is recognised by its sender name.
            factory = MessageFactory("an-1", sample_prefix="S-", panel_size=1, seed=1, model="ChemB")
            sim = AstmAnalyzerSim("an-1", ("127.0.0.1", port), factory, interval=(0.0, 0.01), max_messages=1)
            await asyncio.wait_for(sim.run(asyncio.Event()), 20)
            assert lis_codes(daemon.config.store.path, "an-1") == {("GLUC", "GLU")}

    run(body(), timeout=60)


def test_a_changed_serial_link_closes_its_port_after_the_transfer_and_reopens_it(tmp_path: Path) -> None:
    pty = PtyPair()

    async def body() -> None:
        lis = SimulatedLis()
        await lis.start()
        path = tmp_path / "labbridge.toml"
        serial = {"kind": "serial", "port": pty.device, "baudrate": 19200, "reopen_initial_s": 0.05,
                  "reopen_max_s": 0.2}
        data = lab_config(tmp_path, instruments=1, lis_port=lis.port, overrides={"an-0": {"transport": serial}})
        try:
            async with daemon_from_file(path, data) as daemon:
                old = daemon.runners["an-0"]
                await eventually(lambda: old.health.state == "up", what="serial port open")
                # The cable stays plugged in: the analyzer goes on sending while labbridge reopens its port (an
                # ENQ sent in between is unanswered: it times out and sends it again, as LIS1-A says).
                sim = AstmAnalyzerSim("an-0", ("127.0.0.1", 0), MessageFactory("an-0", sample_prefix="SER-",
                                                                              panel_size=2, seed=2),
                                      interval=(0.0, 0.01), opener=pty.open_master,
                                      profile=e1381.LinkProfile(reply_timeout=0.5, busy_wait=0.2))  # ENQ again soon
                stop = asyncio.Event()
                sim_task = asyncio.create_task(sim.run(stop))
                await eventually(lambda: len(sim.acked) >= 4, what="the analyzer under way")
                data["instruments"][0] = {**data["instruments"][0], "test_map": {"GLU": "GLUC"}}
                write_toml(path, data)
                report = await daemon.reload(by="test")
                assert [(c.action, c.id, c.aborted) for c in report.changes] == [(Action.RESTARTED, "an-0", 0)]
                new = daemon.runners["an-0"]
                await eventually(lambda: ("GLUC", "GLU") in lis_codes(daemon.config.store.path, "an-0"),
                                 what="results through the reopened port, mapped anew")
                assert new.health.state == "up" and new.health.counters.connections == 2  # the port opened again
                stop.set()
                await asyncio.wait_for(sim_task, 30)
                await eventually(lambda: set(sim.acked) <= lis.delivered, what="every acknowledged result")
                assert lis.duplicates == 0
        finally:
            await lis.stop()

    try:
        run(body(), timeout=90)
    finally:
        pty.close()


def test_a_destination_and_a_lis_order_listener_added_by_a_reload_work(tmp_path: Path) -> None:
    async def body() -> None:
        first, second = SimulatedLis(), SimulatedLis()
        await first.start()
        await second.start()
        path = tmp_path / "labbridge.toml"
        data = lab_config(tmp_path, instruments=1, lis_port=first.port)
        try:
            async with daemon_from_file(path, data) as daemon:
                data["lis"].append({**data["lis"][0], "id": "lis-2", "port": second.port})
                data["lis_orders"] = [{"id": "his", "host": "127.0.0.1", "port": 0, "instrument": "an-0"}]
                write_toml(path, data)
                report = await daemon.reload(by="test")
                assert [(c.kind, c.id, c.action) for c in report.changes] == [
                    ("lis", "lis-2", Action.STARTED), ("lis_orders", "his", Action.STARTED)]
                sim = analyzer(daemon, "an-0", 2)
                await asyncio.wait_for(sim.run(asyncio.Event()), 20)
                for lis in (first, second):  # results stored after the reload go to both destinations
                    await eventually(lambda lis=lis: set(sim.acked) <= lis.delivered, what="delivery")
                [listener] = daemon.lis_orders
                assert listener.bound is not None
                ack = await first.send_orders(*listener.bound, order_message("OML^O21", sample="R1", tests=["GLU"],
                                                                              control_id="HIS1"))
                assert str(ack.segment("MSA")[1]) == "AA"
                assert [o.sample_id for o in await daemon.orders.list_orders(instrument="an-0")] == ["R1"]
        finally:
            await first.stop()
            await second.stop()

    run(body(), timeout=60)


@pytest.mark.usefixtures("logging_restored")
def test_a_daemon_without_a_config_file_cannot_reload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, http=True) as lab:
            assert lab.daemon.http_address is not None
            host, port = lab.daemon.http_address
            logs.configure("warning")  # the daemon's log lines on stderr: stdout is the CLI's JSON alone
            capsys.readouterr()
            code = await asyncio.to_thread(main, ["reload", "--url", f"http://{host}:{port}", "--json"])
            report = json.loads(capsys.readouterr().out)
            assert code == 1 and report["outcome"] == "unavailable"
            assert "not started from a config file" in report["refused"][0]["problem"]

    run(body(), timeout=60)
