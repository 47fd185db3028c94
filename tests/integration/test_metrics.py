"""/metrics over a real daemon, read with Prometheus' own parser: every per-instrument counter, the state, the
last message time, outbox depth and oldest age, the delivery latency histogram, build info; and a scrape with
dead letters in the store."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from labbridge import BUILD, __version__
from labbridge.health.instrument import COUNTER_NAMES
from tests.conftest import run
from tests.integration.helpers import eventually, running_lab


def metrics_in_shipped_docs() -> set[str]:
    """The metric names docs/prometheus-alerts.yml and docs/grafana-dashboard.json use."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = (docs / "prometheus-alerts.yml").read_text()
    return set(re.findall(r"labbridge_[a-z_]+", rules + "\n".join(exprs)))


def test_metrics_name_every_counter_and_the_delivery_figures(tmp_path: Path) -> None:
    used = metrics_in_shipped_docs()

    async def body() -> None:
        async with running_lab(tmp_path, instruments=3, http=True) as lab:
            assert lab.daemon.http_address is not None
            url = "http://{}:{}/metrics".format(*lab.daemon.http_address)
            sim = lab.analyzer("an-0", messages=2)
            await sim.run(asyncio.Event())
            await eventually(lambda: lab.daemon.relays[0].health.delivered == 2, what="both delivered")
            lab.lis.mode = "AE"  # then a dead letter: a scrape must still work
            await lab.analyzer("an-1", messages=1).run(asyncio.Event())
            await eventually(lambda: lab.daemon.relays[0].health.dead_lettered == 1, what="a dead letter")
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                assert resp.status == 200
                text = await resp.text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values()
                       for s in f.samples}

            for name in COUNTER_NAMES:  # every per-instrument counter, for every instrument
                for instrument in ("an-0", "an-1", "an-2"):
                    assert (f"labbridge_{name}_total", (("instrument", instrument),)) in samples, name
            assert samples["labbridge_messages_received_total", (("instrument", "an-0"),)] == 2.0
            shown = {dict(k[1])["state"]: v for k, v in samples.items() if k[0] == "labbridge_instrument_state"
                     and dict(k[1])["instrument"] == "an-2"}
            assert shown["down"] == 1.0 and sum(shown.values()) == 1.0
            assert samples["labbridge_last_message_timestamp_seconds", (("instrument", "an-0"),)] > 0
            assert ("labbridge_last_message_timestamp_seconds", (("instrument", "an-2"),)) not in samples
            assert samples["labbridge_outbox_depth", (("destination", "lis"),)] == 0.0
            assert samples["labbridge_outbox_oldest_pending_age_seconds", (("destination", "lis"),)] == 0.0
            assert samples["labbridge_delivery_latency_seconds_count", (("destination", "lis"),)] == 2.0
            assert samples["labbridge_delivery_latency_seconds_bucket", (("destination", "lis"), ("le", "+Inf"))] == 2
            assert samples["labbridge_outbox_items", (("destination", "lis"), ("state", "dead"))] == 1.0
            [info] = [k for k in samples if k[0] == "labbridge_build_info"]
            assert dict(info[1])["version"] == __version__
            assert dict(info[1])["cores"] == ("compiled" if BUILD.compiled else "pure")
            # the shipped alert rules and Grafana dashboard use only metrics this scrape has
            exposed = {name for name, _ in samples}
            assert len(used) >= 10 and used <= exposed, used - exposed

    run(body(), timeout=90)


def test_a_result_waiting_for_the_lis_shows_its_age(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, http=True) as lab:
            assert lab.daemon.http_address is not None
            await lab.lis.go_down()
            await lab.analyzer("an-0", messages=1).run(asyncio.Event())
            await asyncio.sleep(1.2)
            async with aiohttp.ClientSession() as http, http.get(
                    "http://{}:{}/metrics".format(*lab.daemon.http_address)) as resp:
                text = await resp.text()
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(text) for s in f.samples}
            assert samples["labbridge_outbox_depth", (("destination", "lis"),)] == 1.0
            assert samples["labbridge_outbox_oldest_pending_age_seconds", (("destination", "lis"),)] >= 1.0

    run(body(), timeout=60)
