"""The pure parts of the fleet: the pending queue (bounded, latest per topic), topics, the view's judgment of a
node (online, stale, offline) and of bad payloads, the [mqtt] config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labbridge.config import MqttConfig, SiteConfig, load_config, parse_config
from labbridge.errors import ConfigError
from labbridge.fleet import topics
from labbridge.fleet.broker import Broker
from labbridge.fleet.publisher import MqttPublisher, PendingMessages
from labbridge.fleet.view import FleetView, needs_attention
from labbridge.health.instrument import InstrumentHealth

T0 = 1_800_000_000.0


def test_pending_keeps_the_latest_value_per_topic_and_bounds_the_events() -> None:
    pending = PendingMessages(event_limit=3)
    for n in range(100):
        pending.put("labbridge/n/instruments/a/health", f"{n}".encode())
        pending.put("labbridge/n/instruments/b/health", f"{n}".encode())
    for n in range(5):
        pending.event("labbridge/n/events", f"e{n}".encode())
    assert len(pending) == 2 + 3 and pending.dropped == 2
    taken = pending.take(10)
    assert taken == [("labbridge/n/events", b"e2", False), ("labbridge/n/events", b"e3", False),
                     ("labbridge/n/events", b"e4", False), ("labbridge/n/instruments/a/health", b"99", True),
                     ("labbridge/n/instruments/b/health", b"99", True)]
    # Not confirmed by the broker: back first in line, unless a newer value came meanwhile.
    pending.put("labbridge/n/instruments/a/health", b"100")
    pending.put_back(taken)
    assert pending.take(10) == [*taken[:3], ("labbridge/n/instruments/b/health", b"99", True),
                                ("labbridge/n/instruments/a/health", b"100", True)]
    assert len(pending) == 0


def test_topics_are_parsed_back_and_anything_else_is_ignored() -> None:
    assert topics.parse_topic(topics.health_topic("arlon", "chem-1")) == topics.Topic("health", "arlon", "chem-1")
    assert topics.parse_topic(topics.summary_topic("arlon", "arlon")) == topics.Topic("summary", "arlon", "arlon")
    assert topics.parse_topic(topics.status_topic("arlon")) == topics.Topic("status", "arlon")
    assert topics.parse_topic(topics.events_topic("arlon")) == topics.Topic("events", "arlon")
    assert topics.parse_topic("labbridge-bridges/arlon/state") == topics.Topic("bridge", "", "arlon")
    for other in ("labbridge/arlon", "labbridge/arlon/instruments/x", "other/arlon/status", "labbridge//status",
                  "labbridge/arlon/instruments/x/health/more"):
        assert topics.parse_topic(other) is None


def _health(node: str, ident: str, state: str, *, published: float, refresh_s: float = 60.0) -> bytes:
    return json.dumps({"v": 1, "node": node, "site": "arlon", "instrument": ident, "state": state, "reason": "r",
                       "stage": "live", "published_at": topics.iso(published), "refresh_s": refresh_s}).encode()


def test_a_node_is_online_then_stale_when_nothing_comes_then_offline_by_its_will() -> None:
    view = FleetView()
    view.apply("labbridge/n1/status", b"online", retained=True, now=T0)
    view.apply("labbridge/n1/instruments/a/health", _health("n1", "a", "up", published=T0 - 10), retained=True,
               now=T0)
    assert view.to_json(T0)["nodes"][0]["status"] == "online"
    assert view.to_json(T0 + 80)["nodes"][0]["status"] == "online"  # heard at T0 - 10, refresh 60: within 90 s
    stale = view.to_json(T0 + 81)
    assert stale["nodes"][0]["status"] == "stale" and "may be cut" in stale["nodes"][0]["reason"]
    assert any(line.startswith("node n1: stale") for line in needs_attention(stale))
    assert stale["sites"][0]["attention"] == ["n1/a: stale"]
    view.apply("labbridge/n1/instruments/a/health", _health("n1", "a", "down", published=T0 + 81), retained=False,
               now=T0 + 82)
    back = view.to_json(T0 + 82)
    assert back["nodes"][0]["status"] == "online"
    assert needs_attention(back) == ["n1/a: down: r"]
    view.apply("labbridge/n1/status", b"offline", retained=False, now=T0 + 83)
    assert view.to_json(T0 + 83)["nodes"][0]["status"] == "offline"


def test_bad_payloads_are_counted_and_named_never_a_crash() -> None:
    view = FleetView()
    view.apply("labbridge/n1/instruments/a/health", b"{not json", retained=True, now=T0)
    view.apply("labbridge/n1/instruments/b/health", json.dumps({"v": 2}).encode(), retained=True, now=T0)
    view.apply("labbridge/n1/status", b"maybe", retained=True, now=T0)
    view.apply("labbridge/n1/something/else", b"x", retained=True, now=T0)
    fleet = view.to_json(T0)
    assert fleet["rejected"] == 3 and "status" in (fleet["last_rejected"] or "")
    assert fleet["nodes"][0]["instruments"] == [] and fleet["nodes"][0]["status"] == "unknown"
    # An empty retained payload clears the topic.
    view.apply("labbridge/n1/instruments/c/health", _health("n1", "c", "up", published=T0), retained=True, now=T0)
    view.apply("labbridge/n1/instruments/c/health", b"", retained=True, now=T0)
    assert view.to_json(T0)["nodes"][0]["instruments"] == []


def test_mqtt_config_and_broker_urls(tmp_path: Path) -> None:
    base = {"node": "n", "sites": [{"id": "s", "name": "S"}]}
    config = parse_config({**base, "mqtt": {"url": "mqtts://broker.example:8884", "username": "u"}})
    assert config.mqtt is not None and config.mqtt.refresh_s == 60.0 and config.mqtt.keepalive_s == 30
    assert Broker.from_config(config.mqtt).url == "mqtts://broker.example:8884"
    assert Broker.parse("mqtt://10.0.0.1").port == 1883 and Broker.parse("mqtts://h").port == 8883
    for bad in ("http://h:1883", "mqtt://h:1883/path", "mqtt://"):
        with pytest.raises(ConfigError):
            parse_config({**base, "mqtt": {"url": bad}})
        with pytest.raises(ConfigError):
            Broker.parse(bad)
    with pytest.raises(ConfigError, match="not both"):
        parse_config({**base, "mqtt": {"url": "mqtt://h", "password": "a", "password_file": "f"}})
    (tmp_path / "pw").write_text("from-the-file\nignored\n", encoding="utf-8")
    (tmp_path / "n.toml").write_text('node = "n"\n[mqtt]\nurl = "mqtt://h"\nusername = "u"\npassword_file = "pw"\n',
                                     encoding="utf-8")
    loaded = load_config(tmp_path / "n.toml").mqtt
    assert loaded is not None and Broker.from_config(loaded).password == "from-the-file"  # relative to the file
    with pytest.raises(ConfigError, match="password_file"):
        Broker.from_config(loaded.model_copy(update={"password_file": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match=r"mqtt\.node"):
        parse_config({**base, "mqtt": {"url": "mqtt://h", "node": "a/#"}})


def test_aiomqtt_is_imported_only_when_mqtt_is_configured() -> None:
    """A daemon without [mqtt] loads neither labbridge.fleet nor aiomqtt; with it, aiomqtt only once it connects."""
    code = """
