"""Live updates for the dashboard: server-sent events at ``GET /api/events`` (docs/api.md).

Theory of operation: one :class:`EventHub` per HTTP server. It watches the instruments' health (an
observer on each :class:`~labbridge.health.instrument.InstrumentHealth`: every change of a base state
wakes it at once) and the campaign (an observer on :class:`~labbridge.campaign.service.Campaign`: every
stage change, sign-off, rollback, link-up or reference import), and looks again every ``TICK_S`` anyway
(derived states, ``idle`` and ``degraded``, and counters change without an event). Each look compares
each instrument's JSON (as ``/api/instruments`` gives it) with the one last published and publishes the
changed ones; the campaign's status, the LIS destinations and today's figures are read from the store at
most every ``SLOW_S`` (or at once after a campaign change), and only while someone listens.

Each client has its own bounded queue (``QUEUE_SIZE`` events): a client too slow to keep up loses its
queue and gets a fresh ``snapshot`` instead (never an unbounded buffer, never a stalled hub). A client
idle for ``KEEPALIVE_S`` gets a comment line (proxies and the browser keep the stream open). When the
server shuts down, every stream is ended cleanly (the browser's EventSource then retries every
``RETRY_MS`` by itself, and the page shows the connection as lost until it is back).

Events (``event:`` name, ``data:`` one JSON object):

* ``snapshot``: ``{"node", "instruments", "sites", "destinations", "campaign", "today"}``, first on every
  connection (and after an overflow);
* ``instrument``: one instrument as in ``/api/instruments``, when anything of it but its byte/frame
  timestamps changed;
* ``campaign``: ``/api/campaign``'s answer, when it changed;
* ``lis``: ``{"destinations": [...]}`` as in ``/api/outbox``, when it changed;
* ``today``: ``{instrument: {"messages", "results"}}`` stored since the node's local midnight, when changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zoneinfo
from datetime import datetime, tzinfo
from typing import Any

from aiohttp import web

from labbridge.errors import StoreError
from labbridge.health.instrument import InstrumentHealth
from labbridge.logs import get_logger
from labbridge.runtime.api import DaemonApi
from labbridge.store import dashboard as queries

log = get_logger("labbridge.web")

TICK_S = 1.0  # the instruments are looked at this often (and at once after a state change)
SLOW_S = 5.0  # the campaign, the LIS destinations and today's figures at most this often
QUEUE_SIZE = 256  # events per client before it is sent a fresh snapshot instead
KEEPALIVE_S = 15.0  # a comment line when nothing was sent for this long
RETRY_MS = 3000  # the browser's reconnection delay (EventSource's built-in retry)
VOLATILE = frozenset({"last_byte_at", "last_frame_at"})  # changes of these alone publish nothing
EMPTY_BOOKS = {"pending": 0, "delivered": 0, "dead": 0, "backlog_pending": 0, "backlog_delivered": 0}
_CLOSED = b""  # put in a client's queue: end its stream


def encode(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One server-sent event (JSON has no raw newline, so one ``data:`` line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def lis_destinations(api: DaemonApi, counts: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each LIS destination's relay health with its outbox books (as ``/api/outbox`` gives them)."""
    books = (counts if counts is not None else await api.store.counts())["outbox"]
    return [{**dest, "dead_kinds": {}, **books.get(dest["id"], EMPTY_BOOKS)} for dest in api.destinations_json()]


def node_zone(api: DaemonApi) -> tzinfo | None:
    """The node's time zone (``timezone`` in the config), or None: this machine's."""
    name = api.config.timezone
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def local_midnight(now: float, tz: tzinfo | None) -> float:
    here = datetime.fromtimestamp(now, tz)
    return here.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class _Client:
    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)


