"""The daemon: one store, one runner per instrument, one relay per LIS destination.

It runs with the surfaces its caller gives it (the HTTP server: :mod:`labbridge.web.server`), which see
it through :class:`labbridge.runtime.api.DaemonApi`; the daemon never imports them. Every long-running
part is a tracked task under a supervisor that logs, shows and restarts it if it fails, so one broken
part never stops the daemon. SIGTERM/SIGINT stop it cleanly; SIGKILL loses nothing that an analyzer was
told was received (the store commits before the ACK). :meth:`Daemon.reload` applies a changed config file
part by part (see :mod:`labbridge.runtime.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labbridge import BUILD, aio
from labbridge.backoff import backoff_delay
from labbridge.campaign.service import Campaign, watch_links
from labbridge.config import Config, InstrumentConfig, with_link_defaults
from labbridge.driver import driver_link_defaults
from labbridge.errors import ConfigError, LabbridgeError
from labbridge.health.history import LinkHistory
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.instrument import InstrumentRunner
from labbridge.links.intake import InstrumentDecoder, load_instrument_driver
from labbridge.links.lis_orders import LisOrderListener
from labbridge.links.retire import finish_and_close
from labbridge.links.session import LinkSession
from labbridge.links.shared import SharedListener
from labbridge.logs import configure as configure_logs
from labbridge.logs import get_logger
from labbridge.orders import NewOrder, Order, complete_order, order_problems
from labbridge.outbox import OutboxItem, Retention, Route
from labbridge.relay.operations import Operations
from labbridge.relay.relay import Relay
from labbridge.runtime import systemd
from labbridge.runtime.api import Surface
from labbridge.runtime.health_task import HealthTask
from labbridge.runtime.reload import (
    DRAIN_TIMEOUT_S,
    Outcome,
    ReloadReport,
    effective_config,
    instrument_parts,
    load_checked,
    plan_reload,
)
from labbridge.store import audit
from labbridge.store.db import Store, wall_clock
from labbridge.store.orders import SqliteOrderSource

if TYPE_CHECKING:  # [mqtt] (labbridge.fleet): imported only when configured
    from labbridge.fleet.publisher import MqttPublisher

log = get_logger("labbridge.daemon")

READY_TIMEOUT_S = 15.0


def _set_startup_apart() -> None:
    """What starting made (modules, the configuration's models and validators, drivers, the parts) lives as
    long as the daemon: once started, it is collected and then set apart from the cycle collector (``gc.freeze``),
    so that the collector's full passes, which stop the event loop, go over what the links made since, not over
    all of that again (one full pass during a 10-link load stopped the loop for ~19 ms, its ACKs with it).
    Objects set apart are still freed when no longer referenced; only a cycle among them would stay until the
    daemon stops (then they are given back to the collector)."""
    gc.collect()
    gc.freeze()


class Daemon:
    def __init__(self, config: Config, *, ready_file: str | Path | None = None,
                 config_path: str | Path | None = None) -> None:
        """``config_path``: the file ``config`` was read from, which a reload reads again (None: no reload)."""
        config = with_link_defaults(config, driver_link_defaults)  # the drivers are loaded here
        self.config = config
        self.config_path = Path(config_path) if config_path else None
        self.ready_file = Path(ready_file) if ready_file else None
        self.store = Store(config.store.path, group=config.store.group)
        self.orders = SqliteOrderSource(self.store)
        # One list shared by every runner's sinks: a reload changes it in place (new results' outbox rows).
        self.destinations: list[str | Route] = [d.route() for d in config.lis]  # which results each takes
        self.campaign_wakeup = asyncio.Event()  # an analyzer connected: its stage may become link-up
        self.runners = {inst.id: self._runner(inst) for inst in config.instruments}
        # Instruments that share one tcp-server host:port (told apart per connection or per message).
        self.shared = [SharedListener([self.runners[cfg.id] for cfg in members])
                       for key, members in instrument_parts(config.instruments).items() if key.startswith("listener:")]
        self.relays = [Relay(dest, self.store, asyncio.Event()) for dest in config.lis]
        self.lis_orders = [LisOrderListener(listener, config=config, orders=self.orders, on_added=self._order_added)
                           for listener in config.lis_orders]
        self._parts: dict[str, asyncio.Task[None]] = {}  # supervised tasks a reload may stop and start, by name
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[Any]] = set()  # reloads under way (a stop cancels them first)
        self.operations = Operations(self.store, self._decoder_for, backlog_after_s=config.backlog.older_than_s,
                                     on_change=self._wake_relays, route_for=self._route_for)
        self.history = LinkHistory(self.store, self.link_health, interval_s=config.history.sample_interval_s)
        # The reconnection campaign: stages kept in the store, the validation gate (labbridge.campaign).
        self.campaign = Campaign(self.store, config, link_state=self._link_state, on_release=self._wake_relays)
        self.addresses: dict[str, tuple[str, int]] = {}  # surface name -> where it listens
        self.started = asyncio.Event()
        # ---- [mqtt]: this node's health to a broker (labbridge.fleet; docs/mqtt.md) ----
        self.mqtt: MqttPublisher | None = self._mqtt_publisher(config)
        # ---- end [mqtt] ----

    @property
    def node(self) -> str:
        return self.config.node

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where the HTTP surface listens, when the daemon runs with one."""
        return self.addresses.get("http")

    def _runner(self, inst: InstrumentConfig) -> InstrumentRunner:
        driver, driver_error = load_instrument_driver(inst)
        runner = InstrumentRunner(inst, driver=driver, driver_error=driver_error, store=self.store,
                                  destinations=self.destinations, on_stored=self._stored, orders=self.orders,
                                  backlog_after_s=self.config.backlog.older_than_s)
        runner.on_connected = self.campaign_wakeup.set
        return runner

    def _route_for(self, destination: str) -> Route | None:
        """Which results this destination takes, as configured now (issue 20: QC per destination)."""
        return next((d.route() for d in self.config.lis if d.id == destination), None)

    def _wake_relays(self) -> None:
        """The outbox changed (items released, retried, a relay started): every relay reads its queue now."""
        for relay in self.relays:
            relay.poke()

    def _stored(self, queued: Sequence[OutboxItem]) -> None:
        """A message was committed: each relay is handed the items it queued for it to go now."""
        for relay in self.relays:
            relay.offer([item for item in queued if item.destination == relay.dest.id])

    def order_problems(self, order: NewOrder) -> list[str]:
        return order_problems(self.config, order)

    async def add_order(self, order: NewOrder, *, now: float, actor: str | None = None) -> Order:
        """Add a valid order (see :func:`order_problems`) and wake the runner that may push it; a person's
        order (``actor``) is audited."""
        stored = await self.orders.add_order(complete_order(self.config, order), now=now, actor=actor)
        log.info("order_added", order_id=stored.id, instrument=stored.instrument or None, site=stored.site,
                 tests=len(stored.test_codes), source=stored.source)
        runner = self.runners.get(stored.instrument)
        if runner is not None:
            runner.orders_wakeup.set()
        return stored

    def _order_added(self, order: Order) -> None:
        """An order came in from the LIS: the runner that may push it looks for work now."""
        runner = self.runners.get(order.instrument)
        if runner is not None:
            runner.orders_wakeup.set()

    def _decoder_for(self, instrument: str) -> InstrumentDecoder | None:
        runner = self.runners.get(instrument)
        return runner.decoder() if runner is not None else None

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff_delay(attempt, 1.0, 60.0)
                log.exception("task_failed", task=name, error=type(exc).__name__, restart_in_s=round(delay, 1))
                attempt += 1
                await asyncio.sleep(delay)

    async def _prune_periodically(self) -> None:
        """Retention: drop raw messages, delivered items and incomplete transmissions past their time."""
        r = self.config.retention
        retention = Retention(raw_messages_s=r.raw_messages_days * 86400, delivered_s=r.delivered_days * 86400,
                              incomplete_s=r.incomplete_days * 86400, history_s=r.history_days * 86400)
        while True:
            pruned = await self.store.prune(retention, wall_clock())
            if any(pruned.values()):
                log.info("store_pruned", **pruned)
            await asyncio.sleep(r.prune_interval_s)

    async def run(self, stop: asyncio.Event, *, surfaces: Sequence[Surface] = ()) -> None:
        """Run until ``stop`` is set, with ``surfaces`` started once every part exists (see runtime.api)."""
        await self.store.open()
        if self.config.store.max_size_mb is not None:
            await self.store.set_size_limit(int(self.config.store.max_size_mb * 1024 * 1024))
        tasks: list[asyncio.Task[None]] = []
        shown: list[Surface] = []
        history = asyncio.create_task(self._supervise("history", self.history.run))  # closed after the links
        try:
            await self.campaign.start()  # before any link opens: the gate must know every instrument's stage
            tasks.append(asyncio.create_task(self._supervise("campaign", lambda: watch_links(
                self.campaign, self.link_health, self.campaign_wakeup))))
            tasks.append(asyncio.create_task(self._supervise("retention", self._prune_periodically)))
            tasks.append(asyncio.create_task(self._supervise("health", HealthTask(
                self.store, self.link_health, self.config.health).run)))
            for name, run in self._part_runs().items():
                self._start_part(name, run)
            for surface in surfaces:
                shown.append(surface)
                self.addresses[surface.name] = await surface.start(self)
            if self.mqtt is not None:  # [mqtt]: once the surfaces listen (its summaries link the dashboard)
                tasks.append(asyncio.create_task(self._supervise("mqtt", self.mqtt.run)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await asyncio.gather(*(r.ready.wait() for r in self.runners.values()),
                                         *(lo.ready.wait() for lo in self.lis_orders))
            _set_startup_apart()
            self._write_ready_file()
            systemd.notify("READY=1")
            tasks.append(asyncio.create_task(systemd.keep_watchdog(self.store.writer_alive)))
            self.started.set()
            log.info("daemon_started", node=self.config.node, instruments=len(self.runners),
                     destinations=len(self.relays), event_loop=aio.loop_name(asyncio.get_running_loop()),
                     cores=BUILD.describe(),
                     http=f"http://{self.http_address[0]}:{self.http_address[1]}/" if self.http_address else None)
            await stop.wait()
        finally:
            gc.unfreeze()  # what was set apart at the start is collected as usual again (a process running others)
            log.info("daemon_stopping")
            systemd.stopping()
            for reload in tuple(self._reloads):  # a reload under way stops first: then the parts are as it left them
                reload.cancel()
            await asyncio.gather(*self._reloads, return_exceptions=True)
            tasks += self._parts.values()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.history.close(history)  # the last sample, and "stopped" for every instrument
            for surface in reversed(shown):
                await surface.stop()
            await self.store.close()
            if self.ready_file is not None:
                with contextlib.suppress(OSError):
                    self.ready_file.unlink()
            log.info("daemon_stopped")

    def endpoints(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "http": None,  # always listed (null without an HTTP surface), as the ready file always had it
            **{name: {"host": host, "port": port} for name, (host, port) in self.addresses.items()},
            "instruments": {
                rid: {"host": r.bound[0], "port": r.bound[1]} if r.bound else None
                for rid, r in self.runners.items()
            },
            "lis_orders": {lo.cfg.id: {"host": lo.bound[0], "port": lo.bound[1]} if lo.bound else None
                           for lo in self.lis_orders},
        }

    def _write_ready_file(self) -> None:
        if self.ready_file is None:
            return
        tmp = self.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints()), encoding="utf-8")
        os.replace(tmp, self.ready_file)

    # ---- parts, and changes without restart (labbridge.runtime.reload) --------------------------

    def _part_runs(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """What each supervised part runs, by task name (instrument:, listener:, relay:, lis_orders:)."""
        shared = {f"listener:{s.address}": s for s in self.shared}
        runs: dict[str, Callable[[], Awaitable[None]]] = {
            key: shared[key].run if key in shared else self.runners[key.removeprefix("instrument:")].run
            for key in instrument_parts(self.config.instruments)}
        runs.update((f"relay:{r.dest.id}", r.run) for r in self.relays)
        runs.update((f"lis_orders:{lo.cfg.id}", lo.run) for lo in self.lis_orders)
        return runs

    def _start_part(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        self._parts[name] = asyncio.create_task(self._supervise(name, run), name=name)

    async def _stop_part(self, name: str) -> int:
        """Retire one part: it takes no new connection, each open one finishes its transfer (bounded by
        DRAIN_TIMEOUT_S), then its task ends. Returns the connections aborted at the timeout."""
        kind, _, ident = name.partition(":")
        runners: list[InstrumentRunner] = []
        sessions: list[LinkSession[Any]] = []
        if kind == "instrument":
            runners = [self.runners[ident]]
        elif kind == "listener":
            runners = [r for s in self.shared if s.address == ident for r in s.runners.values()]
        elif kind == "lis_orders":
            for lo in self.lis_orders:
                if lo.cfg.id == ident:
                    lo.retiring = True
                    sessions += lo.sessions
        for runner in runners:
            runner.retiring = True
            sessions += runner.sessions
        # A relay has no connection to finish: cancelled, an item handed over but not yet marked delivered
        # goes again under the same control ID, which the LIS takes as the same message (exactly once).
        aborted = await finish_and_close(sessions, DRAIN_TIMEOUT_S)
        task = self._parts.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return aborted

    def _track(self, task: asyncio.Task[Any]) -> None:
        """A reload's task: the daemon's stop cancels it before the parts (it would start parts after them)."""
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def reload_soon(self, by: str = "SIGHUP") -> None:
        """Reload in the background (for a signal handler); the outcome is logged as ``config_reloaded`` and
        goes to the audit trail, as a reload through the API does (the actor: ``local:SIGHUP``, whoever on this
        machine could signal the daemon)."""
        async def reload() -> None:
            await self.started.wait()
            try:
                report = await self.reload(by=by)
                await self.store.write(audit.record, at=time.time(), actor=f"local:{by}", action="reload",
                                       target="config", reason="", detail={"outcome": report.outcome.value})
            except Exception:
                log.exception("config_reload_failed", by=by)

        self._track(asyncio.create_task(reload()))

    async def reload(self, *, by: str = "api") -> ReloadReport:
        """Read the config file again and apply it part by part (one reload at a time); see runtime.reload."""
        async with self._reload_lock:
            report = await self._reload(by)
        if report.outcome in (Outcome.REFUSED, Outcome.UNAVAILABLE):
            log.warning("config_reloaded", **report.log_fields())
        else:
            log.info("config_reloaded", **report.log_fields())
        return report

    async def _reload(self, by: str) -> ReloadReport:
        if self.config_path is None:
            return ReloadReport(Outcome.UNAVAILABLE, "", by, refused=[
                ("", "this daemon was not started from a config file (labbridge run -c FILE)")])
        path = str(self.config_path)
        try:
            new = load_checked(self.config_path)
        except ConfigError as exc:
            return ReloadReport(Outcome.REFUSED, path, by, refused=list(exc.problems))
        old = self.config
        plan = plan_reload(old, new)
        config = effective_config(old, new, plan)
        report = ReloadReport(Outcome.APPLIED if plan.changes else Outcome.UNCHANGED, path, by,
                              changes=plan.changes, needs_restart=plan.needs_restart, unchanged=plan.unchanged)
        # What starts is built before anything stops: a part that cannot be set up refuses the whole reload.
        parts = instrument_parts(config.instruments)
        built: dict[str, Callable[[], Awaitable[None]]] = {}
        runners: dict[str, InstrumentRunner] = {}
        shared: list[SharedListener] = []
        relays: dict[str, Relay] = {}
        listeners: dict[str, LisOrderListener] = {}
        for key in plan.start:
            kind, _, ident = key.partition(":")
            try:
                if key in parts:
                    group = [self._runner(cfg) for cfg in parts[key]]
                    runners.update((r.cfg.id, r) for r in group)
                    if kind == "listener":
                        shared.append(SharedListener(group))
                        built[key] = shared[-1].run
                    else:
                        built[key] = group[0].run
                elif kind == "relay":
                    dest = next(d for d in config.lis if d.id == ident)
                    relays[ident] = Relay(dest, self.store, asyncio.Event())
                    built[key] = relays[ident].run
                else:
                    cfg = next(c for c in config.lis_orders if c.id == ident)
                    listeners[ident] = LisOrderListener(cfg, config=config, orders=self.orders,
                                                        on_added=self._order_added)
                    built[key] = listeners[ident].run
            except (LabbridgeError, OSError, ValueError) as exc:
                report.refused.append((key, f"cannot be set up: {exc}"))
        if report.refused:
            report.outcome, report.changes = Outcome.REFUSED, []
            return report
        old_part = {cfg.id: key for key, members in instrument_parts(old.instruments).items() for cfg in members}
        aborted = dict(zip(plan.stop, await asyncio.gather(*(self._stop_part(k) for k in plan.stop)), strict=True))
        for change in plan.changes:
            part = {"instrument": old_part.get(change.id), "lis": f"relay:{change.id}",
                    "lis_orders": f"lis_orders:{change.id}"}.get(change.kind)
            change.aborted = aborted.get(part or "", 0)
        # The new registries, in config order: unchanged parts keep their objects (and connections).
        self.config = config
        self.destinations[:] = [d.route() for d in config.lis]
        for ident, runner in runners.items():
            if ident in self.runners:  # restarted: its counts go on
                runner.health.counters = self.runners[ident].health.counters
        self.runners = {cfg.id: runners.get(cfg.id) or self.runners[cfg.id] for cfg in config.instruments}
        kept = [s for s in self.shared if f"listener:{s.address}" not in plan.stop]
        self.shared = [*kept, *shared]
        by_dest = {r.dest.id: r for r in self.relays}
        self.relays = [relays.get(d.id) or by_dest[d.id] for d in config.lis]
        by_listener = {lo.cfg.id: lo for lo in self.lis_orders}
        self.lis_orders = [listeners.get(c.id) or by_listener[c.id] for c in config.lis_orders]
        for lo in self.lis_orders:
            lo.config = config  # orders are routed against the instruments as configured now
        if old.log != config.log:
            configure_logs(config.log.level)
        # Before the new links open: an added instrument's stage (until then it would count as live, ungated).
        await self.campaign.reconfigure(config)
        for key, run in built.items():
            self._start_part(key, run)
        self._wake_relays()  # a new relay looks at its queue at once
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_TIMEOUT_S):
                await asyncio.gather(*(r.ready.wait() for r in runners.values()),
                                     *(lo.ready.wait() for lo in listeners.values()))
        if report.outcome is Outcome.APPLIED:
            self._write_ready_file()
        return report

    # ---- views for the surfaces (labbridge.runtime.api.DaemonApi) -----------------------------

    def instruments_json(self) -> list[dict[str, Any]]:
        out = []
        for runner in self.runners.values():
            data = runner.health.to_json()
            data["site_name"] = self.config.site_name(runner.cfg.site)
            out.append(data)
        return out

    def sites_json(self) -> list[dict[str, Any]]:
        instruments = self.instruments_json()
        sites = []
        for site in self.config.sites:
            mine = [i for i in instruments if i["site"] == site.id]
            states: dict[str, int] = {}
            for inst in mine:
                states[inst["state"]] = states.get(inst["state"], 0) + 1
            sites.append({"id": site.id, "name": site.name, "instruments": len(mine), "states": states})
        return sites

    def _link_state(self, instrument: str) -> tuple[str, str] | None:
        runner = self.runners.get(instrument)
        return runner.health.effective_state() if runner is not None else None

    def link_health(self) -> list[InstrumentHealth]:
        return [runner.health for runner in self.runners.values()]

    def listener_health(self) -> list[InstrumentHealth]:
        return [listener.health for listener in self.lis_orders]

    async def reload_config(self, *, by: str) -> dict[str, Any]:
        task = asyncio.create_task(self.reload(by=by))
        self._track(task)
        return (await asyncio.shield(task)).to_json()  # a client gone away does not stop a reload half done

    def destinations_json(self) -> list[dict[str, Any]]:
        return [{**relay.health.to_json(), "kind": relay.dest.kind} for relay in self.relays]

    async def instrument_history(self, instrument: str, days: int) -> dict[str, Any] | None:
        if instrument not in self.runners:
            return None
        return await self.history.read(instrument, days)

    # ---- [mqtt]: the fleet publisher (labbridge.fleet.publisher; docs/mqtt.md) ---------------------------------

    def _mqtt_publisher(self, config: Config) -> MqttPublisher | None:
        """The publisher when ``[mqtt]`` is configured (only then is labbridge.fleet, and later aiomqtt, imported)."""
        if config.mqtt is None:
            return None
        from labbridge.fleet.publisher import MqttPublisher

        return MqttPublisher(config.mqtt, node=config.node, healths=self.link_health, stages=self._stages,
                             sites=lambda: self.config.sites, dashboard=self._dashboard_url,
                             check_s=config.health.check_interval_s)

    async def _stages(self) -> dict[str, str]:
        """Each instrument's campaign stage: the store's, else the config's (not recorded yet)."""
        from labbridge.store.campaign import stage_rows

        recorded = await self.store.read(stage_rows)
        return {i.id: recorded.get(i.id, i.stage) for i in self.config.instruments}

    def _dashboard_url(self) -> str | None:
        mqtt = self.config.mqtt
        if mqtt is not None and mqtt.dashboard_url:
            return mqtt.dashboard_url
        return f"http://{self.http_address[0]}:{self.http_address[1]}/" if self.http_address else None

    def uplinks_json(self) -> list[dict[str, Any]]:
        return [self.mqtt.link.to_json()] if self.mqtt is not None else []

    # ---- end [mqtt] ----------------------------------------------------------------------------------------------
