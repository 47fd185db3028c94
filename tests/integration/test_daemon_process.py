"""`labbridge run` as a process: JSON log lines when stderr is not a terminal, clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import labbridge
from tests.integration.helpers import lab_config
from tests.integration.test_crash import write_toml

pytestmark = pytest.mark.slow


def test_run_logs_json_lines_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "labbridge.toml"
    write_toml(config, lab_config(tmp_path, instruments=2, lis_port=9, http=True))
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "labbridge.cli", "run", "-c", str(config), "--ready-file",
                             str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "daemon did not become ready"
            time.sleep(0.05)
        endpoints = json.loads(ready.read_text())
        assert endpoints["http"]["host"] == "127.0.0.1"
        assert set(endpoints["instruments"]) == {"an-0", "an-1"}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    names = [e["event"] for e in events]
    assert "daemon_started" in names and names[-1] == "daemon_stopped"
    [started] = [e for e in events if e["event"] == "daemon_started"]
    assert started["cores"] == labbridge.BUILD.describe()  # the same build as this process (same environment)
    assert all({"timestamp", "level"} <= set(e) for e in events)
    assert not ready.exists()  # removed on a clean stop


def test_under_systemd_it_says_ready_pings_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    """Type=notify and WatchdogSec= as deploy/labbridge.service sets them: the notifications reach a real
    unix datagram socket named in NOTIFY_SOCKET, READY=1 only once the links listen."""
    import os
    import socket

    config = tmp_path / "labbridge.toml"
    write_toml(config, lab_config(tmp_path, instruments=1, lis_port=9))
    ready = tmp_path / "ready.json"
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
        proc = subprocess.Popen([sys.executable, "-m", "labbridge.cli", "run", "-c", str(config), "--ready-file",
                                 str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            said = [sock.recv(256).decode() for _ in range(3)]
            assert said[0] == "READY=1" and ready.exists()  # after the ready file: the links listen
            assert said[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        rest = []
        sock.settimeout(0.5)
        try:
            while True:
                rest.append(sock.recv(256).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest


def test_the_demo_config_is_inside_the_package(repo: Path, tmp_path: Path) -> None:
    """`pip install labbridge` then `labbridge demo`: the wheel carries the demo config and the simulators."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(repo)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("labbridge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "labbridge/demo.toml" in names and "labbridge_simulators/__init__.py" in names
    assert any(n.startswith("labbridge/web/static/") for n in names)


def test_the_systemd_unit_passes_systemd_analyze(repo: Path, tmp_path: Path) -> None:
    """deploy/labbridge.service as shipped, with ExecStart pointing at this checkout's labbridge."""
    import shutil

    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian's systemd) checks the shipped unit"
    unit = (repo / "deploy" / "labbridge.service").read_text()
    labbridge = Path(sys.executable).with_name("labbridge")
    assert "ExecStart=/opt/labbridge/.venv/bin/labbridge run" in unit
    path = tmp_path / "labbridge.service"
    path.write_text(unit.replace("/opt/labbridge/.venv/bin/labbridge", str(labbridge)))
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit


def test_a_taken_http_port_is_one_friendly_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "labbridge.toml"
        data = lab_config(tmp_path, instruments=1, lis_port=9, http=True)
        data["http"]["port"] = port
        write_toml(config, data)
        proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "run", "-c", str(config)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"labbridge run: the dashboard and API address 127.0.0.1:{port} is already in use (another "
                    "labbridge running? stop it, or choose another port: [http] port, or --port for the demo)")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["outbox", "list"], ["orders", "list"]])
def test_output_piped_to_a_closed_reader_ends_quietly(tmp_path: Path, command: list[str]) -> None:
    """`labbridge outbox list | head -1`: the reader goes away; no traceback, no 'Exception ignored'."""
    import asyncio

    from labbridge.store.db import Store

    async def make_store() -> None:
        store = Store(str(tmp_path / "s.db"))
        await store.open()
        await store.close()

    asyncio.run(make_store())
    proc = subprocess.Popen([sys.executable, "-m", "labbridge.cli", *command, "--store", str(tmp_path / "s.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err