class EventHub:
    """Publishes the changes of the daemon's instruments, campaign and LIS delivery to every listening page."""

    def __init__(self, api: DaemonApi) -> None:
        self.api = api
        self.clients: set[_Client] = set()
        self.overflows = 0  # clients sent a snapshot because their queue was full
        self._instruments: dict[str, dict[str, Any]] = {}
        self._slow: dict[str, Any] = {}  # "campaign", "destinations", "today": as last published
        self._slow_at = 0.0
        self._slow_due = True
        self._watched: dict[str, InstrumentHealth] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_id = 0

    # ---- what the daemon's parts tell (observers: no I/O, never block) ----------------------------

    def _health_changed(self, _health: InstrumentHealth) -> None:
        self._wake.set()

    def _campaign_changed(self) -> None:
        self._slow_due = True
        self._wake.set()

    # ---- the server's life ------------------------------------------------------------------------

    async def start(self, _app: web.Application) -> None:
        self.api.campaign.observers.append(self._campaign_changed)
        self._task = asyncio.create_task(self._run(), name="dashboard-events")

    async def close(self, _app: web.Application) -> None:
        """End every stream (the server is shutting down) and stop watching."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(ValueError):
            self.api.campaign.observers.remove(self._campaign_changed)
        for health in self._watched.values():
            with contextlib.suppress(ValueError):
                health.observers.remove(self._health_changed)
        self._watched.clear()
        for client in self.clients:
            _drain(client.queue)
            client.queue.put_nowait(_CLOSED)

    # ---- clients ------------------------------------------------------------------------------------

    async def join(self) -> tuple[_Client, dict[str, Any]]:
        """A new client and the snapshot it starts from: what changed before it joined is in the snapshot (and
        published to the others), what changes after is in its queue (no await between the two)."""
        if self._slow_due or time.time() - self._slow_at >= SLOW_S or not self._slow:
            await self._read_slow()
        self._look_at_instruments()
        client = _Client()
        self.clients.add(client)
        return client, self._books()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/events``: the snapshot, then the changes, until the page goes or the server stops."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        client: _Client | None = None
        try:
            client, books = await self.join()
            await response.write(f"retry: {RETRY_MS}\n\n".encode() + encode("snapshot", books))
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        item = await client.queue.get()
                except TimeoutError:
                    item = b": keep-alive\n\n"
                if item == _CLOSED:
                    break
                await response.write(item)
        except (ConnectionError, StoreError):  # the page went away, or the store cannot be read now
            pass
        finally:
            if client is not None:
                self.clients.discard(client)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    def publish(self, event: str, data: Any) -> None:
        """Queue one event for every client (a full queue is replaced by a fresh snapshot)."""
        self._next_id += 1
        message = encode(event, data, self._next_id)
        for client in self.clients:
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                self.overflows += 1
                _drain(client.queue)
                client.queue.put_nowait(encode("snapshot", self._books(), self._next_id))

    def _books(self) -> dict[str, Any]:
        return {"node": self.api.node, "instruments": list(self._instruments.values()),
                "sites": self.api.sites_json(), **self._slow}

    # ---- looking ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                if self.clients:
                    self._look_at_instruments()
                    if self._slow_due or time.time() - self._slow_at >= SLOW_S:
                        await self._read_slow()
                else:
                    self._watch()
            except StoreError as exc:  # shown by the pages as stale figures; the next look tries again
                log.warning("dashboard_events_store", error=str(exc))
            except Exception as exc:  # a bug here must not end the live updates for good: said, and tried again
                log.error("dashboard_events_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()

    def _watch(self) -> None:
        """Observe every instrument's health object (a reload may replace one)."""
        for health in self.api.link_health():
            if self._watched.get(health.id) is not health:
                old = self._watched.get(health.id)
                if old is not None:
                    with contextlib.suppress(ValueError):
                        old.observers.remove(self._health_changed)
                health.observers.append(self._health_changed)
                self._watched[health.id] = health

    def _look_at_instruments(self) -> None:
        self._watch()
        current = {item["id"]: item for item in self.api.instruments_json()}
        if set(current) != set(self._instruments):  # added or removed by a reload: everyone starts again
            self._instruments = current
            self.publish("snapshot", self._books())
            return
        for ident, item in current.items():
            before = self._instruments.get(ident)
            if before is None or _comparable(before) != _comparable(item):
                self._instruments[ident] = item
                self.publish("instrument", item)

    async def _read_slow(self) -> None:
        self._slow_due = False
        now = time.time()
        self._slow_at = now
        counts = await self.api.store.counts()
        since = local_midnight(now, node_zone(self.api))
        fresh = {"campaign": await self.api.campaign.status(),
                 "destinations": await lis_destinations(self.api, counts),
                 "today": await self.api.store.read(lambda conn: queries.stored_since(conn, since))}
        for key, event in (("campaign", "campaign"), ("destinations", "lis"), ("today", "today")):
            if self._slow.get(key) != fresh[key]:
                self._slow[key] = fresh[key]
                self.publish(event, {"destinations": fresh[key]} if event == "lis" else fresh[key])


def _comparable(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in VOLATILE}


def _drain(queue: asyncio.Queue[bytes]) -> None:
    while not queue.empty():
        queue.get_nowait()


def event_routes(hub: EventHub) -> list[web.RouteDef]:
    return [web.get("/api/events", hub.stream)]
