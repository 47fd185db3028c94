"""No patient data in logs, metrics or MQTT, checked on a whole demo run: the six sites' simulated analyzers
send patient ids, names and sample ids; none of them may appear in the daemon's log lines (at info level), in
/metrics or in what it publishes to a real Mosquitto (every topic, retained or not), while the store (which
must keep them) has them."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fleet.broker import mosquitto

pytestmark = pytest.mark.slow


def patient_data(store: Path) -> set[str]:
    """Patient ids, sample ids and patient names the demo's analyzers sent, read back from the store."""
    conn = sqlite3.connect(store)
    try:
        found: set[str] = set()
        for (data,) in conn.execute("SELECT data FROM results"):
            result = json.loads(data)
            found |= {result.get("patient_id") or "", result.get("sample_id") or ""}
        for (raw,) in conn.execute("SELECT raw FROM messages"):
            text = bytes(raw).decode("latin-1")
            for record in re.split(r"[\r\n]+", text):
                fields = re.sub(r"^\d?(?=[A-Z])", "", record.lstrip("\x02")).split("|")
                if fields[0] in ("P", "PID") and len(fields) > 5:
                    found |= {w for w in re.split(r"[\^&~ ]", fields[5]) if len(w) >= 4 and w.isalpha()}
    finally:
        conn.close()
    return {item for item in found if item and not item.startswith("QC")}


class Subscriber:
    """Every message on ``labbridge/#`` of a broker, retained ones included (paho-mqtt, aiomqtt's own client)."""

    def __init__(self, port: int) -> None:
        from paho.mqtt import client as mqtt

        self.messages: list[tuple[str, str]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe("labbridge/#", qos=1)
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload.decode("utf-8")))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_demo_run_logs_exposes_and_publishes_no_patient_data(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:
        subscriber = Subscriber(broker.port)
        try:
            check_a_demo_run(tmp_path, broker.url, subscriber)
        finally:
            subscriber.stop()


def check_a_demo_run(tmp_path: Path, broker_url: str, subscriber: Subscriber) -> None:
    store_dir = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "labbridge.cli", "demo", "--for", "25", "--port", "0",
                             "--store-dir", str(store_dir), "--log-level", "info", "--mqtt", broker_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    url = re.search(r"http://127\.0\.0\.1:\d+/", first)
    assert url, first
    scraped = []
    for _ in range(3):
        time.sleep(6)
        with urllib.request.urlopen(url.group(0) + "metrics", timeout=10) as resp:
            scraped.append(resp.read().decode())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    phi = patient_data(store_dir / "labbridge-demo.db")
    assert len([p for p in phi if p.startswith("PAT")]) >= 10, "the demo sent patients"
    assert any(p.isalpha() for p in phi), "the demo sent patient names"
    lines = err.splitlines()
    assert len(lines) > 50 and all(line.startswith("{") for line in lines)  # JSON lines, at info level
    published = "\n".join(f"{topic} {payload}" for topic, payload in subscriber.messages)
    assert len(subscriber.messages) > 21 and "/instruments/arlon-chem-1/health" in published  # it published
    for text, where in ((err, "the logs"), ("\n".join(scraped), "/metrics"), (first + out, "the demo's output"),
                        (published, "MQTT")):
        leaked = sorted(p for p in phi if re.search(rf"(?<![A-Za-z0-9]){re.escape(p)}(?![A-Za-z0-9])", text))
        assert not leaked, f"patient data in {where}: {leaked[:5]}"
