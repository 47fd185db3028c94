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

Orders (IHE LAW, with an order source): a ``QBP^Q11`` (LAB-27) is stored like any message, then answered
with ``RSP^K11`` (only after the commit; AR if it cannot be stored, AE if it is not a query labbridge
answers), then the work follows as LAB-28 ``OML^O33``, one message per specimen, ``ORC-1 = DC`` for a
specimen without work. Orders addressed to this instrument are pushed the same way when the connection is
free (woken when an order is added, and every ``ORDER_POLL_S`` for orders written by another process).
One OML^O33 is outstanding at a time; the analyzer's ``ORL^O34`` (kept in the store) settles it: AWOS
``OK`` -> the order is accepted; ``UA`` -> back to pending with the analyzer's reason; a refusal as a
re-sent AWOS ID (ERR 205) means the analyzer already holds it -> accepted. An analyzer that answers with
a plain ACK instead: AA/CA -> sent, AE/AR -> back to pending with the reason. Nothing is recorded as
sent before the analyzer's answer; without one within ``ORL_TIMEOUT_S`` the orders stay pending and are
pushed again later (same AWOS IDs).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from labbridge.driver import DecodeContext, Hl7Driver
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.astm import ByteWriter
from labbridge.links.input_wait import LinkInput, Wakeup
from labbridge.links.intake import InstrumentDecoder, Intake
from labbridge.logs import get_logger
from labbridge.orders import LIVE_STATES, Order, OrderSource
from labbridge.protocols import mllp
from labbridge.protocols.hl7 import Party
from labbridge.protocols.hl7_ack import Hl7Event, Hl7Received, Hl7Receiver, Outcome
from labbridge.protocols.hl7_orders import (
    Awos,
    Hl7OrderError,
    WosQuery,
    awos_id,
    build_oml_o33,
    build_rsp_k11,
    order_of_awos,
    read_orl,
    read_wos_query,
)
from labbridge.protocols.hl7_parse import ERR_INTERNAL, ERR_UNSUPPORTED_MESSAGE_TYPE
from labbridge.store.db import Store

log = get_logger("labbridge.hl7")

READ_SIZE = 64 * 1024
ORDER_POLL_S = 5.0  # look for orders added to the store by another process this often
ORL_TIMEOUT_S = 30.0  # an OML^O33 without the analyzer's ORL^O34 by then is given up (orders stay pending)
PUSH_BATCH = 50  # orders (at most) looked up per push round
MAX_QUEUED = 500  # OML^O33 answers waiting for the connection (bounded: an analyzer may query in a loop)
ANSWER_TYPES = frozenset({"ORL^O34", "ACK^O33", "ACK^"})  # the analyzer's answers to our OML^O33


@dataclass(slots=True)
class _Oml:
    """One OML^O33 of ours: the answer to a query (``answer``) or a push (``push``)."""

    kind: str
    control_id: str
    payload: bytes
    awos: dict[str, int]  # AWOS ID -> order ID
    deadline: float = 0.0

    @property
    def order_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.awos.values()))


