"""The daemon's health task: feeds each instrument's health what only the store knows, and judges it.

Every ``check_interval_s`` each link's shown state is judged (:meth:`InstrumentHealth.observe`: a change is
logged once, even one that comes only from time passing, such as silence); every ``refresh_interval_s`` the
store-derived facts are read (LIS backlog and dead letters per instrument, its last stored message and last
delivery); every ``learn_interval_s`` its expected traffic is learned again from ``messages``. All reads run
on the store's read connection (a thread), never on a link's path; a failed read is logged and retried at
the next round, the facts already known stay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from labbridge.config import HealthConfig
from labbridge.health.instrument import InstrumentHealth, StoreFacts
from labbridge.health.traffic import learn
from labbridge.logs import flush_repeats, get_logger
from labbridge.store.db import Store

log = get_logger("labbridge.health")

FIRST_DELIVERY_LOOKBACK_S = 86400.0  # at start, the last delivery per instrument is looked for this far back


class HealthTask:
    """``healths`` gives the instruments' health objects each round (instruments may come and go)."""

    def __init__(self, store: Store, healths: Callable[[], Iterable[InstrumentHealth]], cfg: HealthConfig) -> None:
        self.store = store
        self._healths = healths
        self.cfg = cfg
        self._deliveries_since: float | None = None
        self._last_delivery: dict[str, float] = {}

    @property
    def healths(self) -> dict[str, InstrumentHealth]:
        out = {h.id: h for h in self._healths()}
        for health in out.values():
            health.lis_backlog_after_s = self.cfg.lis_backlog_after_s
        return out

    async def run(self) -> None:
        refreshed = learned = -float("inf")
        while True:
            now = time.time()
            if now - learned >= self.cfg.learn_interval_s:
                learned = now
                await self._guarded("learn", self.learn(now))
            if now - refreshed >= self.cfg.refresh_interval_s:
                refreshed = now
                await self._guarded("refresh", self.refresh(now))
            for health in self.healths.values():
                health.observe()
            flush_repeats()  # the counts of rate-limited warnings whose window ended
            await asyncio.sleep(self.cfg.check_interval_s)

    async def _guarded(self, what: str, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:  # the store may be busy or failing: the links' health keeps what it knows
            log.warning("health_facts_unavailable", step=what, error=type(exc).__name__)

    async def refresh(self, now: float) -> None:
        """Read the store-derived facts of every instrument."""
        outbox = await self.store.instrument_outbox_facts()
        since = self._deliveries_since if self._deliveries_since is not None else now - FIRST_DELIVERY_LOOKBACK_S
        for instrument, at in (await self.store.last_deliveries(since)).items():
            self._last_delivery[instrument] = max(at, self._last_delivery.get(instrument, at))
        self._deliveries_since = now - 60.0  # overlap: a delivery committed just before this read is seen
        healths = self.healths
        last_messages = await self.store.last_messages(list(healths))
        for instrument, health in healths.items():
            books = outbox.get(instrument, {})
            health.store = StoreFacts(pending_items=books.get("pending_items", 0),
                                      pending_results=books.get("pending_results", 0),
                                      oldest_pending_at=books.get("oldest_pending_at"),
                                      dead=tuple(books.get("dead", ())),
                                      last_stored_message_at=last_messages.get(instrument),
                                      last_delivery_at=self._last_delivery.get(instrument), read_at=now)

    async def learn(self, now: float) -> None:
        """Learn each instrument's traffic per hour of the week from the last ``learn_days`` of messages."""
        since = now - self.cfg.learn_days * 86400.0
        for instrument, health in self.healths.items():
            first, gaps = await self.store.message_hour_gaps(instrument, since)
            health.learned = learn(gaps, first_at=first, until=now, tz=health.tz, weeks=self.cfg.learn_days // 7)