import sys
from labbridge.config import parse_config
from labbridge.runtime.daemon import Daemon
base = {"node": "n", "store": {"path": "x.db"}, "http": {"enabled": False}, "sites": [{"id": "s", "name": "S"}]}
Daemon(parse_config(base))
print(sorted(m for m in ("labbridge.fleet", "aiomqtt", "paho") if m in sys.modules))
Daemon(parse_config({**base, "mqtt": {"url": "mqtt://127.0.0.1:1"}}))
print(sorted(m for m in ("labbridge.fleet", "aiomqtt", "paho") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "['labbridge.fleet']"]


def _publisher(healths: list[InstrumentHealth], stages: dict[str, str]) -> MqttPublisher:
    async def read_stages() -> dict[str, str]:
        return stages

    return MqttPublisher(MqttConfig(url="mqtt://127.0.0.1:1", refresh_s=60), node="n", healths=lambda: healths,
                         stages=read_stages, sites=lambda: [SiteConfig(id="arlon", name="Arlon")],
                         dashboard=lambda: "http://127.0.0.1:8470/", check_s=5.0)


def _topics(publisher: MqttPublisher) -> list[tuple[str, dict[str, Any] | str]]:
    out: list[tuple[str, dict[str, Any] | str]] = []
    for topic, payload, _ in publisher.pending.take(1000):
        out.append((topic, payload.decode() if topic.endswith("/status") else json.loads(payload)))
    return out


def test_the_publisher_queues_what_changed_with_its_event_and_everything_at_a_refresh() -> None:
    healths = [InstrumentHealth(id=f"a{i}", site="arlon", driver="astm-generic", transport="tcp-server")
               for i in range(3)]
    publisher = _publisher(healths, {"a0": "live", "a1": "validating", "a2": "live"})
    publisher._stages = {"a0": "live", "a1": "validating", "a2": "live"}
    publisher.look(T0)  # the first look: everything, and the observers attached
    first = _topics(publisher)
    assert [t for t, _ in first] == ["labbridge/n/status", "labbridge/n/instruments/a0/health",
                                     "labbridge/n/instruments/a1/health", "labbridge/n/instruments/a2/health",
                                     "labbridge/n/sites/arlon/summary"]
    summary = first[-1][1]
    assert isinstance(summary, dict) and summary["states"] == {"connecting": 3}
    assert summary["stages"] == {"live": 2, "validating": 1} and summary["dashboard"] == "http://127.0.0.1:8470/"
    healths[1].set_state("up", "analyzer connected from 127.0.0.1:5000")  # the observer notes it
    assert publisher._dirty == {"a1"}
    publisher.look(T0 + 1, publisher._dirty)
    changed = _topics(publisher)
    assert [t for t, _ in changed][:2] == ["labbridge/n/events", "labbridge/n/instruments/a1/health"]
    event, health = changed[0][1], changed[1][1]
    assert isinstance(event, dict) and (event["type"], event["from"], event["to"]) == ("state", "connecting", "up")
    assert isinstance(health, dict) and health["state"] == "up" and health["stage"] == "validating"
    publisher.look(T0 + 2, set())  # nothing changed: nothing queued
    assert _topics(publisher) == []
    publisher.look(T0 + 61, set())  # refresh_s later: everything again
    assert len(_topics(publisher)) == 5


def test_a_refusal_for_good_is_told_apart_from_an_outage() -> None:
    import aiomqtt
    from aiomqtt.exceptions import MqttConnectError

    from labbridge.fleet.publisher import _refused

    assert "username and password" in (_refused(MqttConnectError(5)) or "")
    assert "username and password" in (_refused(MqttConnectError(4)) or "")
    assert "[mqtt.tls]" in (_refused(aiomqtt.MqttError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
                                                         "failed")) or "")
    assert _refused(aiomqtt.MqttError("[Errno 111] Connection refused")) is None
    assert _refused(MqttConnectError(3)) is None  # server unavailable: an outage


def test_the_fleet_command_says_when_the_broker_cannot_be_reached() -> None:
    from tests.fleet.broker import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "fleet", "--broker", url], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and f"cannot read the fleet: {url}" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "fleet", "--broker", "http://h"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "expected mqtt://host[:port]" in proc.stderr
