"""HL7's part of an analyzer connection (a :class:`labbridge.links.session.Role` around
:class:`labbridge.protocols.hl7_ack.Hl7Receiver`).

Each complete message is handled in order: decoded and committed by the
:class:`labbridge.links.sink.MessageSink`, and only then are the acknowledgement(s) queued. What is
acknowledged:

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

import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from labbridge.driver import DecodeContext, Hl7Driver
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.session import LinkSession
from labbridge.links.sink import MessageSink
from labbridge.logs import get_logger
from labbridge.orders import LIVE_STATES, Order, OrderSource
from labbridge.protocols import mllp
from labbridge.protocols.hl7 import Party
from labbridge.protocols.hl7_ack import Hl7Event, Hl7Received, Hl7Receiver, IncompleteBlock
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
from labbridge.protocols.hl7_parse import ERR_INTERNAL
from labbridge.protocols.link import Answer, Outcome, over_limit

log = get_logger("labbridge.hl7")

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


class Hl7Role:
    """See the module's docstring."""

    def __init__(self, session: LinkSession[Hl7Event], link: Hl7Receiver, *, sink: MessageSink, driver: Hl7Driver,
                 context: DecodeContext, orders: OrderSource | None = None, site: str = "") -> None:
        self.session = session
        self.link = link
        self.sink = sink
        self.driver = driver
        self.context = context
        self.orders = orders if driver.supports_orders else None
        self.site = site
        self._queue: deque[_Oml] = deque()  # query answers waiting for the connection
        self._waiting: _Oml | None = None  # sent, waiting for the analyzer's ORL^O34
        self._next_poll = 0.0  # when to look for orders to push

    @property
    def health(self) -> InstrumentHealth:
        return self.session.health

    def on_event(self, event: Hl7Event) -> bool:
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
            return False
        return True

    async def handle(self, event: Hl7Event) -> None:
        if isinstance(event, IncompleteBlock):
            await self.sink.incomplete(event.raw, "connection ended inside an MLLP block")
            return
        if not isinstance(event, Hl7Received):
            return
        self.health.frame_outcome(event.error is None)
        if event.error is not None and over_limit(event.error.reason):
            self.health.counters.over_limit += 1
            self.health.notice("over_limit", f"a message from {self.session.peer} went over a limit (answered AR: "
                               f"{event.error.reason}; [instruments.link] max_*)")
            log.warning("message_over_limit", instrument=self.health.id, peer=self.session.peer,
                        reason=event.error.reason)
        msg = event.message
        if msg is not None and self.orders is not None and msg.message_type in ANSWER_TYPES:
            await self._analyzer_answer(event)
        elif msg is not None and self.orders is not None and msg.message_type == "QBP^Q11":
            await self._query(event)
        else:
            decision = await self.sink.hl7(event, message_types=self.driver.message_types, driver=self.driver.name)
            before = self.link.acks_sent
            decision.apply(self.link, self.session.now())
            self.health.counters.acks_sent += self.link.acks_sent - before

    def deadline(self) -> float | None:
        if self._waiting is not None:
            return self._waiting.deadline
        if self.orders is None:
            return None
        return 0.0 if self._queue else self._next_poll

    async def work(self, now: float, *, woken: bool) -> None:
        """Time out the OML^O33 awaiting its answer; send our next one when none is outstanding: query answers
        first, then pushes."""
        if woken:
            self._next_poll = 0.0
        waiting = self._waiting
        if waiting is not None and now >= waiting.deadline:
            log.warning("order_answer_timeout", instrument=self.health.id, kind=waiting.kind,
                        orders=len(waiting.order_ids),
                        note="no ORL^O34 in time; the orders stay pending and are sent again")
            self._waiting = None
        if self._waiting is not None or self.orders is None:
            return
        if not self._queue and now >= self._next_poll:
            self._next_poll = now + ORDER_POLL_S
            self._queue.extend(await self._push_messages())
        if not self._queue:
            return
        oml = self._queue.popleft()
        oml.deadline = self.session.now() + ORL_TIMEOUT_S
        self._waiting = oml
        self.session.send(mllp.frame(oml.payload))

    async def finish(self) -> None:
        if self._waiting is not None or self._queue:
            log.info("host_messages_not_delivered", instrument=self.health.id,
                     messages=len(self._queue) + (self._waiting is not None),
                     note="orders stay pending and are sent again on the next connection")

    def _answer_now(self, *, stored: bool, outcome: Outcome, text: str, error_code: str = "") -> None:
        """Acknowledge the held message ourselves (a query we cannot answer)."""
        answer = Answer(outcome, datetime.now(UTC), text, error_code)
        if stored:
            self.link.accept_message(self.session.now(), answer)
        else:
            self.link.reject_message(self.session.now(), answer)
        self.session.flush()

    # ---- LAW orders: LAB-27 queries, LAB-28 work orders --------------------------------------------

    def _me(self) -> Party:
        return Party(self.context.host_name.upper())

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
        self.health.counters.host_queries += 1
        try:
            query: WosQuery | None = read_wos_query(msg)
            problem = ""
            error_code = ""
        except Hl7OrderError as exc:
            query, problem, error_code = None, exc.reason, exc.error_code
            log.warning("host_query_refused", instrument=self.health.id, reason=exc.reason)
        decision = await self.sink.keep("hl7", event.raw, error=problem or None,
                                        sender_id=(msg.control_id, msg.content_digest()))
        if not decision.stored:
            self._answer_now(stored=False, outcome=Outcome.REJECTED, error_code=ERR_INTERNAL,
                             text="labbridge could not store the query; send it again later")
            return
        if query is None:
            self._answer_now(stored=True, outcome=Outcome.ERROR, text=problem, error_code=error_code)
            return
        analyzer = Party(msg.value(msg.header, 3), msg.value(msg.header, 4))
        answers: list[_Oml] = []
        if not decision.duplicate:  # a resent query is answered again; its work is already on its way
            try:
                answers = await self._answers(query, analyzer)
            except Exception as exc:  # no answer rather than a wrong one: RSP^K11 says AE, nothing follows
                log.error("host_query_failed", instrument=self.health.id, error=type(exc).__name__)
                self._answer_now(stored=True, outcome=Outcome.ERROR, error_code=ERR_INTERNAL,
                                 text="labbridge cannot read its orders now; query again later")
                return
        found = any(a.awos for a in answers)
        rsp = build_rsp_k11(query, query_control_id=msg.control_id, control_id="LBR" + secrets.token_hex(8),
                            now=datetime.now(self.context.timezone), sender=self._me(), receiver=analyzer,
                            found=found)
        self.link.release()  # the RSP^K11 is the answer (it carries the MSA)
        self.session.send(mllp.frame(rsp))
        self.health.counters.acks_sent += 1
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
                 duplicate=decision.duplicate)

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
        self.link.release()  # an answer to our message is not acknowledged
        try:
            answer = read_orl(event.message)
        except Hl7OrderError as exc:
            log.warning("analyzer_answer_unreadable", instrument=self.health.id, reason=exc.reason)
            return
        waiting = self._waiting
        ours = waiting is not None and answer.control_id == waiting.control_id
        if ours:
            self._waiting = None
        # Kept for the record (a failure is logged by the sink; the order states below still record it).
        await self.sink.keep("hl7", event.raw, count=False)
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
