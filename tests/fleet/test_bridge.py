"""A site's Mosquitto bridged to a central one exactly as config/mosquitto/ and docs/deploy.md give them: the site
node publishes to its own broker, the fleet view reads the center (with the center's users and ACL).

Checked: the center shows the node and its instruments; when the site's link to the center is cut the site goes
on (its analyzer is still acknowledged, its node's link to its own broker stays up) and the center says the bridge
is disconnected; a center restarted with nothing retained gets the node's whole health again as soon as the
bridge is back, long before the node's hourly refresh (Mosquitto sends the site's retained messages over a
reconnected bridge, and the node, told by the bridge's notification, publishes everything again).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from labbridge.fleet.broker import Broker as BrokerAddress
from labbridge.fleet.view import needs_attention
from labbridge.fleet.watch import snapshot
from tests.conftest import run
from tests.fleet.broker import Broker, center_and_site
from tests.integration.helpers import eventually, running_lab

PASSWORD = "s3cret-for-the-test"


async def center_fleet(center: Broker) -> dict[str, Any]:
    address = BrokerAddress.parse(center.url, username="fleet", password=PASSWORD)
    return (await snapshot(address, settle_s=0.3)).to_json(time.time())


async def until(check: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        fleet: dict[str, Any] = await check()
        if fleet:
            return fleet
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


def test_a_site_bridged_to_the_center_as_documented(tmp_path: Path) -> None:
    center, site = center_and_site(tmp_path, password=PASSWORD)

    async def node_seen(instruments: int) -> dict[str, Any]:
        fleet = await center_fleet(center)
        nodes = {n["node"]: n for n in fleet["nodes"]}
        node = nodes.get("arlon-node")
        ok = node and node["status"] == "online" and len(node["instruments"]) == instruments \
            and fleet["bridges"].get("arlon") == "connected"
        return fleet if ok else {}

    async def body() -> None:
        extra = {"node": "arlon-node", "mqtt": {"url": site.url, "keepalive_s": 5, "refresh_s": 3600},
                 "health": {"check_interval_s": 0.2}}
        async with running_lab(tmp_path, instruments=2, extra=extra) as lab:
            fleet = await until(lambda: node_seen(2), "the node at the center")
            assert {i["instrument"] for i in fleet["nodes"][0]["instruments"]} == {"an-0", "an-1"}
            assert not needs_attention(fleet) or all("down" in line for line in needs_attention(fleet))

            center.stop()  # the site's link to the center is cut
            sim = lab.analyzer("an-0", messages=3)
            await sim.run(asyncio.Event())
            assert len(sim.acked) == 15  # the site goes on
            await eventually(lambda: acked_at_lis(lab, sim), what="results at the site's LIS")
            assert lab.daemon.uplinks_json()[0]["state"] == "up"  # its own broker is there

            with capture_logs() as logs:
                center.start()  # back, with nothing retained (persistence off)
                fleet = await until(lambda: node_seen(2), "the node's health again at the center", timeout=60)
                await eventually(lambda: any(e["event"] == "mqtt_bridge_back" for e in logs),
                                 what="the node told that its bridge is back")
            by_id = {i["instrument"]: i for i in fleet["nodes"][0]["instruments"]}
            assert by_id["an-0"]["counters"]["messages_received"] == 3  # as it is now, not as it was

            site.stop()  # the site's broker gone: the center is told by the bridge's last will
            fleet = await until(lambda: _bridge_down(center), "the bridge disconnected at the center")
            assert "bridge arlon: disconnected" in needs_attention(fleet)
            site.start()
            await until(lambda: node_seen(2), "the site back", timeout=60)

    center.start()
    site.start()
    try:
        run(body(), timeout=180)
    finally:
        site.stop()
        center.stop()


def acked_at_lis(lab: Any, sim: Any) -> bool:
    return set(sim.acked) <= lab.lis.delivered


async def _bridge_down(center: Broker) -> dict[str, Any]:
    fleet = await center_fleet(center)
    return fleet if fleet["bridges"].get("arlon") == "disconnected" else {}
