"""[mqtt] over TLS (mqtts://) to a real Mosquitto that requires a client certificate: the node publishes, the
fleet view reads with --ca/--cert/--key; a node that cannot verify the broker shows its broker link failed with
the reason, and its data path is not affected."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

from labbridge.config import TlsConfig
from labbridge.fleet.broker import Broker as BrokerAddress
from labbridge.fleet.watch import snapshot
from tests.conftest import run
from tests.fleet.broker import Broker
from tests.integration.helpers import eventually, running_lab


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the broker's, and the clients' too: it is its own CA)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed by the TLS tests (apt-get install openssl)"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_mqtts_with_client_certificates(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    broker = Broker(tmp_path, name="tls")
    broker.body = (f"listener {broker.port} 127.0.0.1\nallow_anonymous true\ncafile {cert}\ncertfile {cert}\n"
                   f"keyfile {key}\nrequire_certificate true\n")
    url = f"mqtts://127.0.0.1:{broker.port}"
    tls = {"ca": str(cert), "cert": str(cert), "key": str(key)}

    async def body() -> None:
        extra = {"node": "tls-node", "mqtt": {"url": url, "tls": tls, "keepalive_s": 5}}
        async with running_lab(tmp_path / "good", instruments=1, extra=extra) as lab:
            await eventually(lambda: lab.daemon.uplinks_json()[0]["state"] == "up", what="mqtts link up")
            reader = BrokerAddress.parse(url, tls=TlsConfig(ca=str(cert), cert=str(cert), key=str(key)))
            deadline = time.monotonic() + 20
            while True:
                fleet = (await snapshot(reader)).to_json(time.time())
                if fleet["nodes"] and fleet["nodes"][0]["instruments"]:
                    break
                assert time.monotonic() < deadline, fleet
                await asyncio.sleep(0.2)
            assert fleet["nodes"][0]["node"] == "tls-node" and fleet["nodes"][0]["status"] == "online"
        # Without the CA (the system's trust store does not know this certificate): failed, with the reason.
        unverified = {"node": "tls-bad", "mqtt": {"url": url, "tls": {"cert": str(cert), "key": str(key)}}}
        async with running_lab(tmp_path / "bad", instruments=1, extra=unverified) as lab:
            await eventually(lambda: lab.daemon.uplinks_json()[0]["state"] == "failed", what="mqtts link failed")
            assert "certificate verify failed" in lab.daemon.uplinks_json()[0]["reason"]
            sim = lab.analyzer("an-0", messages=2)
            await sim.run(asyncio.Event())
            assert len(sim.acked) == 10  # the data path does not care
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="results at the LIS")

    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    broker.start()
    try:
        run(body(), timeout=90)
    finally:
        broker.stop()
