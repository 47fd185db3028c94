"""The daemon's MQTT publisher: this node's health, site summaries and events to a broker (docs/mqtt.md).

Nothing on the data path waits for the broker. A change of a link's state only sets an event (an observer of
:class:`~labbridge.health.instrument.InstrumentHealth`); the publisher's own task looks at every instrument's
shown state and campaign stage (woken so, and every ``check_s``), and puts what changed in a
:class:`PendingMessages`: the latest payload per retained topic (a newer one replaces the older, so it is bounded
by the number of topics) and the events in order (bounded by ``queue_limit``: the oldest dropped, counted). A
second task sends them at QoS 1, reconnecting with capped backoff and jitter; on every (re)connection the node
says ``online`` (its last will says ``offline``) and republishes all its retained topics, as it does every
``refresh_s``, and when a Mosquitto bridge of its broker comes back (``labbridge-bridges/+/state`` = ``1``),
so a broker restarted without persistence, or a center cut off for a while, catches up.

The broker's connection is a link of its own (:class:`BrokerLink`): shown by the daemon's ``/api/health`` and
``/metrics`` beside the instruments', never mixed with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from labbridge.backoff import backoff_delay
from labbridge.config import MqttConfig, SiteConfig
from labbridge.errors import ConfigError, LabbridgeError
from labbridge.fleet import topics
from labbridge.fleet.broker import Broker
from labbridge.health.instrument import InstrumentHealth
from labbridge.logs import get_logger

if TYPE_CHECKING:
    import aiomqtt

log = get_logger("labbridge.mqtt")

BATCH = 256  # messages handed to the client at once (QoS 1: each waits for its PUBACK, all in flight together)
RECONNECT_INITIAL_S = 1.0
RECONNECT_MAX_S = 30.0
STOP_TIMEOUT_S = 2.0  # at a clean stop: time given to say "offline" before the connection closes
COALESCE_S = 0.05  # changes told within this time of each other are looked at together
SUMMARY_MIN_S = 1.0  # a site's summary is looked at no more often (a storm of changes: one summary a second)

Message = tuple[str, bytes, bool]  # topic, payload, retained


class PendingMessages:
    """What waits for the broker: the latest payload per retained topic, and the events in order (bounded)."""

    def __init__(self, event_limit: int) -> None:
        self._latest: dict[str, bytes] = {}
        self._events: deque[tuple[str, bytes]] = deque()
        self.event_limit = event_limit
        self.dropped = 0  # events dropped because the queue was full (the oldest go first)

    def __len__(self) -> int:
        return len(self._latest) + len(self._events)

    def put(self, topic: str, payload: bytes) -> None:
        """A retained topic's new value: replaces one not yet sent."""
        self._latest.pop(topic, None)
        self._latest[topic] = payload

    def event(self, topic: str, payload: bytes) -> None:
        self._events.append((topic, payload))
        while len(self._events) > self.event_limit:
            self._events.popleft()
            self.dropped += 1

    def take(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages, events first (oldest first), then retained values (oldest change first)."""
        out: list[Message] = []
        while self._events and len(out) < limit:
            topic, payload = self._events.popleft()
            out.append((topic, payload, False))
        while self._latest and len(out) < limit:
            topic = next(iter(self._latest))
            out.append((topic, self._latest.pop(topic), True))
        return out

    def put_back(self, messages: Sequence[Message]) -> None:
        """Messages the broker did not confirm: first in line again, unless a newer value of the topic came."""
        for topic, payload, retained in reversed(messages):
            if not retained:
                self._events.appendleft((topic, payload))
            elif topic not in self._latest:
                self._latest = {topic: payload, **self._latest}
        while len(self._events) > self.event_limit:
            self._events.popleft()
            self.dropped += 1


BrokerState = Literal["connecting", "up", "down", "failed"]


@dataclass
class BrokerLink:
    """The node's connection to its MQTT broker, shown as a link of its own (``/api/health``, ``/metrics``)."""

    broker: str
    state: BrokerState = "connecting"
    reason: str = "not connected yet"
    since: float = field(default_factory=time.time)
    connects: int = 0
    disconnects: int = 0
    published: int = 0  # messages the broker confirmed (PUBACK)
    pending: PendingMessages | None = field(default=None, repr=False)

    def set(self, state: BrokerState, reason: str) -> None:
        if state == self.state and reason == self.reason:
            return
        if state != self.state:
            self.since = time.time()
            alarm = (state in ("down", "failed") and self.state == "up") or state == "failed"
            (log.warning if alarm else log.info)("mqtt_link", broker=self.broker, state=state, previous=self.state,
                                                 reason=reason)
        self.state, self.reason = state, reason

    @property
    def queued(self) -> int:
        return len(self.pending) if self.pending is not None else 0

    @property
    def dropped(self) -> int:
        return self.pending.dropped if self.pending is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {"id": "mqtt", "kind": "mqtt-broker", "broker": self.broker, "state": self.state,
                "reason": self.reason, "since": topics.iso(self.since), "connects": self.connects,
                "disconnects": self.disconnects, "published": self.published, "queued": self.queued,
                "events_dropped": self.dropped}


@dataclass
class _Seen:
    state: str
    reason: str
    stage: str
    since: float


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class MqttPublisher:
    """One supervised part of the daemon (``run``); everything it reads is given as callables."""

    def __init__(self, cfg: MqttConfig, *, node: str, healths: Callable[[], Iterable[InstrumentHealth]],
                 stages: Callable[[], Awaitable[Mapping[str, str]]], sites: Callable[[], Sequence[SiteConfig]],
                 dashboard: Callable[[], str | None], check_s: float) -> None:
        self.cfg = cfg
        self.node = cfg.node or node
        self.healths = healths
        self.stages = stages
        self.sites = sites
        self.dashboard = dashboard
        self.check_s = check_s
        self.pending = PendingMessages(cfg.queue_limit)
        self.link = BrokerLink(cfg.url, pending=self.pending)
        self._wakeup = asyncio.Event()  # a link's state changed, or everything must be published again
        self._ready = asyncio.Event()  # something is pending
        self._seen: dict[str, _Seen] = {}
        self._summaries: dict[str, tuple[Any, ...]] = {}
        self._republish = True
        self._next_refresh = 0.0  # wall clock: the next publication of everything
        self._next_full = 0.0  # monotonic: the next look at every instrument
        self._dirty: set[str] = set()  # instruments that told of a change since the last look
        self._summaries_due: set[str] = set()  # sites whose instruments changed since their summary was looked at
        self._next_summaries = 0.0  # monotonic
        self._stages: Mapping[str, str] = {}

    # ---- what changed: the watch task -----------------------------------------------------------

    def _observe(self, health: InstrumentHealth) -> None:
        """InstrumentHealth observer: called on the data path, so it only notes the instrument and wakes the task."""
        self._dirty.add(health.id)
        self._wakeup.set()

    def republish(self) -> None:
        """Publish every retained topic again at the next look (a (re)connection, a bridge back)."""
        self._republish = True
        self._wakeup.set()

    async def watch(self) -> None:
        """Look at the instruments that told of a change when they do (coalesced over ``COALESCE_S``), and at
        every instrument and the stages every ``check_s`` (a shown state also changes with time: idle, degraded)."""
        while True:
            wake_at = min(self._next_full, self._next_summaries if self._summaries_due else self._next_full)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - time.monotonic())):
                    await self._wakeup.wait()
                    await asyncio.sleep(COALESCE_S)  # a burst of changes: one look
            self._wakeup.clear()
            full = self._republish or time.monotonic() >= self._next_full
            if full:
                self._next_full = time.monotonic() + self.check_s
                with contextlib.suppress(LabbridgeError):  # the store unreadable for a moment: the stages seen last
                    self._stages = await self.stages()
            dirty, self._dirty = self._dirty, set()
            self.look(time.time(), None if full else dirty)

    def look(self, now: float, dirty: set[str] | None = None) -> None:
        """Queue what changed: of the instruments in ``dirty``, or of every one (None); everything when a refresh
        or a republish is due."""
        everything = self._republish or now >= self._next_refresh
        if everything:  # "online" too: a broker (or a center behind a bridge) that forgot it learns it again
            self._republish, self._next_refresh = False, now + self.cfg.refresh_s
            self.pending.put(topics.status_topic(self.node), topics.ONLINE.encode())
            dirty = None  # every instrument and site
        healths = list(self.healths())
        touched: set[str] = set()
        for health in healths:
            if dirty is None and self._observe not in health.observers:
                health.observers.append(self._observe)
            if (dirty is None or health.id in dirty) and self._instrument(health, now, everything):
                touched.add(health.site)
        self._summaries_due |= touched
        if dirty is not None and (not self._summaries_due or time.monotonic() < self._next_summaries):
            if len(self.pending):
                self._ready.set()
            return  # a site's summary at most every SUMMARY_MIN_S (its instruments' health goes at once)
        due, self._summaries_due = self._summaries_due, set()
        self._next_summaries = time.monotonic() + SUMMARY_MIN_S
        dashboard = self.dashboard()
        for site in self.sites():
            if not (everything or dirty is None or site.id in due):
                continue
            mine = [self._seen[h.id] for h in healths if h.site == site.id and h.id in self._seen]
            key = (site.name, dashboard, tuple(sorted((s.state, s.stage) for s in mine)))
            if everything or self._summaries.get(site.id) != key:
                self._summaries[site.id] = key
                self.pending.put(topics.summary_topic(self.node, site.id), _json(topics.summary_payload(
                    self.node, site.id, site.name, ((s.state, s.stage) for s in mine), dashboard=dashboard,
                    refresh_s=self.cfg.refresh_s, now=now)))
        if len(self.pending):
            self._ready.set()

    def _instrument(self, health: InstrumentHealth, now: float, everything: bool) -> bool:
        """Queue the instrument's health if it changed (or ``everything``), and events; True when it changed."""
        state, reason = health.effective_state(now)
        stage = self._stages.get(health.id, "")
        seen = self._seen.get(health.id)
        if seen is None:
            seen = self._seen[health.id] = _Seen(state, reason, stage,
                                                 health.state_since if health.state == state else now)
            changed = True
        else:
            changed = (state, reason, stage) != (seen.state, seen.reason, seen.stage)
            if state != seen.state:
                self._event("state", health, seen.state, state, reason=reason, now=now)
                seen.since = now
            if stage != seen.stage:
                self._event("stage", health, seen.stage, stage, reason="", now=now)
            seen.state, seen.reason, seen.stage = state, reason, stage
        if changed or everything:
            self.pending.put(topics.health_topic(self.node, health.id), _json(topics.health_payload(
                self.node, health, state=state, reason=reason, since=seen.since, stage=stage,
                refresh_s=self.cfg.refresh_s, now=now)))
        return changed

    def _event(self, kind: Literal["state", "stage"], health: InstrumentHealth, before: str, after: str, *,
               reason: str, now: float) -> None:
        self.pending.event(topics.events_topic(self.node), _json(topics.event_payload(
            self.node, kind=kind, instrument=health.id, site=health.site, before=before, after=after,
            reason=reason, now=now)))

    # ---- the broker: the connection task --------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.watch())
            group.create_task(self.connect())

    async def connect(self) -> None:
        """Stay connected: reconnect with capped backoff and jitter; say "offline" at a clean stop."""
        import aiomqtt

        attempt = 0
        while True:
            try:
                broker = Broker.from_config(self.cfg)
                will = aiomqtt.Will(topics.status_topic(self.node), topics.OFFLINE, qos=topics.QOS, retain=True)
                client = broker.client(identifier=f"labbridge-{self.node}", keepalive=self.cfg.keepalive_s, will=will)
                self.link.set("connecting" if self.link.state != "down" else "down",
                              f"connecting to {broker.url}" if self.link.state != "down" else self.link.reason)
                async with client:
                    attempt = 0
                    await self._session(client, broker)
            except aiomqtt.MqttError as exc:
                if self.link.state == "up":
                    self.link.disconnects += 1
                needs_a_person = _refused(exc)
                if needs_a_person:
                    self.link.set("failed", f"{self.cfg.url}: {exc}: {needs_a_person}; retrying")
                else:
                    self.link.set("down", f"{self.cfg.url}: {exc}; health waits (latest value per topic) and is "
                                          "published again when the broker is back")
            except (ConfigError, LabbridgeError, OSError) as exc:
                self.link.set("failed", f"{exc}: fix [mqtt] in the config")
            delay = backoff_delay(attempt, RECONNECT_INITIAL_S, RECONNECT_MAX_S)
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client, broker: Broker) -> None:
        status = topics.status_topic(self.node)
        await client.publish(status, topics.ONLINE, qos=topics.QOS, retain=True)
        self.link.connects += 1
        self.link.set("up", f"connected to {broker.url}")
        self.republish()
        await client.subscribe(topics.BRIDGE_STATES, qos=topics.QOS)
        tasks = [asyncio.create_task(self._send(client)), asyncio.create_task(self._bridges(client))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # the connection's end (an MqttError) goes to connect(), which reconnects
        except asyncio.CancelledError:
            await _cancel(tasks)  # nothing of theirs goes out after "offline"
            with contextlib.suppress(Exception):  # a clean stop: "offline" now, not after the keep-alive
                await client.publish(status, topics.OFFLINE, qos=topics.QOS, retain=True, timeout=STOP_TIMEOUT_S)
            raise
        finally:
            await _cancel(tasks)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while batch := self.pending.take(BATCH):
                done = await asyncio.gather(*(client.publish(topic, payload, qos=topics.QOS, retain=retained)
                                              for topic, payload, retained in batch), return_exceptions=True)
                failed = [m for m, outcome in zip(batch, done, strict=True) if isinstance(outcome, BaseException)]
                self.link.published += len(batch) - len(failed)
                if failed:
                    self.pending.put_back(failed)
                    error = next(e for e in done if isinstance(e, BaseException))
                    raise error

    async def _bridges(self, client: aiomqtt.Client) -> None:
        """A bridge of this broker came back (``1``, not the retained copy): the far side may have missed things."""
        async for message in client.messages:
            if not message.retain and message.payload == b"1":
                log.info("mqtt_bridge_back", topic=str(message.topic))
                self.republish()


def _refused(exc: Exception) -> str | None:
    """What a person must fix when the broker refused us for good (credentials, TLS); None for an outage."""
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if code in (4, 5, 134, 135):  # bad user name or password, not authorized (MQTT 3.1.1 and 5)
        return "check [mqtt] username and password (or password_file) and the broker's users and ACL"
    if "certificate" in str(exc).lower() or "ssl" in str(exc).lower():
        return "check [mqtt.tls] (ca: the CA that signed the broker's certificate; cert/key if it asks for one)"
    return None


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
