"""The relay: drains one LIS destination's outbox, at least once, idempotent by content.

Each outbox item carries a stable control ID (MSH-10) derived from the content of its results, so a
resend after a crash or a lost ACK is the same message to the LIS. Failures are of two kinds:

* the destination is unreachable (no connection, no ACK in time): the whole destination backs off,
  with capped exponential backoff and jitter, and the item keeps its place;
* the LIS refuses this item (AR, or an unexpected code): this item backs off alone, so a poison message
  never blocks the ones behind it; codes listed in ``dead_letter_codes`` (AE by default: "fix it, don't
  resend") go straight to the dead letters with the LIS's reason, as does an item older than
  ``give_up_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from labbridge.config import MllpDestination
from labbridge.errors import TransientLinkError
from labbridge.lis.mllp import MllpSender
from labbridge.logs import get_logger
from labbridge.protocols.hl7 import Party, build_oru_r01, build_oul_r22
from labbridge.runtime.backoff import backoff_delay
from labbridge.runtime.store import OutboxItem, Store

log = get_logger("labbridge.relay")

IDLE_POLL_S = 5.0


@dataclass
class DestinationHealth:
    id: str
    address: str
    state: str = "unknown"  # up | down | unknown
    reason: str = "no delivery attempted yet"
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_delivery_at: float | None = None
    last_error: str | None = None

    def set_state(self, state: str, reason: str) -> None:
        if state != self.state:
            log.info("lis_state", destination=self.id, state=state, reason=reason)
        self.state = state
        self.reason = reason

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "state": self.state, "reason": self.reason,
                "delivered": self.delivered, "retried": self.retried, "dead_lettered": self.dead_lettered,
                "last_delivery_at": self.last_delivery_at, "last_error": self.last_error}


class Relay:
    def __init__(self, dest: MllpDestination, store: Store, wakeup: asyncio.Event) -> None:
        self.dest = dest
        self.store = store
        self.wakeup = wakeup
        self.health = DestinationHealth(dest.id, f"{dest.host}:{dest.port}")
        ssl_context = None
        if dest.tls is not None:
            from labbridge.runtime.tls import client_context

            ssl_context = client_context(dest.tls)
        self.sender = MllpSender(dest.host, dest.port, connect_timeout=dest.connect_timeout_s,
                                 ack_timeout=dest.ack_timeout_s, ssl_context=ssl_context,
                                 server_hostname=dest.tls.server_hostname if dest.tls is not None else None)
        self._outage_attempts = 0

    def render(self, item: OutboxItem) -> bytes:
        build = build_oul_r22 if self.dest.message_type == "OUL^R22" else build_oru_r01
        return build(
            item.results, control_id=item.control_id,
            created_at=datetime.fromtimestamp(item.created_at, UTC),
            sender=Party(self.dest.sending_application, self.dest.sending_facility),
            receiver=Party(self.dest.receiving_application, self.dest.receiving_facility))

    async def run(self) -> None:
        try:
            while True:
                self.wakeup.clear()
                item, next_at = await self.store.next_due(self.dest.id, time.time())
                if item is None:
                    wait = IDLE_POLL_S if next_at is None else max(0.0, min(IDLE_POLL_S, next_at - time.time()))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self.wakeup.wait()
                    continue
                await self._deliver(item)
        finally:
            await self.sender.close()

    async def _deliver(self, item: OutboxItem) -> None:
        now = time.time()
        if not item.results:
            await self.store.dead_letter(item.id, "no results left to send (store inconsistency)")
            return
        try:
            ack = await self.sender.send(self.render(item), item.control_id)
        except TransientLinkError as exc:
            reason = str(exc)
            self.health.last_error = reason
            self.health.set_state("down", f"{reason}; results wait in the store and are sent when it is back")
            if now - item.created_at > self.dest.give_up_after_s:
                await self._dead(item, f"undelivered after {self.dest.give_up_after_s / 3600:g} h: {reason}")
                return
            await self.store.schedule_retry(item.id, now, reason)
            delay = backoff_delay(self._outage_attempts, self.dest.backoff_initial_s, self.dest.backoff_max_s)
            self._outage_attempts += 1
            await asyncio.sleep(delay)
            return
        self._outage_attempts = 0
        self.health.set_state("up", "the LIS acknowledges results")
        if ack.accepted:
            await self.store.mark_delivered(item.id, time.time())
            self.health.delivered += 1
            self.health.last_delivery_at = time.time()
            return
        reason = f"LIS answered {ack.code}" + (f": {ack.text}" if ack.text else "")
        self.health.last_error = reason
        if ack.code in self.dest.dead_letter_codes or now - item.created_at > self.dest.give_up_after_s:
            await self._dead(item, reason)
            return
        self.health.retried += 1
        delay = backoff_delay(item.attempts, self.dest.backoff_initial_s, self.dest.backoff_max_s)
        await self.store.schedule_retry(item.id, now + delay, reason)
        log.warning("lis_refused", destination=self.dest.id, outbox_id=item.id, code=ack.code,
                    retry_in_s=round(delay, 1))

    async def _dead(self, item: OutboxItem, reason: str) -> None:
        await self.store.dead_letter(item.id, reason)
        self.health.dead_lettered += 1
        log.error("dead_letter", destination=self.dest.id, outbox_id=item.id, reason=reason)
