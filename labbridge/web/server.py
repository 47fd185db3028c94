"""HTTP server (aiohttp) run with the daemon as one of its surfaces, bound to 127.0.0.1 by default.

It sees the daemon only through :class:`labbridge.runtime.api.DaemonApi`; :func:`labbridge.web.surfaces_for` gives
the surfaces a configuration asks for, for whoever starts the daemon (``Daemon.run(stop, surfaces=...)``).

Routes: ``/`` dashboard, ``/api/instruments``, ``/api/instruments/{id}``, ``/api/instruments/{id}/history``,
``/api/sites``,
``/api/outbox``, ``/api/outbox/items``, ``POST /api/outbox/retry``, ``POST /api/outbox/purge``,
``/api/audit``, ``/api/orders`` (GET, POST), ``/api/orders/{id}`` and ``/api/orders/{id}/cancel``,
``POST /api/config/reload``, ``/api/health``, ``/metrics``, and the campaign's (:mod:`labbridge.web.campaign`),
and the dashboard's pages and live updates (:mod:`labbridge.web.instrument_page`, :mod:`labbridge.web.events`).
Field names are documented in docs/api.md.

The POST routes change the store: they take JSON only (a browser cannot send that cross-site without
a CORS preflight, which this server never grants); every operator action is recorded in the audit trail
(labbridge.store.audit) under the authenticated account. Who may do what, Host/Origin checks, CSRF, the
login page and TLS: :mod:`labbridge.web.auth` (docs/security.md).
"""

from __future__ import annotations

import errno
import json
import math
import platform
import ssl
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from labbridge import BUILD, __version__
from labbridge.config import HttpConfig
from labbridge.errors import LabbridgeError, StoreError
from labbridge.health.history import MAX_HISTORY_DAYS
from labbridge.health.instrument import COUNTER_NAMES, STATES
from labbridge.model import PRIORITIES, OrderPriority
from labbridge.orders import ORDER_STATES, NewOrder, OrderState
from labbridge.outbox import GROUP_SIZE_BUCKETS
from labbridge.runtime.api import DaemonApi
from labbridge.store import audit
from labbridge.web import params
from labbridge.web.audit import audit_routes
from labbridge.web.auth import Guard, actor_of
from labbridge.web.body import json_object
from labbridge.web.campaign import campaign_routes
from labbridge.web.events import EventHub, event_routes, lis_destinations  # dashboard (issue 17, part 1)
from labbridge.web.instrument_page import page_routes  # dashboard (issue 17, part 1)


