"""The fleet as the broker shows it: every node, site and instrument from their topics (pure; docs/mqtt.md).

:class:`FleetView` is fed the broker's messages (``apply``) and gives the fleet as JSON (``to_json``). It never
needs a store. A node is:

* ``offline``: its status says so (its last will: the broker lost it, 1.5 keep-alives after it last heard from
  it, or at once when its connection dropped; or it stopped cleanly);
* ``stale``: online by its last word, but nothing from it for more than 1.5 of its refresh periods (its site's
  link to this broker is cut, or the node hangs): what is shown is as it was then;
* ``online``: else; ``unknown`` when only its health was seen, not its status.

Time: a message received live counts from when it came; a retained one (sent before this view subscribed) from
its ``published_at`` (the node's clock). Bad payloads are counted and named in ``rejected``, never a crash.
"""

from __future__ import annotations

import calendar
import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labbridge.fleet import topics

STALE_AFTER = 1.5  # refresh periods without a word from a node: stale
ATTENTION_STATES = frozenset({"down", "failed", "degraded"})
RECENT_EVENTS = 50


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


@dataclass
class _Node:
    name: str
    status: str | None = None
    heard_at: float = 0.0
    refresh_s: float = 60.0
    dashboard: str | None = None
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    instruments: dict[str, dict[str, Any]] = field(default_factory=dict)

    def heard(self, at: float) -> None:
        self.heard_at = max(self.heard_at, at)

    def liveness(self, now: float) -> tuple[str, str]:
        if self.status == topics.OFFLINE:
            return "offline", "the node is offline (its last will, or a clean stop)"
        quiet = now - self.heard_at
        if self.heard_at and quiet > STALE_AFTER * self.refresh_s:
            return "stale", (f"nothing from this node for {int(quiet)} s (it publishes every {self.refresh_s:g} s): "
                             "its link to this broker may be cut; what is shown is as it was then")
        if self.status is None:
            return "unknown", "no status seen for this node yet"
        return "online", "publishing"


@dataclass
class FleetView:
    nodes: dict[str, _Node] = field(default_factory=dict)
    bridges: dict[str, str] = field(default_factory=dict)  # bridge name -> "connected" / "disconnected"
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    rejected: int = 0
    last_rejected: str | None = None
    messages: int = 0

    def _node(self, name: str) -> _Node:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = _Node(name)
        return node

    def _reject(self, topic: str, why: str) -> None:
        self.rejected += 1
        self.last_rejected = f"{topic}: {why}"

    def apply(self, topic: str, payload: bytes, *, retained: bool, now: float) -> None:
        """One message from the broker (an empty retained payload clears the topic)."""
        where = topics.parse_topic(topic)
        if where is None:
            return
        self.messages += 1
        text = payload.decode("utf-8", errors="replace")
        if where.kind == "bridge":
            self.bridges[where.key] = "connected" if text.strip() == "1" else "disconnected"
            return
        node = self._node(where.node)
        if where.kind == "status":
            if text not in (topics.ONLINE, topics.OFFLINE, ""):
                self._reject(topic, f"status {text[:20]!r} is neither online nor offline")
                return
            node.status = text or None
            if not retained:
                node.heard(now)
            return
        if not payload:  # a retained topic cleared
            (node.instruments if where.kind == "health" else node.sites).pop(where.key, None)
            return
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            self._reject(topic, "not JSON")
            return
        if not isinstance(data, dict) or not topics.supported(data):
            self._reject(topic, f"not a payload of schema version {topics.SCHEMA_VERSION}")
            return
        published = _parse_iso(data.get("published_at") or data.get("at"))
        heard = published if retained and published is not None else now
        node.heard(min(heard, now))
        if isinstance(data.get("refresh_s"), int | float) and data["refresh_s"] > 0:
            node.refresh_s = float(data["refresh_s"])
        if where.kind == "health":
            node.instruments[where.key] = data
        elif where.kind == "summary":
            node.sites[where.key] = data
            if data.get("dashboard"):
                node.dashboard = str(data["dashboard"])
        elif where.kind == "events":
            self.events.appendleft(data)

    def to_json(self, now: float) -> dict[str, Any]:
        """The fleet: nodes (liveness, dashboard, sites, instruments), every site across nodes, recent events."""
        nodes = []
        sites: dict[str, dict[str, Any]] = {}
        for name in sorted(self.nodes):
            node = self.nodes[name]
            status, reason = node.liveness(now)
            instruments = [node.instruments[k] for k in sorted(node.instruments)]
            nodes.append({"node": name, "status": status, "reason": reason, "dashboard": node.dashboard,
                          "last_heard_at": topics.iso(node.heard_at) if node.heard_at else None,
                          "refresh_s": node.refresh_s, "sites": [node.sites[k] for k in sorted(node.sites)],
                          "instruments": instruments})
            for inst in instruments:
                site = sites.setdefault(str(inst.get("site")), {"site": inst.get("site"), "name": inst.get("site"),
                                                                "nodes": [], "instruments": 0, "states": {},
                                                                "attention": []})
                if name not in site["nodes"]:
                    site["nodes"].append(name)
                site["instruments"] += 1
                state = str(inst.get("state"))
                site["states"][state] = site["states"].get(state, 0) + 1
                if state in ATTENTION_STATES or status in ("offline", "stale"):
                    site["attention"].append(f"{name}/{inst.get('instrument')}: "
                                             f"{state if status not in ('offline', 'stale') else status}")
            for summary in node.sites.values():
                if str(summary.get("site")) in sites and summary.get("name"):
                    sites[str(summary["site"])]["name"] = summary["name"]
        return {"v": topics.SCHEMA_VERSION, "generated_at": topics.iso(now), "nodes": nodes,
                "sites": [sites[k] for k in sorted(sites)], "bridges": dict(sorted(self.bridges.items())),
                "events": list(self.events), "messages": self.messages, "rejected": self.rejected,
                "last_rejected": self.last_rejected}


def needs_attention(fleet: Mapping[str, Any]) -> list[str]:
    """What a person should look at: nodes not online, instruments down, failed or degraded, bridges down."""
    out = [f"node {n['node']}: {n['status']} ({n['reason']})" for n in fleet["nodes"] if n["status"] != "online"]
    for node in fleet["nodes"]:
        out += [f"{node['node']}/{i.get('instrument')}: {i.get('state')}: {i.get('reason')}"
                for i in node["instruments"] if i.get("state") in ATTENTION_STATES]
    out += [f"bridge {name}: disconnected" for name, state in fleet["bridges"].items() if state != "connected"]
    return out
