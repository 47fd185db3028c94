"""`labbridge status` against a real daemon: grouped by site, and an exit code a script or a monitoring
check can act on (0 all up or idle and no dead letter, 1 something needs attention, 2 no daemon)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab
from tests.integration.test_store_forward import labbridge


def test_status_exit_codes_say_whether_someone_must_look(tmp_path: Path) -> None:
    async def body() -> str:
        async with running_lab(tmp_path, instruments=1, http=True) as lab:
            assert lab.daemon.http_address is not None
            url = "http://{}:{}".format(*lab.daemon.http_address)
            runner = lab.daemon.runners["an-0"]
            code, out, err = await labbridge("status", "--url", url)
            assert code == 1, err
            assert "an-0 is down" in out and "1 thing(s) need attention" in out
            site = lab.config.sites[0]
            assert f"{site.name} ({site.id}): 1 down" in out  # grouped by site, its name first

            assert runner.bound is not None
            _, writer = await asyncio.open_connection(*runner.bound)  # the analyzer connects and stays
            await eventually(lambda: runner.health.state == "up", what="the link up")
            code, out, err = await labbridge("status", "--url", url)
            assert code == 0 and "all links up or idle, no dead letter" in out, out + err
            code, out, _ = await labbridge("status", "--url", url, "--json")
            seen = json.loads(out)
            assert code == 0 and seen["attention"] == [] and seen["instruments"][0]["state"] == "up"
            writer.close()

            lab.lis.mode = "AE"
            sim = lab.analyzer("an-0", messages=1)
            await sim.run(asyncio.Event())
            await eventually(lambda: lab.daemon.relays[0].health.dead_lettered == 1, what="a dead letter")
            code, out, _ = await labbridge("status", "--url", url, "--json")
            attention = json.loads(out)["attention"]
            assert code == 1 and any("1 dead letter(s)" in line for line in attention), attention
            return url

    url = run(body(), timeout=90)
    code, _, err = run(labbridge("status", "--url", url))  # the daemon is gone
    assert code == 2 and "cannot reach the labbridge daemon" in err


def test_status_shows_the_mqtt_broker_link_and_a_broker_down_needs_attention(tmp_path: Path) -> None:
    """A node whose broker does not answer (a closed loopback port) goes on with its data path; `status`
    shows the broker's link and says it needs attention (the fleet view does not see this node)."""
    from tests.fleet.broker import free_port

    async def body() -> None:
        mqtt = {"mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}", "node": "site-a"}}
        async with running_lab(tmp_path, instruments=1, http=True, extra=mqtt) as lab:
            assert lab.daemon.http_address is not None
            url = "http://{}:{}".format(*lab.daemon.http_address)
            await eventually(lambda: lab.daemon.uplinks_json()[0]["state"] == "down", what="the broker link down")
            code, out, err = await labbridge("status", "--url", url)
            assert code == 1, err
            assert "MQTT mqtt://127.0.0.1:" in out and "down" in out
            assert any(line.strip().startswith("- MQTT broker") for line in out.splitlines())
            code, out, _ = await labbridge("status", "--url", url, "--json")
            seen = json.loads(out)
            assert seen["uplinks"][0]["state"] == "down"
            assert any("MQTT broker" in line for line in seen["attention"])

    run(body(), timeout=90)
