"""The one path of a received message: decode, map, commit, count, update health, log, and the answer.

Every analyzer link (ASTM E1381 or raw, HL7 over MLLP) hands its complete messages to a
:class:`MessageSink`, which returns a :class:`Decision`: whether the message is committed (only then may the
link acknowledge it: persist before acknowledging) and the :class:`~labbridge.protocols.link.Answer` the
analyzer gets. The sink decodes with the instrument's :class:`~labbridge.links.intake.InstrumentDecoder`
(driver, then mapping and policies); what it cannot decode is still committed, raw, with the reason, and
dead-lettered. On a shared listener the decoder attributes each message to one instrument, and the sink
counts it on that instrument's health from then on.

Only text labbridge controls goes to the log and to the analyzer: an arbitrary exception may quote patient
data. The store keeps the full text next to the raw message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from labbridge.errors import StoreError, StoreErrorKind
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.intake import InstrumentDecoder, Intake
from labbridge.logs import get_logger
from labbridge.model import HostQuery
from labbridge.outbox import OutboxItem, Route, handed_off
from labbridge.protocols.hl7_ack import Hl7Received
from labbridge.protocols.hl7_parse import ERR_INTERNAL, ERR_UNSUPPORTED_MESSAGE_TYPE
from labbridge.protocols.link import Answer, Link, Outcome
from labbridge.store.db import Store

log = get_logger("labbridge.sink")

NOT_STORED_TEXT = "labbridge could not store the message; send it again later"
_KIND_WORDS: dict[StoreErrorKind, str] = {
    "full": "the store is full", "io": "the store's disk cannot be written", "corrupt": "the store file is damaged",
    "busy": "the store file is locked by another program", "unavailable": "the store's writer stopped",
    "other": "the store failed"}


@dataclass(frozen=True, slots=True)
class Decision:
    """What becomes of one received message: committed or not, and what the analyzer is told."""

    stored: bool
    answer: Answer
    queries: tuple[HostQuery, ...] = ()  # host queries in it, answered once it is stored
    duplicate: bool = False  # the same message again (HL7 MSH-10 and content): acknowledged, not stored twice

    def apply(self, link: Link[object], now: float) -> None:
        """Answer the link's held message: accepted once committed, else refused (the analyzer resends)."""
        if self.stored:
            link.accept_message(now, self.answer)
        else:
            link.reject_message(now, self.answer)


class Counted(Protocol):
    """Where a connection's traffic is counted (a session); the sink may move it to the attributed instrument."""

    health: InstrumentHealth


