"""The daemon: one store, one runner per instrument, one relay per LIS destination.

It runs with the surfaces its caller gives it (the HTTP server: :mod:`labbridge.web.server`), which see
it through :class:`labbridge.runtime.api.DaemonApi`; the daemon never imports them. Every long-running
part is a tracked task under a supervisor that logs, shows and restarts it if it fails, so one broken
part never stops the daemon. SIGTERM/SIGINT stop it cleanly; SIGKILL loses nothing that an analyzer was
told was received (the store commits before the ACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from labbridge import aio
from labbridge.backoff import backoff_delay
from labbridge.config import Config, TcpServerTransport, with_link_defaults
from labbridge.driver import driver_link_defaults
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.instrument import InstrumentRunner
from labbridge.links.intake import InstrumentDecoder, load_instrument_driver
from labbridge.links.lis_orders import LisOrderListener
from labbridge.links.shared import SharedListener
from labbridge.logs import get_logger
from labbridge.orders import NewOrder, Order, complete_order, order_problems
from labbridge.outbox import Retention
from labbridge.relay.operations import Operations
from labbridge.relay.relay import Relay
from labbridge.runtime.api import Surface
from labbridge.runtime.health_task import HealthTask
from labbridge.store.db import Store, wall_clock
from labbridge.store.orders import SqliteOrderSource

log = get_logger("labbridge.daemon")

READY_TIMEOUT_S = 15.0


class Daemon:
    def __init__(self, config: Config, *, ready_file: str | Path | None = None) -> None:
        config = with_link_defaults(config, driver_link_defaults)  # the drivers are loaded here
        self.config = config
        self.ready_file = Path(ready_file) if ready_file else None
        self.store = Store(config.store.path)
        self.orders = SqliteOrderSource(self.store)
        destinations = [d.id for d in config.lis]
        self.runners: dict[str, InstrumentRunner] = {}
        for inst in config.instruments:
            driver, driver_error = load_instrument_driver(inst)
            self.runners[inst.id] = InstrumentRunner(inst, driver=driver, driver_error=driver_error,
                                                     store=self.store, destinations=destinations,
                                                     on_stored=self._wake_relays, orders=self.orders,
                                                     backlog_after_s=config.backlog.older_than_s)
        # Instruments that share one tcp-server host:port (told apart per connection or per message).
        listeners: dict[tuple[str, int], list[InstrumentRunner]] = {}
        for runner in self.runners.values():
            t = runner.cfg.transport
            if isinstance(t, TcpServerTransport) and t.port != 0 and runner.cfg.enabled:
                listeners.setdefault((t.host, t.port), []).append(runner)
        self.shared = [SharedListener(group) for group in listeners.values() if len(group) > 1]
        self._shared_ids = {ident for listener in self.shared for ident in listener.runners}
        self.relays = [Relay(dest, self.store, asyncio.Event()) for dest in config.lis]
        self.lis_orders = [LisOrderListener(listener, config=config, orders=self.orders, on_added=self._order_added)
                           for listener in config.lis_orders]
        self.operations = Operations(self.store, self._decoder_for, backlog_after_s=config.backlog.older_than_s,
                                     on_change=self._wake_relays)
        self.addresses: dict[str, tuple[str, int]] = {}  # surface name -> where it listens
        self.started = asyncio.Event()

    @property
    def node(self) -> str:
        return self.config.node

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where the HTTP surface listens, when the daemon runs with one."""
        return self.addresses.get("http")

    def _wake_relays(self) -> None:
        """New outbox items were committed: every relay looks at its queue now."""
        for relay in self.relays:
            relay.wakeup.set()

    def order_problems(self, order: NewOrder) -> list[str]:
        return order_problems(self.config, order)

    async def add_order(self, order: NewOrder, *, now: float) -> Order:
        """Add a valid order (see :func:`order_problems`) and wake the runner that may push it."""
        stored = await self.orders.add_order(complete_order(self.config, order), now=now)
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
                              incomplete_s=r.incomplete_days * 86400)
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
        try:
            tasks.append(asyncio.create_task(self._supervise("retention", self._prune_periodically)))
            tasks.append(asyncio.create_task(self._supervise("health", HealthTask(
                self.store, self.link_health, self.config.health).run)))
            tasks.extend(asyncio.create_task(self._supervise(f"instrument:{r.cfg.id}", r.run))
                         for r in self.runners.values() if r.cfg.id not in self._shared_ids)
            tasks.extend(asyncio.create_task(self._supervise(f"listener:{s.address}", s.run)) for s in self.shared)
            tasks.extend(asyncio.create_task(self._supervise(f"relay:{r.dest.id}", r.run)) for r in self.relays)
            tasks.extend(asyncio.create_task(self._supervise(f"lis_orders:{lo.cfg.id}", lo.run))
                         for lo in self.lis_orders)
            for surface in surfaces:
                shown.append(surface)
                self.addresses[surface.name] = await surface.start(self)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await asyncio.gather(*(r.ready.wait() for r in self.runners.values()),
                                         *(lo.ready.wait() for lo in self.lis_orders))
            self._write_ready_file()
            self.started.set()
            log.info("daemon_started", node=self.config.node, instruments=len(self.runners),
                     destinations=len(self.relays), event_loop=aio.loop_name(asyncio.get_running_loop()),
                     http=f"http://{self.http_address[0]}:{self.http_address[1]}/" if self.http_address else None)
            await stop.wait()
        finally:
            log.info("daemon_stopping")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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

    def link_health(self) -> list[InstrumentHealth]:
        return [runner.health for runner in self.runners.values()]

    def destinations_json(self) -> list[dict[str, Any]]:
        return [{**relay.health.to_json(), "kind": relay.dest.kind} for relay in self.relays]
