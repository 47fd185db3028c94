"""A daemon with ``[mqtt]`` publishing to a real Mosquitto on loopback (tests/fleet/broker.py).

What is checked: the retained health of every instrument, the site summaries and ``online``; events for state and
stage changes; that every key of every payload belongs to the documented schema and no sample id is ever on the
wire; a broker stopped and started again while analyzers send (nothing lost on the data path, the health
published again, the broker's link down then up in /api/health and /metrics); ``offline`` at a clean stop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from prometheus_client.parser import text_string_to_metric_families

from labbridge.fleet import topics
from labbridge.fleet.broker import Broker as BrokerAddress
from labbridge.fleet.watch import snapshot
from tests.conftest import run
from tests.fleet.broker import Broker, mosquitto
from tests.integration.helpers import eventually, running_lab

HEALTH_KEYS = {"v", "node", "site", "instrument", "name", "driver", "state", "reason", "since", "stage",
               "last_message_at", "counters", "published_at", "refresh_s"}
SUMMARY_KEYS = {"v", "node", "site", "name", "instruments", "states", "stages", "dashboard", "published_at",
                "refresh_s"}
EVENT_KEYS = {"v", "node", "type", "instrument", "site", "from", "to", "reason", "at"}


class Recorder:
    """Every message the broker passes on ``labbridge/#``, as a live subscriber sees it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for topic, payload, _ in self.messages:
            where = topics.parse_topic(topic)
            if where is not None and where.kind == kind and payload:
                out.append(json.loads(payload))
        return out