@dataclass(slots=True)
class MessageSink:
    """One connection's way into the store (see the module's docstring)."""

    store: Store
    decoder: InstrumentDecoder
    destinations: list[str | Route]  # a Route per LIS destination (which results it takes)
    where: Counted
    # Called after a commit that queued or held something, with the items it queued to go now (the relay
    # sends these without reading them back; see labbridge.outbox.Queued).
    on_stored: Callable[[Sequence[OutboxItem]], None] | None = None
    backlog_after_s: float | None = None
    # On a shared listener: the health of the instrument a message was attributed to.
    attribute: Callable[[str], InstrumentHealth] | None = None
    _trouble: bool = field(default=False)  # the last commit failed: the health says so until one succeeds

    @property
    def health(self) -> InstrumentHealth:
        return self.where.health

    async def astm(self, records: tuple[bytes, ...], raw: bytes) -> Decision:
        """An ASTM message (E1381 or raw framing): stored decoded, or raw with the reason (still ACKed)."""
        async with self._in_flight():
            intake = self._attributed(self.decoder.decode_records(records))
            return await self._commit("astm", raw, intake, error=intake.error)

    async def hl7(self, received: Hl7Received, *, message_types: frozenset[str], driver: str) -> Decision:
        """An HL7 message: AA when stored and decoded; kept with AE/AR and the reason when it cannot be used."""
        async with self._in_flight():
            return await self._hl7(received, message_types=message_types, driver=driver)

    def _in_flight(self) -> asyncio.Semaphore:
        """A place among the store's messages in flight (decoded, not yet committed; bounded, labbridge.store.db
        MESSAGES_IN_FLIGHT), taken before the decode and given back once the commit is answered."""
        places = self.store.intake
        if places.locked():  # every place taken: this message waits for one, undecoded
            self.store.intake_waits += 1
        return places

    async def _hl7(self, received: Hl7Received, *, message_types: frozenset[str], driver: str) -> Decision:
        msg = received.message
        if msg is None:
            assert received.error is not None
            self.health.counters.decode_errors += 1
            log.warning("malformed_message", instrument=self.health.id, reason=received.error.reason)
            outcome = Outcome.ERROR if received.error.ack_code == "AE" else Outcome.REJECTED
            return await self._commit("hl7", received.raw, Intake(), error=received.error.reason, outcome=outcome,
                                      text=received.error.reason)
        if msg.message_type not in message_types:
            why = (f"message type {msg.message_type} is not supported by driver {driver} "
                   f"(supported: {', '.join(sorted(message_types))})")
            log.warning("unsupported_message_type", instrument=self.health.id, message_type=msg.message_type[:20])
            return await self._commit("hl7", received.raw, Intake(), error=why, outcome=Outcome.REJECTED, text=why,
                                      error_code=ERR_UNSUPPORTED_MESSAGE_TYPE)
        intake = self._attributed(self.decoder.decode_hl7(msg))
        failed = intake.error is not None
        return await self._commit("hl7", received.raw, intake, error=intake.error,
                                  sender_id=(msg.control_id, msg.content_digest()),
                                  outcome=Outcome.ERROR if failed else Outcome.ACCEPTED,
                                  text=(intake.log_reason or "internal error") if failed else "",
                                  error_code=ERR_INTERNAL if failed else "")

    async def keep(self, protocol: str, raw: bytes, *, error: str | None = None,
                   sender_id: tuple[str, str] | None = None, count: bool = True) -> Decision:
        """A message that carries no results (a host query, an analyzer's answer to our order): kept as
        received, counted as a message (``count``), never relayed."""
        return await self._commit(protocol, raw, Intake(), error=error, sender_id=sender_id, relay=False,
                                  count=count)

    async def incomplete(self, raw: bytes, reason: str) -> None:
        """A transmission that never became a message: kept for inspection, never a result."""
        log.warning("incomplete_transmission", instrument=self.health.id, reason=reason, bytes=len(raw))
        try:
            await self.store.record_incomplete(instrument=self.health.id, raw=raw, reason=reason,
                                               received_at=time.time())
        except Exception as exc:  # it never became a result; keeping it is best effort
            log.error("incomplete_not_kept", instrument=self.health.id, error=type(exc).__name__)
        # Counted once kept (or once keeping it failed), so the counter never runs ahead of the store.
        self.health.counters.incomplete_transmissions += 1

    # ---- internals ---------------------------------------------------------------------------------

    def _attributed(self, intake: Intake) -> Intake:
        if intake.instrument is not None and self.attribute is not None:
            self.where.health = self.attribute(intake.instrument)
        counters = self.health.counters
        if intake.error is not None:
            counters.decode_errors += 1
            log.warning("decode_failed", instrument=self.health.id, driver=self.decoder.driver.name,
                        reason=intake.log_reason)
        for held in intake.held:
            log.warning("message_held", instrument=self.health.id, kind=held.kind)
        return intake

    async def _commit(self, protocol: str, raw: bytes, intake: Intake, *, error: str | None,
                      sender_id: tuple[str, str] | None = None, outcome: Outcome = Outcome.ACCEPTED,
                      text: str = "", error_code: str = "", relay: bool = True, count: bool = True) -> Decision:
        health = self.health
        counters = health.counters
        received_at = time.time()
        try:
            stored = await self.store.commit_message(
                instrument=health.id, protocol=protocol, raw=raw, received_at=received_at,
                results=intake.results, destinations=self.destinations if relay else [], error=error,
                sender_id=sender_id, held=intake.held, held_results=intake.held_results,
                hold_reason=intake.hold_reason, backlog_after_s=self.backlog_after_s)
        except Exception as exc:
            counters.store_failures += 1
            self._trouble = True
            failure = exc if isinstance(exc, StoreError) else StoreError(str(exc))
            told = "is not acknowledged and will retransmit" if protocol == "astm" else "gets AR and should resend"
            health.set_state("degraded", f"results cannot be stored: {_KIND_WORDS[failure.kind]} ({exc}); the "
                                         f"analyzer {told}: {failure.hint}")
            log.error("store_failed", instrument=health.id, kind=failure.kind, error=type(exc).__name__)
            return Decision(False, Answer(Outcome.REJECTED, datetime.now(UTC), NOT_STORED_TEXT, ERR_INTERNAL))
        if self._trouble:
            self._trouble = False
            if health.state == "degraded":
                health.set_state("up", "store writable again")
        if count:
            health.message_counted()
        if stored.duplicate:
            counters.duplicate_messages += 1
            log.info("duplicate_message", instrument=health.id, message_id=stored.message_id)
        counters.results_received += stored.new_results
        counters.duplicate_results += stored.duplicate_results
        if relay:
            log.info("message_stored", instrument=health.id, message_id=stored.message_id,
                     results=stored.new_results, duplicates=stored.duplicate_results)
        if self.on_stored is not None and (stored.outbox_ids or intake.held or error):
            self.on_stored(handed_off(stored, instrument=health.id, received_at=received_at, results=intake.results))
        return Decision(True, Answer(outcome, datetime.now(UTC), text, error_code), tuple(intake.queries),
                        stored.duplicate)