class _Snapshot(Collector):
    """Metrics read from the daemon's state at scrape time (no second set of books to keep)."""

    def __init__(self, api: DaemonApi, counts: dict[str, Any]) -> None:
        self.api = api
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        yield _build_info()
        yield from self._instruments()
        yield from self._destinations()
        yield from _uplinks(self.api.uplinks_json())  # [mqtt]
        outbox = GaugeMetricFamily("labbridge_outbox_items", "Outbox items per destination and state",
                                   labels=["destination", "state"])
        for dest, states in self.counts.get("outbox", {}).items():
            for s, n in states.items():
                if isinstance(n, int) and not s.startswith("backlog_"):  # item counts (not kinds, times, backlog)
                    outbox.add_metric([dest, s], n)
        yield outbox
        yield GaugeMetricFamily("labbridge_store_results", "Results in the store",
                                value=self.counts.get("results", 0))
        backlog = GaugeMetricFamily("labbridge_outbox_backlog_pending",
                                    "Backlog items (old results resent by an analyzer) waiting per destination",
                                    labels=["destination"])
        for dest, states in self.counts.get("outbox", {}).items():
            backlog.add_metric([dest], states.get("backlog_pending", 0))
        yield backlog
        dead = GaugeMetricFamily("labbridge_outbox_dead", "Dead letters per destination and kind",
                                 labels=["destination", "kind"])
        for dest, states in self.counts.get("outbox", {}).items():
            for kind, n in states.get("dead_kinds", {}).items():
                dead.add_metric([dest, kind], n)
        yield dead
        store = self.api.store
        size = store.size()
        bytes_ = GaugeMetricFamily("labbridge_store_bytes", "Size of the store on disk", labels=["file"])
        bytes_.add_metric(["db"], size.file_bytes)
        bytes_.add_metric(["wal"], size.wal_bytes)
        yield bytes_
        yield CounterMetricFamily("labbridge_store_commits", "Group commits that reached the disk",
                                  value=store.commits)
        yield CounterMetricFamily("labbridge_store_commit_failures", "Group commits that failed (nothing ACKed)",
                                  value=store.commit_failures)
        yield CounterMetricFamily("labbridge_store_writer_restarts",
                                  "Store writer processes that died and were replaced (in-flight messages not ACKed)",
                                  value=store.writer_restarts)
        yield CounterMetricFamily("labbridge_store_commit_seconds", "Time spent committing, fsync included",
                                  value=store.commit_seconds)
        yield CounterMetricFamily("labbridge_store_checkpoints", "Background WAL checkpoints run",
                                  value=store.checkpoints)
        yield CounterMetricFamily("labbridge_store_checkpoint_seconds", "Time spent in background checkpoints",
                                  value=store.checkpoint_seconds)
        yield CounterMetricFamily("labbridge_store_wal_restarts",
                                  "Writer checkpoints after a background one (each lets the WAL start again from its "
                                  "beginning: a WAL that never does grows and slows commits)",
                                  value=store.wal_restarts_asked)
        yield CounterMetricFamily("labbridge_store_intake_waits",
                                  "Messages that waited, undecoded, for one of the store's places for messages in "
                                  "flight (decoded, not yet committed; a burst of analyzers, or a slow disk)",
                                  value=store.intake_waits)
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip(GROUP_SIZE_BUCKETS, store.group_sizes, strict=True):
            cumulative += n
            buckets.append((str(float(bound)), cumulative))
        buckets.append(("+Inf", cumulative))
        yield HistogramMetricFamily("labbridge_store_commit_group_size", "Write requests per group commit",
                                    buckets=buckets, sum_value=store.committed_jobs)


    def _instruments(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("labbridge_instrument_state", "1 for the link's current state (as shown)",
                                  labels=["instrument", "site", "state"])
        last = GaugeMetricFamily("labbridge_last_message_timestamp_seconds",
                                 "When the instrument's last message was stored (for silent-analyzer alerts)",
                                 labels=["instrument"])
        counters = {name: CounterMetricFamily(f"labbridge_{name}", f"Per instrument: {name.replace('_', ' ')}",
                                              labels=["instrument"]) for name in COUNTER_NAMES}
        now = time.time()
        for h in self.api.link_health():
            current, _ = h.effective_state(now)
            for s in STATES:
                state.add_metric([h.id, h.site, s], 1.0 if s == current else 0.0)
            if h.last_message_at is not None:
                last.add_metric([h.id], h.last_message_at)
            for name, family in counters.items():
                family.add_metric([h.id], getattr(h.counters, name))
        for h in self.api.listener_health():  # LIS order listeners: their connection counters (peers_refused...)
            for name, family in counters.items():
                family.add_metric([h.id], getattr(h.counters, name))
        yield state
        yield last
        yield from counters.values()

    def _destinations(self) -> Iterator[Metric]:
        oldest = GaugeMetricFamily("labbridge_outbox_oldest_pending_age_seconds",
                                   "Age of the oldest result waiting for each destination (0: none waiting)",
                                   labels=["destination"])
        depth = GaugeMetricFamily("labbridge_outbox_depth", "Outbox items waiting per destination",
                                  labels=["destination"])
        latency = HistogramMetricFamily("labbridge_delivery_latency_seconds",
                                        "Stored -> accepted by the LIS, per destination", labels=["destination"])
        now = time.time()
        books = self.counts.get("outbox", {})
        for dest in self.api.destinations_json():
            mine = books.get(dest["id"], {})
            at = mine.get("oldest_pending_at")
            oldest.add_metric([dest["id"]], max(now - at, 0.0) if at is not None else 0.0)
            depth.add_metric([dest["id"]], mine.get("pending", 0))
            spread = dest["delivery_latency"]
            cumulative, buckets = 0, []
            for bound, n in zip([*spread["buckets"], math.inf], spread["counts"], strict=True):
                cumulative += n
                buckets.append(("+Inf" if math.isinf(bound) else str(float(bound)), cumulative))
            latency.add_metric([dest["id"]], buckets, sum_value=spread["sum_s"])
        yield from (oldest, depth, latency)


# ---- [mqtt]: the broker's link in /metrics (labbridge.fleet.publisher.BrokerLink; docs/mqtt.md) ----------------
UPLINK_STATES = ("connecting", "up", "down", "failed")


def _uplinks(uplinks: list[dict[str, Any]]) -> Iterator[Metric]:
    state = GaugeMetricFamily("labbridge_uplink_state", "1 for the state of the node's link to its MQTT broker",
                              labels=["uplink", "broker", "state"])
    queued = GaugeMetricFamily("labbridge_uplink_queued", "Messages waiting for the broker (latest per topic, "
                               "events)", labels=["uplink"])
    counters = {name: CounterMetricFamily(f"labbridge_uplink_{name}", what, labels=["uplink"]) for name, what in (
        ("published", "Messages the broker confirmed"), ("connects", "Connections made to the broker"),
        ("disconnects", "Connections to the broker lost"),
        ("events_dropped", "Events dropped while the broker was away (queue full, oldest first)"))}
    for link in uplinks:
        for s in UPLINK_STATES:
            state.add_metric([link["id"], link["broker"], s], 1.0 if s == link["state"] else 0.0)
        queued.add_metric([link["id"]], link["queued"])
        for name, family in counters.items():
            family.add_metric([link["id"]], link[name])
    yield state
    yield queued
    yield from counters.values()
# ---- end [mqtt] -------------------------------------------------------------------------------------------------


def _build_info() -> Metric:
    info = GaugeMetricFamily("labbridge_build_info", "labbridge's version, Python's, and whether the protocol "
                             "cores run compiled or as pure Python (the value is 1)",
                             labels=["version", "python", "cores"])
    info.add_metric([__version__, platform.python_version(), "compiled" if BUILD.compiled else "pure"], 1.0)
    return info


class WebServer:
    def __init__(self, api: DaemonApi, settings: HttpConfig | None = None) -> None:
        self.api = api
        self.settings = settings or HttpConfig()
        self.guard = Guard(api.store, self.settings, tls=self.settings.tls_cert is not None)
        self.app = web.Application(middlewares=[self.guard.middleware])
        self.app.add_routes([*self.guard.routes(),
            web.get("/", self.index),
            web.get("/api/health", self.health),
            web.get("/api/instruments", self.instruments),
            web.get("/api/instruments/{id}", self.instrument),
            web.get("/api/instruments/{id}/history", self.instrument_history),
            web.get("/api/sites", self.sites),
            web.get("/api/outbox", self.outbox),
            web.get("/api/orders", self.list_orders),
            web.post("/api/orders", self.add_order),
            web.get("/api/orders/{id}", self.get_order),
            web.post("/api/orders/{id}/cancel", self.cancel_order),
            web.get("/api/outbox/items", self.outbox_items),
            web.post("/api/outbox/retry", self.outbox_retry),
            web.post("/api/outbox/purge", self.outbox_purge),
            web.get("/api/audit", self.audit),
            web.post("/api/config/reload", self.reload_config),
            web.get("/metrics", self.metrics),
            *campaign_routes(api),
            *audit_routes(api.store),
        ])
        # ---- dashboard (issue 17, part 1): live updates (GET /api/events) and the instrument pages ----
        self.events = EventHub(api)
        self.app.add_routes([*event_routes(self.events), *page_routes(api)])
        self.app.on_startup.append(self.events.start)
        self.app.on_shutdown.append(self.events.close)
        # ---- end dashboard ----
        self.runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=self._tls())
        await site.start()
        server = site._server
        assert server is not None
        sockname = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        return str(sockname[0]), int(sockname[1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _tls(self) -> ssl.SSLContext | None:
        """TLS 1.2+ with ``[http] tls_cert``/``tls_key``; with ``client_ca``, a client certificate it signed
        is required."""
        s = self.settings
        if s.tls_cert is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
        if s.client_ca is not None:
            ctx.load_verify_locations(s.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def index(self, _request: web.Request) -> web.Response:
        page = resources.files("labbridge.web").joinpath("static/index.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html")

    async def health(self, _request: web.Request) -> web.Response:
        # [mqtt]: the node's own links (the MQTT broker's) beside its status (labbridge.fleet; docs/mqtt.md)
        return web.json_response({"status": "ok", "node": self.api.node, "uplinks": self.api.uplinks_json()})

    async def instruments(self, _request: web.Request) -> web.Response:
        return web.json_response(self.api.instruments_json())

    async def instrument(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        for item in self.api.instruments_json():
            if item["id"] == wanted:
                return web.json_response(item)
        return web.json_response({"error": f"no instrument {wanted!r}"}, status=404)

    async def instrument_history(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        days = params.bounded_int(request.query, "days", default=7, low=1, high=MAX_HISTORY_DAYS)
        try:
            history = await self.api.instrument_history(wanted, days)
        except StoreError as exc:
            return web.json_response({"error": f"the store cannot be read: {exc}"}, status=503)
        if history is None:
            return web.json_response({"error": f"no instrument {wanted!r}"}, status=404)
        return web.json_response(history)

    async def sites(self, _request: web.Request) -> web.Response:
        return web.json_response(self.api.sites_json())

    async def outbox(self, _request: web.Request) -> web.Response:
        store = self.api.store
        counts = await store.counts()
        size = store.size()
        return web.json_response({
            "store": {**{k: v for k, v in counts.items() if k != "outbox"},
                      "path": store.path, "file_bytes": size.file_bytes, "wal_bytes": size.wal_bytes,
                      "size_bytes": size.total_bytes, "commits": store.commits,
                      "commit_failures": store.commit_failures, "last_commit_error": store.last_commit_error,
                      "writer_restarts": store.writer_restarts},
            "destinations": await lis_destinations(self.api, counts),
            "lis_orders": [{"id": h.id, "listening": h.listening, "counters": h.counters.as_dict(),
                            "notices": h.notices(time.time())} for h in self.api.listener_health()],
        })

    # ---- orders --------------------------------------------------------------------------------

    async def list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        state: OrderState | None = None
        if "state" in q:
            wanted = next((s for s in ORDER_STATES if s == q["state"]), None)
            if wanted is None:
                return _bad_request([f"state: one of {', '.join(ORDER_STATES)}"])
            state = wanted
        limit = params.limit(q)
        orders = await self.api.orders.list_orders(
            instrument=q.get("instrument"), site=q.get("site"), sample_id=q.get("sample_id"),
            state=state, limit=limit)
        return web.json_response([o.to_json() for o in orders])

    async def add_order(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.json_response({"error": "send JSON (Content-Type: application/json)"}, status=415)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad_request(["body: a JSON object"])
        order, problems = _order_from_json(body)
        if order is not None:
            problems = self.api.order_problems(order)
        if problems or order is None:
            return _bad_request(problems)
        stored = await self.api.add_order(order, now=time.time(), actor=actor_of(request))
        return web.json_response(stored.to_json(), status=201)

    async def get_order(self, request: web.Request) -> web.Response:
        order_id = params.path_id(request)
        order = await self.api.orders.get(order_id)
        if order is None:
            return web.json_response({"error": f"no order {request.match_info['id']!r}"}, status=404)
        return web.json_response(order.to_json())

    async def cancel_order(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":  # no cross-site form may cancel an order
            return web.json_response({"error": "send JSON (Content-Type: application/json)"}, status=415)
        order_id = params.path_id(request)
        order = await self.api.orders.cancel(order_id, now=time.time(), actor=actor_of(request))
        if order is None:
            return web.json_response({"error": f"no order {request.match_info['id']!r}"}, status=404)
        return web.json_response(order.to_json())
    async def outbox_items(self, request: web.Request) -> web.Response:
        state = params.choice(request.query.get("state"), "state", OUTBOX_STATES)
        limit = params.limit(request.query)
        rows = await self.api.store.outbox_rows(state=state, limit=limit,
                                                   destination=request.query.get("destination") or None)
        return web.json_response(rows)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return await json_object(request)

    @staticmethod
    def _ids(body: dict[str, Any]) -> list[int] | None:
        return params.ids(body)

    async def outbox_retry(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ids = self._ids(body)
        if (ids is None) == (body.get("all_dead") is not True):
            return web.json_response({"error": "give either ids or all_dead: true"}, status=400)
        actor = actor_of(request, params.text(body, "by", max_length=200).strip())
        try:
            outcomes = await self.api.operations.retry(ids, actor=actor, reason=params.text(body, "reason"))
        except (ValueError, StoreError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"items": outcomes})

    async def outbox_purge(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body.get("confirm") is not True:
            return web.json_response({"error": "a purge deletes items for good: send confirm: true"}, status=400)
        actor = actor_of(request, params.text(body, "by", max_length=200).strip())
        older = params.seconds(body, "older_than_s")  # finite, not negative: -1 would purge every dead letter
        state = params.choice(body.get("state"), "state", ("dead", "delivered"))
        try:
            done = await self.api.operations.purge(item_ids=self._ids(body), state=state, older_than_s=older,
                                                      actor=actor, reason=params.text(body, "reason"))
        except (ValueError, StoreError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(done)

    async def audit(self, request: web.Request) -> web.Response:
        limit = params.limit(request.query)
        return web.json_response(await self.api.store.audit_rows(limit))

    async def reload_config(self, request: web.Request) -> web.Response:
        """Apply the config file as it is now: 200 applied or unchanged, 422 refused (with every problem), 409
        when the daemon has no config file; the body is the reload's report either way."""
        body = await self._body(request)
        actor = actor_of(request, params.text(body, "by", max_length=200).strip())
        report = await self.api.reload_config(by=actor)
        await self.api.store.write(audit.record, at=time.time(), actor=actor, action="reload", target="config",
                                   reason="", detail={"outcome": report["outcome"]})
        status = {"refused": 422, "unavailable": 409}.get(report["outcome"], 200)
        if status != 200:
            report = {"error": f"reload {report['outcome']}: " + "; ".join(
                f"{p['key'] or '(file)'}: {p['problem']}" for p in report["refused"]), **report}
        return web.json_response(report, status=status)

    async def metrics(self, _request: web.Request) -> web.Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self.api, await self.api.store.counts()))
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class HttpSurface:
    """The HTTP server as a surface of the daemon: serves the daemon's API from when the daemon starts it."""

    name = "http"

    def __init__(self, host: str, port: int, settings: HttpConfig | None = None) -> None:
        self.host = host
        self.port = port
        self.settings = settings or HttpConfig(host=host, port=port)
        self.server: WebServer | None = None

    async def start(self, api: DaemonApi) -> tuple[str, int]:
        self.server = WebServer(api, self.settings)
        try:
            return await self.server.start(self.host, self.port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            await self.server.stop()
            raise LabbridgeError(f"the dashboard and API address {self.host}:{self.port} is already in use "
                                 "(another labbridge running? stop it, or choose another port: [http] port, "
                                 "or --port for the demo)") from None

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


OUTBOX_STATES = ("pending", "delivered", "dead", "held", "discarded")


def _bad_request(problems: list[str]) -> web.Response:
    return web.json_response({"error": "invalid order request", "problems": problems}, status=400)


ORDER_FIELDS = frozenset({"sample_id", "test_codes", "instrument", "site", "priority", "patient_id", "source"})


def _order_from_json(body: Any) -> tuple[NewOrder | None, list[str]]:
    """A NewOrder from a POST body, or the problems with it (unknown fields are an error, as in the config)."""
    if not isinstance(body, dict):
        return None, ["body: a JSON object"]
    problems = [f"{key}: unknown field" for key in body if key not in ORDER_FIELDS]
    problems.extend(f"{key}: a string" for key in ("sample_id", "instrument", "site", "priority", "patient_id",
                                                   "source") if key in body and not isinstance(body[key], str))
    tests = body.get("test_codes")
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        problems.append("test_codes: a list of LIS test codes (strings)")
    priority = body.get("priority", "routine")
    if priority not in PRIORITIES:
        problems.append(f"priority: one of {', '.join(PRIORITIES)}")
    if problems or not isinstance(tests, list):
        return None, problems
    return NewOrder(sample_id=body.get("sample_id", ""), test_codes=tuple(tests), instrument=body.get("instrument", ""),
                    site=body.get("site", ""), priority=cast(OrderPriority, priority),
                    patient_id=body.get("patient_id", ""), source=body.get("source", "api")), []
