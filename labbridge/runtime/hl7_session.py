"""One HL7-over-MLLP connection from an analyzer: the thin asyncio shell around
:class:`labbridge.protocols.hl7_ack.Hl7Receiver`.

One task per connection reads bytes and handles each complete message in order: decode (pure driver),
commit to the store, and only then queue and write the acknowledgement(s). What is acknowledged:

* readable, supported, decoded: stored, AA (or CA then AA, per MSH-15/16);
* the same MSH-10 and content again (a sender's resend after a lost ACK): AA, nothing stored twice;
* unsupported message type: stored raw for inspection, AR (code 200);
* malformed (no MSH, bad encoding characters, truncated MSH, bad bytes for MSH-18) or undecodable by the
  driver: stored raw with the reason for inspection, AE/AR with the reason (MSA-3, ERR);
* the store cannot commit: AR (CR in enhanced mode) "resend later"; never an accepting ACK.

A block cut off by the end of the connection is kept in the store's ``incomplete`` table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from labbridge.driver import DecodeContext, Hl7Driver
from labbridge.logs import get_logger
from labbridge.protocols import mllp
from labbridge.protocols.hl7_ack import Hl7Event, Hl7Received, Hl7Receiver, Outcome
from labbridge.protocols.hl7_parse import ERR_INTERNAL, ERR_UNSUPPORTED_MESSAGE_TYPE
from labbridge.runtime.astm_session import ByteWriter
from labbridge.runtime.health import InstrumentHealth
from labbridge.runtime.intake import InstrumentDecoder, Intake
from labbridge.runtime.store import Store

log = get_logger("labbridge.hl7")

READ_SIZE = 64 * 1024


class Hl7Session:
    def __init__(self, *, receiver: Hl7Receiver, driver: Hl7Driver, context: DecodeContext, store: Store,
                 health: InstrumentHealth, destinations: list[str], reader: asyncio.StreamReader,
                 writer: ByteWriter, on_stored: Callable[[], None] | None = None,
                 decoder: InstrumentDecoder | None = None, backlog_after_s: float | None = None,
                 attribute: Callable[[str], InstrumentHealth] | None = None) -> None:
        self.receiver = receiver
        self.driver = driver
        self.context = context
        # The instrument's policies (expected sender, result mapping); plain decoding without one.
        self.decoder = decoder or InstrumentDecoder(driver, context)
        self.backlog_after_s = backlog_after_s
        # On a shared listener: the health (and id) of the instrument a message was attributed to.
        self.attribute = attribute
        self.store = store
        self.health = health
        self.destinations = destinations
        self.reader = reader
        self.writer = writer
        self.on_stored = on_stored

    async def run(self) -> None:
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self.health.counters.bytes_received += len(data)
                self.health.last_byte_at = time.time()
                for event in self.receiver.receive_data(data):
                    await self._handle(event)
        except (ConnectionError, OSError) as exc:
            log.info("connection_error", instrument=self.health.id, error=type(exc).__name__)
        finally:
            partial = self.receiver.connection_lost()
            if partial:
                self.health.counters.incomplete_transmissions += 1
                log.warning("incomplete_transmission", instrument=self.health.id, bytes=len(partial))
                try:
                    await self.store.record_incomplete(instrument=self.health.id, raw=partial, received_at=time.time(),
                                                       reason="connection ended inside an MLLP block")
                except Exception as exc:  # it never became a message; keeping it is best effort
                    log.error("incomplete_not_kept", instrument=self.health.id, error=str(exc))

    async def _handle(self, event: Hl7Event) -> None:
        counters = self.health.counters
        if isinstance(event, mllp.MllpJunk):
            counters.junk_bytes += event.count
        elif isinstance(event, mllp.MllpOversize):
            counters.frames_rejected += 1
            log.warning("message_too_large", instrument=self.health.id, limit=event.limit)
        elif isinstance(event, mllp.MllpBadEnd):
            counters.frames_rejected += 1
            log.warning("block_without_final_cr", instrument=self.health.id, size=event.size,
                        hint="set [instruments.link] allow_missing_cr = true if this analyzer omits it")
        else:
            self.health.frame_outcome(event.error is None)
            await self._message(event)

    async def _message(self, event: Hl7Received) -> None:
        counters = self.health.counters
        msg = event.message
        intake = Intake()
        error: str | None = None
        outcome = Outcome.ACCEPTED
        error_code = ""
        sender_id: tuple[str, str] | None = None
        error_text = ""
        if msg is None:
            assert event.error is not None
            error = event.error.reason
            outcome = Outcome.ERROR if event.error.ack_code == "AE" else Outcome.REJECTED
            counters.decode_errors += 1
            log.warning("malformed_message", instrument=self.health.id, reason=event.error.reason)
        elif msg.message_type not in self.driver.message_types:
            error = (f"message type {msg.message_type} is not supported by driver {self.driver.name} "
                     f"(supported: {', '.join(sorted(self.driver.message_types))})")
            outcome, error_code = Outcome.REJECTED, ERR_UNSUPPORTED_MESSAGE_TYPE
            log.warning("unsupported_message_type", instrument=self.health.id, message_type=msg.message_type[:20])
        else:
            sender_id = (msg.control_id, msg.content_digest())
            intake = self.decoder.decode_hl7(msg)
            if intake.instrument is not None and self.attribute is not None:
                self.health = self.attribute(intake.instrument)
                counters = self.health.counters
            if intake.error is not None:  # a driver bug or an undecodable message: kept raw, AE with the reason
                counters.decode_errors += 1
                # Only text labbridge controls goes to the log and the analyzer: an arbitrary exception
                # may quote patient data. The store keeps the full text next to the raw message.
                reason = intake.log_reason or "internal error"
                error = intake.error
                outcome, error_code = Outcome.ERROR, ERR_INTERNAL
                log.warning("decode_failed", instrument=self.health.id, driver=self.driver.name, reason=reason)
                error_text = reason
            for held in intake.held:
                log.warning("message_held", instrument=self.health.id, kind=held.kind)
        stored_ok = True
        try:
            stored = await self.store.commit_message(
                instrument=self.health.id, protocol="hl7", raw=event.raw, received_at=time.time(),
                results=intake.results, destinations=self.destinations, error=error, sender_id=sender_id,
                held=intake.held, held_results=intake.held_results, hold_reason=intake.hold_reason,
                backlog_after_s=self.backlog_after_s)
        except Exception as exc:
            stored_ok = False
            counters.store_failures += 1
            self.health.set_state("degraded", f"results cannot be stored ({exc}); the analyzer gets AR and "
                                              "should resend: check the disk")
            log.error("store_failed", instrument=self.health.id, error=str(exc))
            outcome, error_code = Outcome.REJECTED, ERR_INTERNAL
        if stored_ok:
            if self.health.state == "degraded" and counters.store_failures:
                self.health.set_state("up", "store writable again")
            counters.messages_received += 1
            if stored.duplicate:
                counters.duplicate_messages += 1
                log.info("duplicate_message", instrument=self.health.id, message_id=stored.message_id)
            counters.results_received += stored.new_results
            counters.duplicate_results += stored.duplicate_results
            self.health.last_message_at = time.time()
            log.info("message_stored", instrument=self.health.id, message_id=stored.message_id,
                     results=stored.new_results, duplicates=stored.duplicate_results)
            if self.on_stored is not None and (stored.outbox_ids or intake.held or error):
                self.on_stored()
        if not stored_ok:
            text = "labbridge could not store the message; send it again later"
        elif outcome is Outcome.ACCEPTED:
            text = ""
        elif msg is None or error_code == ERR_UNSUPPORTED_MESSAGE_TYPE:
            text = error or ""
        else:
            text = error_text
        codes = self.receiver.acknowledge(event, outcome=outcome, stored=stored_ok, now=datetime.now(UTC),
                                          text=text, error_code=error_code)
        counters.acks_sent += len(codes)
        out = self.receiver.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()
