"""`labbridge run` as a process: JSON log lines when stderr is not a terminal, clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    assert all({"timestamp", "level"} <= set(e) for e in events)
    assert not ready.exists()  # removed on a clean stop
