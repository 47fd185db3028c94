"""ASTM's part of a connection (a :class:`labbridge.links.session.Role`): E1381 or raw-framing events, host
query answers and order pushes.

A complete message goes to the :class:`labbridge.links.sink.MessageSink` (decode, commit); only then is its
final frame acknowledged; if the commit fails, the frame is NAKed and the analyzer retransmits it. Events
that only count (frames accepted or rejected, junk, contention) are counted on the fast path.

Host side (labbridge sends): a host query in a stored message is answered from the order source as a
separate message, queued on the link right after the ACK; the link sends it once the analyzer's EOT
has returned the line to neutral (and yields to the analyzer on contention, R-A7). Orders addressed to
this instrument are pushed the same way whenever the link is neutral with nothing else to send: the
role looks when woken (an order was added, or the connection is new), and every ``ORDER_POLL_S`` (orders
written to the store by another process). At most one message of ours is on the link at a time, the query
answer first; one query answer is outstanding at a time (R-B10), a newer query replaces an unsent answer
and Q-13 ``A`` withdraws it. Orders are recorded as sent only when the link reports ``MessageSent`` (the
analyzer ACKed the last frame); a transfer that fails is retried by the link, and orders lost with a
connection stay pending and are pushed again on the next one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from labbridge.driver import AstmDriver, DecodeContext
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.session import LinkSession
from labbridge.links.sink import MessageSink
from labbridge.logs import get_logger
from labbridge.model import HostQuery, OrderLine
from labbridge.orders import LIVE_STATES, Order, OrderSource, answer_query, push_lines
from labbridge.protocols import au_online, e1381, raw
from labbridge.protocols.link import over_limit

log = get_logger("labbridge.astm")

ORDER_POLL_S = 5.0  # look for orders added to the store by another process this often
PUSH_BATCH = 50  # orders (at most) in one pushed message


@dataclass(slots=True)
class _Job:
    """A message of ours handed to the link."""

    kind: str  # "reply" (answer to a host query) or "orders" (push)
    records: list[bytes]
    order_ids: tuple[int, ...]


class AstmRole:
    """See the module's docstring."""

    def __init__(self, session: LinkSession[e1381.Event], link: e1381.E1381Link | raw.RawLink | au_online.AuLink,
                 *, sink: MessageSink,
                 driver: AstmDriver, context: DecodeContext, orders: OrderSource | None = None,
                 site: str = "") -> None:
        self.session = session
        self.link = link
        self.sink = sink
        self.driver = driver
        self.context = context
        # Answers and pushes need a link that can send: E1381 (raw framing has no way back; the AU online
        # link answers no sample-information inquiry).
        self.orders = orders if driver.supports_orders and isinstance(link, e1381.E1381Link) else None
        self.site = site
        self._reply: _Job | None = None  # the answer to the last host query, not yet on the link
        self._on_link: dict[int, _Job] = {}  # link handle -> our message being sent
        self._next_poll = 0.0  # when to look for orders to push
        self._warned_no_orders = False
        # The health reason says so while our messages fail, or after a transfer that ended incomplete.
        self._send_trouble = False
        self._incomplete_noted = False

    @property
    def health(self) -> InstrumentHealth:
        return self.session.health

    def on_event(self, event: e1381.Event) -> bool:
        """Count an event (True), or leave it to :meth:`handle` (False)."""
        health = self.session.health
        counters = health.counters
        # A frame's outcome is known in the read that brought its last byte: timed as that read.
        if isinstance(event, e1381.FrameAccepted):
            health.frame_outcome(True, health.last_byte_at)
        elif isinstance(event, e1381.FrameRejected):
            if event.by_peer:
                health.count_nak_received()
            else:
                counters.frames_rejected += 1
                if event.reason.startswith("checksum"):
                    counters.checksum_errors += 1
                health.frame_outcome(False, health.last_byte_at)
        elif isinstance(event, e1381.FrameRetransmitted):
            counters.retransmissions += 1
        elif isinstance(event, e1381.JunkDiscarded):
            counters.junk_bytes += event.count
        elif isinstance(event, e1381.Contention):
            counters.contentions += 1
        elif isinstance(event, e1381.KeepAlive):
            counters.keepalives += 1
            health.decoded()
        elif isinstance(event, e1381.TransferEnded):
            if event.reason == "timeout":
                health.count_timeout()
        elif isinstance(event, e1381.SendAborted):
            self._send_aborted(event)
        elif not isinstance(event, (e1381.TransferStarted, e1381.PeerBusy)):
            return False
        return True

    async def handle(self, event: e1381.Event) -> None:
        if isinstance(event, e1381.MessageReceived):
            decision = await self.sink.astm(event.records, event.raw)
            decision.apply(self.link, self.session.now())
            if not decision.stored:
                return
            if self._incomplete_noted and self.health.state == "up":
                self._incomplete_noted = False
                self.health.set_state("up", f"analyzer connected from {self.session.peer}")
            if decision.queries:
                self.session.flush()  # the ACK first, then the time to look the orders up
                await self._answer(decision.queries)
        elif isinstance(event, e1381.MessageSent):
            await self._sent(event.handle)
            if self._send_trouble:
                self._send_trouble = False
                if self.health.state == "degraded":
                    self.health.set_state("up", f"analyzer connected from {self.session.peer}; it accepts "
                                                "labbridge's messages again")
        elif isinstance(event, e1381.IncompleteMessage):
            if over_limit(event.reason):
                self.health.counters.over_limit += 1
                self.health.notice("over_limit", f"a message from {self.session.peer} went over a limit "
                                                 f"({event.reason}; [instruments.link] max_*): refused, kept as "
                                                 "an incomplete transmission")
                log.warning("message_over_limit", instrument=self.health.id, peer=self.session.peer,
                            reason=event.reason)
            if self.health.state == "up" and event.reason != "connection lost":
                self._incomplete_noted = True
                self.health.set_state("up", f"analyzer connected from {self.session.peer}; its last transfer "
                                            f"was incomplete ({event.reason}): kept as an incomplete "
                                            "transmission, not a result; the analyzer should send it again")
            await self.sink.incomplete(event.raw, event.reason)

    def deadline(self) -> float | None:
        if self.link.in_transfer or not self._link_idle():  # asked after every read: the common case first
            return None
        if self._reply is not None:
            return 0.0  # an answer is waiting for the line: now
        return self._next_poll if self.orders is not None else None

    async def work(self, now: float, *, woken: bool) -> None:
        """Hand our next message to the link when it is neutral with nothing of ours queued."""
        if woken:
            self._next_poll = 0.0
        if not self._link_idle():
            return
        job = self._reply
        self._reply = None
        if job is None and self.orders is not None and now >= self._next_poll:
            self._next_poll = now + ORDER_POLL_S
            job = await self._push_job()
        if job is None or not self._link_idle():
            if job is not None and job.kind == "reply":
                self._reply = job  # the analyzer took the line while we looked: answer after its transfer
            return
        assert isinstance(self.link, e1381.E1381Link)  # _link_idle() said so
        handle = self.link.send_message(job.records, self.session.now())
        self._on_link[handle] = job

    async def finish(self) -> None:
        if self._on_link or self._reply is not None:
            log.info("host_messages_not_delivered", instrument=self.health.id,
                     messages=len(self._on_link) + (self._reply is not None),
                     note="orders stay pending and are pushed again on the next connection")

    def _send_aborted(self, event: e1381.SendAborted) -> None:
        self.health.counters.sends_aborted += 1
        log.info("send_aborted", instrument=self.health.id, reason=event.reason)
        if event.reason != "connection lost" and self.health.state in ("up", "degraded"):
            self._send_trouble = True
            self.health.set_state("degraded", (
                f"the analyzer did not take labbridge's message ({event.reason}); query answers and "
                "orders stay pending and are sent again: check the analyzer's host communication "
                "settings if this persists"))

    def _link_idle(self) -> bool:
        link = self.link
        return isinstance(link, e1381.E1381Link) and link.state is e1381.State.NEUTRAL and link.pending_messages == 0

    # ---- host side: query answers and order push ------------------------------------------------

    async def _push_job(self) -> _Job | None:
        assert self.orders is not None
        try:
            orders = await self.orders.orders_to_push(instrument=self.health.id, limit=PUSH_BATCH)
        except Exception as exc:  # the store is unreachable: push later, never crash the link
            log.error("orders_unavailable", instrument=self.health.id, error=type(exc).__name__)
            return None
        if not orders:
            return None
        lines = push_lines(orders)
        try:
            records = self.driver.encode_orders(lines, self.context, at=datetime.now(self.context.timezone))
        except Exception as exc:
            log.error("order_encode_failed", instrument=self.health.id, driver=self.driver.name,
                      error=type(exc).__name__)
            return None
        log.info("orders_push", instrument=self.health.id, orders=len(orders), samples=len(lines))
        return _Job("orders", records, tuple(o.id for o in orders))

    async def _answer(self, queries: Sequence[HostQuery]) -> None:
        """Prepare the answer to the host queries of a stored message (one answer outstanding: R-B10)."""
        counters = self.health.counters
        counters.host_queries += len(queries)
        if any(q.cancels for q in queries):
            if self._reply is not None:
                log.info("query_answer_withdrawn", instrument=self.health.id)
            self._reply = None
            queries = [q for q in queries if not q.cancels]
        if not queries:
            return
        if self.orders is None:
            if not self._warned_no_orders:
                self._warned_no_orders = True
                log.warning("host_query_not_answered", instrument=self.health.id, driver=self.driver.name,
                            reason="no order source, raw framing, or the driver cannot encode answers")
            return
        lines: list[OrderLine] = []
        try:
            for query in queries:
                found: list[Order]
                if query.all_samples:
                    found = await self.orders.orders_for_instrument(instrument=self.health.id, site=self.site,
                                                                    states=LIVE_STATES)
                else:
                    found = await self.orders.orders_for_samples(instrument=self.health.id, site=self.site,
                                                                 sample_ids=query.sample_ids)
                lines.extend(answer_query(query, found))
            records = self.driver.encode_query_reply(queries[0], lines, self.context,
                                                     at=datetime.now(self.context.timezone))
        except Exception as exc:  # no answer rather than a wrong one; the analyzer's own timeout applies
            log.error("host_query_failed", instrument=self.health.id, error=type(exc).__name__)
            return
        ids = tuple(i for line in lines if line.status == "ordered" for i in line.order_ids)
        log.info("host_query", instrument=self.health.id, samples=sum(len(q.sample_ids) for q in queries),
                 ordered=sum(1 for line in lines if line.status == "ordered"),
                 without_order=sum(1 for line in lines if line.status != "ordered"))
        self._reply = _Job("reply", records, ids)

    async def _sent(self, handle: int) -> None:
        job = self._on_link.pop(handle, None)
        if job is None:
            return
        if job.kind == "reply":
            self.health.counters.query_answers_sent += 1
        if not job.order_ids or self.orders is None:
            return
        try:
            await self.orders.mark_sent(job.order_ids, instrument=self.health.id, now=time.time())
        except Exception as exc:  # delivered but not recorded: it stays pending and is sent again
            log.error("order_state_not_saved", instrument=self.health.id, error=type(exc).__name__)
            return
        self.health.counters.orders_sent += len(job.order_ids)
        log.info("orders_sent", instrument=self.health.id, orders=len(job.order_ids), kind=job.kind)
