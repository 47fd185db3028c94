"""The MQTT publisher's CPU: 100 instruments changing state, published to a real Mosquitto on loopback.

In one process, on the daemon's event loop: 100 InstrumentHealth objects (six sites) whose state flips between
``up`` and ``idle`` in turn, each every ``every_s`` seconds, and the daemon's MqttPublisher (default settings:
QoS 1, looking every 5 s and on each change, refresh every 60 s) publishing them to Mosquitto (started here on a
free loopback port, as tests/fleet/broker.py does). The same flipping without a publisher is the baseline; the
publisher's share is the difference of the process's CPU time over the same wall time, in % of one core. The
messages the broker confirmed (PUBACK) are counted: each change is its instrument's health and an event (2), plus
its site's summary at most once a second.

    .venv/bin/python -m benchmarks --only mqtt
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, Ratio
from labbridge import aio, logs
from labbridge.config import MqttConfig, SiteConfig
from labbridge.fleet.publisher import MqttPublisher
from labbridge.health.instrument import InstrumentHealth
from tests.fleet.broker import mosquitto

INSTRUMENTS = 100
SITES = [SiteConfig(id=f"site-{k}", name=f"Site {k}") for k in range(6)]
TARGET_PERCENT = 2.0  # the bound: at most 2 % of one core


def _healths(n: int) -> list[InstrumentHealth]:
    return [InstrumentHealth(id=f"an-{i:03d}", site=f"site-{i % 6}", driver="astm-generic", transport="tcp-server",
                             state="up", reason="analyzer connected from 127.0.0.1:40000") for i in range(n)]


async def _stages() -> dict[str, str]:
    return {}


async def _flip(healths: list[InstrumentHealth], every_s: float, seconds: float) -> int:
    """Each instrument changes state every ``every_s`` (spread evenly); returns the changes made."""
    step = every_s / len(healths)
    changes = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        health = healths[changes % len(healths)]
        if health.state == "up":
            health.set_state("idle", "waiting for the next transmission")
        else:
            health.set_state("up", "analyzer connected from 127.0.0.1:40000")
        changes += 1
        await asyncio.sleep(step)
    return changes


async def _one(port: int | None, every_s: float, seconds: float) -> tuple[float, float, int, int]:
    """(CPU seconds, wall seconds, changes, messages confirmed) of one run; ``port`` None: no publisher."""
    healths = _healths(INSTRUMENTS)
    publisher = task = None
    if port is not None:
        publisher = MqttPublisher(MqttConfig(url=f"mqtt://127.0.0.1:{port}"), node="bench",
                                  healths=lambda: healths, stages=_stages, sites=lambda: SITES,
                                  dashboard=lambda: None, check_s=5.0)
        task = asyncio.create_task(publisher.run())
        while publisher.link.state != "up" or len(publisher.pending):  # noqa: ASYNC110 (the publisher's books)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the first full publication done
    published = publisher.link.published if publisher else 0
    cpu, wall = time.process_time(), time.monotonic()
    changes = await _flip(healths, every_s, seconds)
    while publisher is not None and len(publisher.pending):  # noqa: ASYNC110 (the publisher's books)
        await asyncio.sleep(0.01)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    deadline = time.monotonic() + 5.0  # the last messages' PUBACKs (not counted in the CPU above)
    while publisher is not None and publisher.link.published - published < 2 * changes \
            and time.monotonic() < deadline:  # noqa: ASYNC110 (the publisher's books)
        await asyncio.sleep(0.05)
    confirmed = (publisher.link.published - published) if publisher else 0
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return cpu, wall, changes, confirmed


def run(seconds: float, runs: int, every_s: tuple[float, ...] = (10.0, 1.0)) -> tuple[list[Figure], list[Ratio],
                                                                                      list[str]]:
    logs.configure("warning")
    figures: list[Figure] = []
    ratios: list[Ratio] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="labbridge-bench-mqtt-") as folder, mosquitto(Path(folder)) as broker:
        for every in every_s:
            shares, rates, per_change = [], [], []
            for _ in range(runs):
                base_cpu, base_wall, _, _ = aio.run(_one(None, every, seconds))
                cpu, wall, changes, confirmed = aio.run(_one(broker.port, every, seconds))
                shares.append(max(0.0, (cpu / wall - base_cpu / base_wall) * 100))
                rates.append(confirmed / wall)
                per_change.append(confirmed / changes)
            label = f"{INSTRUMENTS} instruments, each changing state every {every:g} s"
            figures.append(Figure.of("mqtt", f"{label}: publisher CPU", "% of one core", shares,
                                     higher_is_better=False, changes_per_s=INSTRUMENTS / every))
            figures.append(Figure.of("mqtt", f"{label}: messages confirmed by the broker", "messages/s", rates))
            figures.append(Figure.of("mqtt", f"{label}: messages confirmed per change (health and event: >= 2)",
                                     "messages", per_change, higher_is_better=False))
            worst = max(shares)
            ratios.append(Ratio("mqtt", f"{label}: headroom to {TARGET_PERCENT:g} % of a core (worst run)",
                                TARGET_PERCENT / worst if worst else float("inf"), target=1.0))
        notes.append(f"mqtt: Mosquitto {broker.url}, QoS 1, {seconds:g} s per run; CPU = process time with the "
                     "publisher minus without, over the same flipping")
    return figures, ratios, notes
