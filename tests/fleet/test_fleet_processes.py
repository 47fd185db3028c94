"""Three labbridge daemons (processes, as three sites) publish to one real Mosquitto; ``labbridge fleet --json`` and
``labbridge fleet serve`` show all three; a SIGKILLed one is shown ``offline`` through its last will, and so is one
that hangs (SIGSTOP) once the broker's keep-alive gives it up; it is ``online`` again when it comes back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.fleet.broker import Broker, mosquitto

SITES = ("arlon", "marche", "virton")


def _config(folder: Path, site: str, broker: Broker) -> Path:
    path = folder / f"{site}.toml"
    path.write_text(f"""
node = "{site}-node"
timezone = "Europe/Brussels"
[store]
path = "{site}.db"
[http]
enabled = false
[mqtt]
url = "{broker.url}"
keepalive_s = 5
dashboard_url = "https://labbridge.{site}.example/"
[[sites]]
id = "{site}"
name = "{site.title()}"
[[instruments]]
id = "{site}-chem-1"
site = "{site}"
driver = "astm-generic"
transport = {{ kind = "tcp-server", host = "127.0.0.1", port = 0 }}
[[instruments]]
id = "{site}-hema-1"
site = "{site}"
driver = "astm-generic"
stage = "cabled"
transport = {{ kind = "tcp-server", host = "127.0.0.1", port = 0 }}
""", encoding="utf-8")
    return path


@contextmanager
def daemons(folder: Path, broker: Broker) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for site in SITES:
            ready = folder / f"{site}.ready"
            procs[site] = subprocess.Popen([sys.executable, "-m", "labbridge.cli", "run", "-c",
                                            str(_config(folder, site, broker)), "--ready-file", str(ready)],
                                           stdout=subprocess.DEVNULL, stderr=(folder / f"{site}.log").open("wb"))
        deadline = time.monotonic() + 60
        for site in SITES:
            while not (folder / f"{site}.ready").exists():
                assert procs[site].poll() is None, (folder / f"{site}.log").read_text()
                assert time.monotonic() < deadline, f"{site} did not become ready"
                time.sleep(0.1)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def fleet_json(broker: Broker) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "fleet", "--broker", broker.url, "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_three_sites_in_one_fleet_view_and_a_killed_node_goes_offline_by_its_last_will(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker, daemons(tmp_path, broker) as procs:
        def all_three() -> dict[str, Any] | None:
            _, fleet = fleet_json(broker)
            nodes = {n["node"]: n for n in fleet["nodes"]}
            if set(nodes) == {f"{s}-node" for s in SITES} and all(len(n["instruments"]) == 2 for n in
                                                                   nodes.values()):
                return fleet
            return None

        fleet = wait_for(all_three, "three nodes with their instruments")
        for node in fleet["nodes"]:
            site = node["node"].removesuffix("-node")
            assert node["status"] == "online"
            assert node["dashboard"] == f"https://labbridge.{site}.example/"
            assert {i["instrument"]: i["stage"] for i in node["instruments"]} == {
                f"{site}-chem-1": "live", f"{site}-hema-1": "cabled"}
            assert all(i["state"] == "down" for i in node["instruments"])  # no analyzer connected: it says so
        assert [s["site"] for s in fleet["sites"]] == sorted(SITES)
        assert [s["name"] for s in fleet["sites"]] == ["Arlon", "Marche", "Virton"]

        # --watch: follows the broker and draws the fleet again until told to stop (SIGTERM, as Ctrl-C does).
        watch = subprocess.Popen([sys.executable, "-m", "labbridge.cli", "fleet", "--broker", broker.url, "--watch",
                                  "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        watch.send_signal(signal.SIGTERM)
        out, err = watch.communicate(timeout=20)
        assert watch.returncode == 0, err
        assert out.count("fleet at " + broker.url) >= 2  # drawn again
        assert all(f"{site}-node  ● ONLINE" in out for site in SITES)

        serve = subprocess.Popen([sys.executable, "-m", "labbridge.cli", "fleet", "serve", "--broker", broker.url,
                                  "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert serve.stdout is not None
            line = serve.stdout.readline()
            url = line.split("dashboard at ", 1)[1].split()[0]

            procs["marche"].send_signal(signal.SIGKILL)
            procs["marche"].wait(10)

            def marche_offline() -> dict[str, Any] | None:
                _, now = fleet_json(broker)
                nodes = {n["node"]: n["status"] for n in now["nodes"]}
                return now if nodes.get("marche-node") == "offline" else None

            after = wait_for(marche_offline, "marche offline")
            code, _ = fleet_json(broker)
            assert code == 1  # a node offline needs attention
            assert {n["node"]: n["status"] for n in after["nodes"]} == {
                "arlon-node": "online", "marche-node": "offline", "virton-node": "online"}

            def served() -> dict[str, Any] | None:
                with urllib.request.urlopen(url + "api/fleet", timeout=5) as resp:
                    data: dict[str, Any] = json.loads(resp.read())
                statuses = {n["node"]: n["status"] for n in data["nodes"]}
                return data if statuses.get("marche-node") == "offline" and len(statuses) == 3 else None

            data = wait_for(served, "the served fleet")
            assert data["broker"]["state"] == "up"
            with urllib.request.urlopen(url, timeout=5) as resp:
                page = resp.read().decode()
            assert "✕ offline" in page and "● online" in page  # a word and a mark, not a color alone
            assert 'href="https://labbridge.arlon.example/"' in page  # drill-down to the node's own dashboard
            assert "<script" not in page and "http://" not in page.replace(url, "")  # nothing fetched elsewhere
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(10)
        assert serve.returncode == 0

        # A node that hangs (its connection open, silent): the broker gives it up 1.5 keep-alives (5 s) after it
        # last heard from it and publishes its will; back, it reconnects and says online again.
        procs["virton"].send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: {n["node"]: n["status"] for n in fleet_json(broker)[1]["nodes"]}.get("virton-node")
                     == "offline", "virton offline by its will", timeout=40)
        finally:
            procs["virton"].send_signal(signal.SIGCONT)
        wait_for(lambda: {n["node"]: n["status"] for n in fleet_json(broker)[1]["nodes"]}.get("virton-node")
                 == "online", "virton online again", timeout=60)
        assert procs["arlon"].poll() is None and procs["virton"].poll() is None  # the others go on
