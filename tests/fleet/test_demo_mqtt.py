"""`labbridge demo --mqtt URL` publishes the demo lab: the fleet view on that one broker shows it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fleet.broker import mosquitto

pytestmark = pytest.mark.slow


def test_the_demo_lab_in_the_fleet_view(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:
        demo = subprocess.Popen([sys.executable, "-m", "labbridge.cli", "demo", "--for", "10", "--port", "0",
                                 "--mqtt", broker.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "fleet", "--broker", broker.url,
                                       "--json"], capture_output=True, text=True, timeout=60, check=False)
                fleet = json.loads(proc.stdout)
                nodes = {n["node"]: n for n in fleet["nodes"]}
                if "demo" in nodes and len(nodes["demo"]["instruments"]) == 21:
                    break
                assert time.monotonic() < deadline, proc.stdout[-2000:]
                time.sleep(0.5)
            demo_node = nodes["demo"]
            assert demo_node["status"] == "online"
            assert len(fleet["sites"]) == 6 and {s["name"] for s in fleet["sites"]} >= {"Arlon", "Virton"}
            states = {i["instrument"]: i["state"] for i in demo_node["instruments"]}
            assert states["bastogne-coag-1"] == "failed"  # its serial adapter is not plugged in
            assert proc.returncode == 1 and "bastogne-coag-1" in json.dumps(fleet)  # it needs attention
        finally:
            out, err = demo.communicate(timeout=120)
        assert demo.returncode == 0, out + err
        assert f"health published to {broker.url} as node demo" in out