@asynccontextmanager
async def recording(broker: Broker) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-recorder") as client:
            await client.subscribe("labbridge/#", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                recorder.messages.append((str(message.topic), payload, bool(message.retain)))

    task = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield recorder
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def mqtt_extra(broker: Broker, **mqtt: Any) -> dict[str, Any]:
    return {"node": "arlon-node", "mqtt": {"url": broker.url, "keepalive_s": 5, **mqtt},
            "health": {"check_interval_s": 0.2}}


async def fleet_of(broker: Broker) -> dict[str, Any]:
    return (await snapshot(BrokerAddress.parse(broker.url))).to_json(time.time())


def test_health_summaries_status_and_events_go_to_the_broker_and_nothing_else(tmp_path: Path) -> None:
    async def body() -> None:
        with mosquitto(tmp_path) as broker:
            async with recording(broker) as seen, running_lab(tmp_path, instruments=2, extra=mqtt_extra(broker),
                                                              http=True) as lab:
                sims = [lab.analyzer("an-0", messages=5), lab.analyzer("an-1", messages=5)]
                await asyncio.gather(*(sim.run(asyncio.Event()) for sim in sims))
                acked = {a for sim in sims for a in sim.acked}
                await eventually(lambda: acked <= lab.lis.delivered, what="delivery to the LIS")
                await lab.daemon.campaign.rollback("an-1", actor="test", reason="a test of events")

                def has_stage_event() -> bool:
                    return any(e["type"] == "stage" and e["to"] == "rolled-back" for e in seen.payloads("events"))

                await eventually(has_stage_event, what="the stage event")
                fleet = await fleet_of(broker)
                [node] = fleet["nodes"]
                assert node["node"] == "arlon-node" and node["status"] == "online"
                by_id = {i["instrument"]: i for i in node["instruments"]}
                assert set(by_id) == {"an-0", "an-1"}
                assert by_id["an-1"]["stage"] == "rolled-back" and by_id["an-0"]["stage"] == "live"
                assert by_id["an-0"]["counters"]["messages_received"] >= 1
                assert {s["site"] for s in node["sites"]} == {"arlon", "virton"}
                host, port = lab.daemon.http_address or ("", 0)
                assert node["dashboard"] == f"http://{host}:{port}/"
                # The state events: each analyzer connected.
                states = [e for e in seen.payloads("events") if e["type"] == "state"]
                assert {e["instrument"] for e in states} == {"an-0", "an-1"}
            # A clean stop says offline at once.
            await eventually(lambda: (b"offline" in [p for t, p, _ in seen.messages if t.endswith("/status")][-1:]),
                             what="offline at the stop")
            assert (await fleet_of(broker))["nodes"][0]["status"] == "offline"
        # Only the schema's keys, ever; no sample id anywhere on the wire.
        samples = {a[1] for a in acked}
        assert samples
        for topic, payload, _ in seen.messages:
            where = topics.parse_topic(topic)
            assert where is not None, topic
            text = payload.decode()
            assert not any(sample in text for sample in samples), topic
            if where.kind == "status":
                assert text in ("online", "offline")
                continue
            data = json.loads(text)
            assert data["v"] == topics.SCHEMA_VERSION
            keys = {"health": HEALTH_KEYS, "summary": SUMMARY_KEYS, "events": EVENT_KEYS}[where.kind]
            assert set(data) <= keys, (topic, set(data) - keys)
            if where.kind == "health":
                assert set(data["counters"]) == set(topics.HEALTH_COUNTERS)

    run(body(), timeout=90)


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        return await (resp.json() if url.endswith("/api/health") else resp.text())


def test_a_broker_restarted_while_analyzers_send_loses_nothing_and_gets_the_health_again(tmp_path: Path) -> None:
    async def body() -> None:
        with mosquitto(tmp_path) as broker:
            async with running_lab(tmp_path, instruments=3, extra=mqtt_extra(broker), http=True) as lab, \
                    aiohttp.ClientSession() as http:
                host, port = lab.daemon.http_address or ("", 0)
                base = f"http://{host}:{port}"
                await eventually(lambda: lab.daemon.uplinks_json()[0]["state"] == "up", what="broker link up")
                stop = asyncio.Event()
                sims = [lab.analyzer(f"an-{i}", messages=40) for i in range(3)]
                for sim in sims:
                    sim.interval = (0.02, 0.05)
                sending = [asyncio.create_task(sim.run(stop)) for sim in sims]
                await eventually(lambda: all(sim.acked for sim in sims), what="first results")
                broker.stop()
                await eventually(lambda: lab.daemon.uplinks_json()[0]["state"] == "down", what="broker link down")
                health = await _get(http, base + "/api/health")
                [uplink] = health["uplinks"]
                assert uplink["id"] == "mqtt" and uplink["state"] == "down" and uplink["broker"] == broker.url
                acked_while_down = sum(len(sim.acked) for sim in sims)
                await asyncio.sleep(1.0)
                assert sum(len(sim.acked) for sim in sims) > acked_while_down  # the data path goes on
                metrics = {f.name: f for f in text_string_to_metric_families(await _get(http, base + "/metrics"))}
                down = [s for s in metrics["labbridge_uplink_state"].samples if s.labels["state"] == "down"]
                assert [s.value for s in down] == [1.0]
                broker.start()  # the same port, and no retained message (persistence off)
                await eventually(lambda: lab.daemon.uplinks_json()[0]["state"] == "up", timeout=40,
                                 what="broker link up again")
                await asyncio.gather(*sending)
                acked = {a for sim in sims for a in sim.acked}
                assert len(acked) == 3 * 40 * 5
                await eventually(lambda: acked <= lab.lis.delivered, what="every result at the LIS")
                assert lab.lis.duplicates == 0

                async def republished() -> bool:
                    fleet = await fleet_of(broker)
                    return bool(fleet["nodes"]) and len(fleet["nodes"][0]["instruments"]) == 3 \
                        and fleet["nodes"][0]["status"] == "online"

                deadline = time.monotonic() + 20
                while not await republished():
                    assert time.monotonic() < deadline, "the health was not published again"
                    await asyncio.sleep(0.2)
                link = lab.daemon.uplinks_json()[0]
                assert link["connects"] >= 2 and link["disconnects"] >= 1 and link["published"] > 0
                metrics = {f.name: f for f in text_string_to_metric_families(await _get(http, base + "/metrics"))}
                assert [s.value for s in metrics["labbridge_uplink_connects"].samples
                        if s.name.endswith("_total")] == [float(link["connects"])]

    run(body(), timeout=120)