class Hl7Session:
    def __init__(self, *, receiver: Hl7Receiver, driver: Hl7Driver, context: DecodeContext, store: Store,
                 health: InstrumentHealth, destinations: list[str], reader: asyncio.StreamReader,
                 writer: ByteWriter, on_stored: Callable[[], None] | None = None,
                 decoder: InstrumentDecoder | None = None, backlog_after_s: float | None = None,
                 attribute: Callable[[str], InstrumentHealth] | None = None,
                 orders: OrderSource | None = None, site: str = "", wakeup: Wakeup | None = None) -> None:
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
        self.orders = orders if driver.supports_orders else None
        self.site = site
        self.wakeup = wakeup
        self._queue: deque[_Oml] = deque()  # query answers waiting for the connection
        self._waiting: _Oml | None = None  # sent, waiting for the analyzer's ORL^O34
        self._next_poll = 0.0  # when to look for orders to push (0: at once)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self.wakeup if self.orders is not None else None
        link_input = LinkInput(self.reader, READ_SIZE, wakeup)
        try:
            await self._offer()
            while True:
                data = await link_input.read(self._deadline())
                if wakeup is not None and wakeup.consume():
                    self._next_poll = 0.0
                if data is not None:
                    if not data:
                        break
                    self.health.counters.bytes_received += len(data)
                    self.health.last_byte_at = time.time()
                    for event in self.receiver.receive_data(data):
                        await self._handle(event)
                if self._waiting is not None and loop.time() >= self._waiting.deadline:
                    log.warning("order_answer_timeout", instrument=self.health.id, kind=self._waiting.kind,
                                orders=len(self._waiting.order_ids),
                                note="no ORL^O34 in time; the orders stay pending and are sent again")
                    self._waiting = None
                await self._offer()
        except (ConnectionError, OSError) as exc:
            log.info("connection_error", instrument=self.health.id, error=type(exc).__name__)
        finally:
            link_input.close()
            if self._waiting is not None or self._queue:
                log.info("host_messages_not_delivered", instrument=self.health.id,
                         messages=len(self._queue) + (self._waiting is not None),
                         note="orders stay pending and are sent again on the next connection")
            partial = self.receiver.connection_lost()
            if partial:
                log.warning("incomplete_transmission", instrument=self.health.id, bytes=len(partial))
                try:
                    await self.store.record_incomplete(instrument=self.health.id, raw=partial, received_at=time.time(),
                                                       reason="connection ended inside an MLLP block")
                except Exception as exc:  # it never became a message; keeping it is best effort
                    log.error("incomplete_not_kept", instrument=self.health.id, error=str(exc))
                self.health.counters.incomplete_transmissions += 1  # once kept: never ahead of the store

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
            msg = event.message
            if msg is not None and self.orders is not None and msg.message_type in ANSWER_TYPES:
                await self._analyzer_answer(event)
            elif msg is not None and self.orders is not None and msg.message_type == "QBP^Q11":
                await self._query(event)
            else:
                await self._message(event)

    # ---- LAW orders: LAB-27 queries, LAB-28 work orders --------------------------------------------

    def _deadline(self) -> float | None:
        if self._waiting is not None:
            return self._waiting.deadline
        if self.orders is not None and not self._queue:
            return self._next_poll
        return None

    def _me(self) -> Party:
        return Party(self.context.host_name.upper())

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _offer(self) -> None:
        """Send our next OML^O33 when none is outstanding: query answers first, then pushes."""
        if self._waiting is not None or self.orders is None:
            return
        loop = asyncio.get_running_loop()
        if not self._queue and loop.time() >= self._next_poll:
            self._next_poll = loop.time() + ORDER_POLL_S
            self._queue.extend(await self._push_messages())
        if not self._queue:
            return
        oml = self._queue.popleft()
        oml.deadline = loop.time() + ORL_TIMEOUT_S
        self._waiting = oml
        await self._write(mllp.frame(oml.payload))

    def _oml(self, kind: str, sample_id: str, orders: Sequence[Order], receiver: Party) -> _Oml:
        steps: list[Awos] = []
        awos: dict[str, int] = {}
        for order in orders:
            for n, code in enumerate(order.test_codes, start=1):
                step = Awos(awos_id(order.id, n), self.context.instrument_test(code), order.priority)
                steps.append(step)
                awos[step.awos_id] = order.id
        control_id = "LBO" + secrets.token_hex(8)
        patient = next((o.patient_id for o in orders if o.patient_id), "")
        payload = build_oml_o33(sample_id, steps, control_id=control_id, now=datetime.now(self.context.timezone),
                                sender=self._me(), receiver=receiver, patient_id=patient)
        return _Oml(kind, control_id, payload, awos)

    async def _push_messages(self) -> list[_Oml]:
        assert self.orders is not None
        try:
            found = await self.orders.orders_to_push(instrument=self.health.id, limit=PUSH_BATCH)
        except Exception as exc:  # the store is unreachable: push later, never crash the link
            log.error("orders_unavailable", instrument=self.health.id, error=type(exc).__name__)
            return []
        by_sample: dict[str, list[Order]] = {}
        for order in found:
            by_sample.setdefault(order.sample_id, []).append(order)
        if by_sample:
            log.info("orders_push", instrument=self.health.id, orders=len(found), samples=len(by_sample))
        return [self._oml("push", sample, mine, Party(self.health.id)) for sample, mine in by_sample.items()]

    async def _query(self, event: Hl7Received) -> None:
        """LAB-27: store the query, answer RSP^K11 after the commit, queue the work (OML^O33)."""
        assert event.message is not None
        assert self.orders is not None
        msg = event.message
        counters = self.health.counters
        counters.host_queries += 1
        try:
            query: WosQuery | None = read_wos_query(msg)
            problem = ""
            error_code = ""
        except Hl7OrderError as exc:
            query, problem, error_code = None, exc.reason, exc.error_code
            log.warning("host_query_refused", instrument=self.health.id, reason=exc.reason)
        try:
            stored = await self.store.commit_message(
                instrument=self.health.id, protocol="hl7", raw=event.raw, received_at=time.time(), results=[],
                destinations=[], error=problem or None, sender_id=(msg.control_id, msg.content_digest()))
        except Exception as exc:
            counters.store_failures += 1
            log.error("store_failed", instrument=self.health.id, error=str(exc))
            self.receiver.acknowledge(event, outcome=Outcome.REJECTED, stored=False, now=datetime.now(UTC),
                                      text="labbridge could not store the query; send it again later",
                                      error_code=ERR_INTERNAL)
            await self._write(self.receiver.data_to_send())
            return
        counters.messages_received += 1
        self.health.last_message_at = time.time()
        if query is None:
            self.receiver.acknowledge(event, outcome=Outcome.ERROR, stored=True, now=datetime.now(UTC),
                                      text=problem, error_code=error_code)
            await self._write(self.receiver.data_to_send())
            return
        analyzer = Party(msg.value(msg.header, 3), msg.value(msg.header, 4))
        answers: list[_Oml] = []
        if not stored.duplicate:  # a resent query is answered again; its work is already on its way
            try:
                answers = await self._answers(query, analyzer)
            except Exception as exc:  # no answer rather than a wrong one: RSP^K11 says AE, nothing follows
                log.error("host_query_failed", instrument=self.health.id, error=type(exc).__name__)
                self.receiver.acknowledge(event, outcome=Outcome.ERROR, stored=True, now=datetime.now(UTC),
                                          text="labbridge cannot read its orders now; query again later",
                                          error_code=ERR_INTERNAL)
                await self._write(self.receiver.data_to_send())
                return
        found = any(a.awos for a in answers)
        rsp = build_rsp_k11(query, query_control_id=msg.control_id, control_id="LBR" + secrets.token_hex(8),
                            now=datetime.now(self.context.timezone), sender=self._me(), receiver=analyzer,
                            found=found)
        await self._write(mllp.frame(rsp))
        counters.acks_sent += 1
        room = MAX_QUEUED - len(self._queue)
        if len(answers) > room:
            log.warning("query_answers_dropped", instrument=self.health.id, dropped=len(answers) - max(room, 0),
                        note="too many answers waiting; the analyzer may query those specimens again")
            answers = answers[:max(room, 0)]
        # Query answers go before pushes already queued (the analyzer is waiting for them).
        queued = list(self._queue)
        self._queue = deque([*(o for o in queued if o.kind == "answer"), *answers,
                             *(o for o in queued if o.kind != "answer")])
        log.info("host_query", instrument=self.health.id, kind=query.kind, samples=len(query.specimen_ids),
                 with_work=sum(1 for a in answers if a.awos), without_work=sum(1 for a in answers if not a.awos),
                 duplicate=stored.duplicate)

    async def _answers(self, query: WosQuery, analyzer: Party) -> list[_Oml]:
        assert self.orders is not None
        if query.all_samples:
            found = await self.orders.orders_for_instrument(instrument=self.health.id, site=self.site,
                                                            states=LIVE_STATES)
            samples = list(dict.fromkeys(o.sample_id for o in found))
        else:
            # labbridge keeps no rack or tray assignments: a rack/tray query is answered by its specimen IDs.
            samples = list(dict.fromkeys(query.specimen_ids))
            found = await self.orders.orders_for_samples(instrument=self.health.id, site=self.site,
                                                         sample_ids=samples)
        if not samples:
            return [self._oml("answer", "", [], analyzer)]  # nothing at all: one negative answer (DC)
        by_sample: dict[str, list[Order]] = {}
        for order in found:
            by_sample.setdefault(order.sample_id, []).append(order)
        return [self._oml("answer", sample, by_sample.get(sample, []), analyzer) for sample in samples]

    async def _analyzer_answer(self, event: Hl7Received) -> None:
        """An ORL^O34 (or ACK) to one of our OML^O33: keep it, settle the orders it names."""
        assert event.message is not None
        assert self.orders is not None
        try:
            answer = read_orl(event.message)
        except Hl7OrderError as exc:
            log.warning("analyzer_answer_unreadable", instrument=self.health.id, reason=exc.reason)
            return
        waiting = self._waiting
        ours = waiting is not None and answer.control_id == waiting.control_id
        if ours:
            self._waiting = None
        try:
            await self.store.commit_message(instrument=self.health.id, protocol="hl7", raw=event.raw,
                                            received_at=time.time(), results=[], destinations=[])
        except Exception as exc:  # the order states below still record the answer
            log.error("store_failed", instrument=self.health.id, error=str(exc))
        now = time.time()
        counters = self.health.counters
        try:
            if answer.has_orders:
                accepted = [i for a in (*answer.accepted, *answer.duplicates) if (i := order_of_awos(a)) is not None]
                refused: dict[int, str] = {}
                for a, reason in answer.refused.items():
                    order_id = order_of_awos(a)
                    if order_id is not None:
                        refused.setdefault(order_id, reason)
                await self.orders.mark_accepted(accepted, instrument=self.health.id, now=now)
                for order_id, reason in refused.items():
                    await self.orders.mark_refused([order_id], instrument=self.health.id, reason=reason, now=now)
                counters.orders_sent += len(set(accepted) | set(refused))
                log.info("orders_answered", instrument=self.health.id, accepted=len(set(accepted) - set(refused)),
                         refused=len(refused))
            elif ours and waiting is not None:
                ids = waiting.order_ids
                if answer.code in ("AA", "CA"):
                    await self.orders.mark_sent(ids, instrument=self.health.id, now=now)
                    counters.orders_sent += len(ids)
                else:
                    await self.orders.mark_refused(ids, instrument=self.health.id, now=now,
                                                   reason=answer.text or f"the analyzer answered {answer.code}")
                log.info("orders_acknowledged", instrument=self.health.id, code=answer.code, orders=len(ids))
        except Exception as exc:  # the answer is lost to the order states: the orders are sent again
            log.error("order_state_not_saved", instrument=self.health.id, error=type(exc).__name__)
        if ours and waiting is not None and waiting.kind == "answer":
            counters.query_answers_sent += 1

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
