"""Topic names and payloads of the MQTT schema (version :data:`SCHEMA_VERSION`; docs/mqtt.md). Pure.

Every payload is a JSON object with ``"v"``: the schema version. A reader ignores fields it does not know and
refuses a payload whose major version it does not know. The payloads are built from link health, campaign stages
and site names only: nothing here ever sees a patient identifier, a sample id or a result value.

Topics (``<node>``, ``<site>`` and ``<id>`` are config ids: ``[a-z0-9][a-z0-9_-]*``, never a wildcard):

* ``labbridge/<node>/status``: ``online`` / ``offline`` (plain text, retained; ``offline`` is the last will)
* ``labbridge/<node>/instruments/<id>/health``: retained JSON, on every change and every ``refresh_s``
* ``labbridge/<node>/sites/<site>/summary``: retained JSON, the same
* ``labbridge/<node>/events``: JSON, not retained: an instrument's state or stage changed
* ``labbridge-bridges/<site>/state``: ``1`` / ``0``, a Mosquitto bridge's notification (config/mosquitto/); outside
  ``labbridge/`` so that the bridge, which carries ``labbridge/#``, never forwards a stale local copy of it
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from labbridge.health.instrument import InstrumentHealth

SCHEMA_VERSION = 1
ROOT = "labbridge"
BRIDGES = "labbridge-bridges"
ONLINE, OFFLINE = "online", "offline"
QOS = 1
# The counters a health payload carries: enough to see a link's trouble at a glance (all of them: /metrics).
HEALTH_COUNTERS = ("messages_received", "results_received", "frames_rejected", "checksum_errors", "timeouts",
                   "connections", "incomplete_transmissions", "decode_errors", "store_failures")
SUBSCRIPTIONS = (f"{ROOT}/+/status", f"{ROOT}/+/instruments/+/health", f"{ROOT}/+/sites/+/summary",
                 f"{ROOT}/+/events")
BRIDGE_STATES = f"{BRIDGES}/+/state"

Kind = Literal["status", "health", "summary", "events", "bridge"]


def status_topic(node: str) -> str:
    return f"{ROOT}/{node}/status"


def health_topic(node: str, instrument: str) -> str:
    return f"{ROOT}/{node}/instruments/{instrument}/health"


def summary_topic(node: str, site: str) -> str:
    return f"{ROOT}/{node}/sites/{site}/summary"


def events_topic(node: str) -> str:
    return f"{ROOT}/{node}/events"


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic of the schema, taken apart: ``key`` is the instrument, site or bridge it is about ("" else)."""

    kind: Kind
    node: str
    key: str = ""


def parse_topic(topic: str) -> Topic | None:
    """The schema topic ``topic`` is, or None for anything else (ignored, never an error)."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == BRIDGES and parts[2] == "state" and parts[1]:
        return Topic("bridge", "", parts[1])
    if len(parts) < 3 or parts[0] != ROOT or not parts[1]:
        return None
    node, rest = parts[1], parts[2:]
    if rest == ["status"]:
        return Topic("status", node)
    if rest == ["events"]:
        return Topic("events", node)
    if len(rest) == 3 and rest[0] == "instruments" and rest[2] == "health":
        return Topic("health", node, rest[1])
    if len(rest) == 3 and rest[0] == "sites" and rest[2] == "summary":
        return Topic("summary", node, rest[1])
    return None


def iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def health_payload(node: str, health: InstrumentHealth, *, state: str, reason: str, since: float, stage: str,
                   refresh_s: float, now: float) -> dict[str, Any]:
    """One instrument's health (``state``/``reason``/``since``: as shown, from ``effective_state``)."""
    last = health.last_message_at or (health.store.last_stored_message_at if health.store else None)
    return {
        "v": SCHEMA_VERSION,
        "node": node,
        "site": health.site,
        "instrument": health.id,
        "name": health.name,
        "driver": health.driver,
        "state": state,
        "reason": reason,
        "since": iso(since),
        "stage": stage,
        "last_message_at": iso(last),
        "counters": {name: getattr(health.counters, name) for name in HEALTH_COUNTERS},
        "published_at": iso(now),
        "refresh_s": refresh_s,
    }


def summary_payload(node: str, site: str, name: str, rows: Iterable[tuple[str, str]], *, dashboard: str | None,
                    refresh_s: float, now: float) -> dict[str, Any]:
    """A site's instruments per state and per stage (``rows``: each instrument's (state, stage))."""
    states: dict[str, int] = {}
    stages: dict[str, int] = {}
    count = 0
    for state, stage in rows:
        count += 1
        states[state] = states.get(state, 0) + 1
        stages[stage] = stages.get(stage, 0) + 1
    return {"v": SCHEMA_VERSION, "node": node, "site": site, "name": name, "instruments": count,
            "states": dict(sorted(states.items())), "stages": dict(sorted(stages.items())),
            "dashboard": dashboard, "published_at": iso(now), "refresh_s": refresh_s}


def event_payload(node: str, *, kind: Literal["state", "stage"], instrument: str, site: str, before: str | None,
                  after: str, reason: str, now: float) -> dict[str, Any]:
    """A change of an instrument's state or campaign stage (``before`` None: first seen since the node started)."""
    return {"v": SCHEMA_VERSION, "node": node, "type": kind, "instrument": instrument, "site": site,
            "from": before, "to": after, "reason": reason, "at": iso(now)}


def supported(payload: Mapping[str, Any]) -> bool:
    """A payload this code can read: a JSON object whose ``v`` is a known major version."""
    return isinstance(payload.get("v"), int) and payload["v"] == SCHEMA_VERSION
