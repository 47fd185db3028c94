"""One ASTM connection: the thin asyncio shell around :class:`labbridge.protocols.e1381.E1381Link` (or, for
``framing = "raw"``, :class:`labbridge.protocols.raw.RawLink`, which has the same interface and events).

A single task per connection reads bytes, feeds them to the link with the loop's clock, writes what the
link wants sent, and waits for the link's next deadline at the same time as it waits for bytes
(:class:`labbridge.links.input_wait.LinkInput`). On TCP, bytes that arrive while that task waits are fed
to the E1381 link at once from the transport's callback (the fast path, :meth:`AstmSession._take`): the
link's answer (an intermediate frame's ACK) is written there, events that only count are counted, and
the task is woken for anything else (a complete message, the end of a transfer), which it handles in
order. The link is still entered by one party at a time: the callback only runs while the task waits in
its read, and never once it has been woken.

A complete message is decoded by the driver (pure), committed to the store, and only then is its final
frame acknowledged; if the commit fails, the frame is NAKed and the analyzer retransmits it.

Host side (labbridge sends): a host query in a stored message is answered from the order source as a
separate message, queued on the link right after the ACK; the link sends it once the analyzer's EOT
has returned the line to neutral (and yields to the analyzer on contention, R-A7). Orders addressed to
this instrument are pushed the same way whenever the link is neutral with nothing else to send: the
session looks when woken (an order was added), and every ``ORDER_POLL_S`` (orders written to the
store by another process). At most one message of ours is on the link at a time, the query answer
first; one query answer is outstanding at a time (R-B10), a newer query replaces an unsent answer and
Q-13 ``A`` withdraws it. Orders are recorded as sent only when the link reports ``MessageSent`` (the
analyzer ACKed the last frame); a transfer that fails is retried by the link, and orders lost with a
connection stay pending and are pushed again on the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from labbridge.driver import AstmDriver, DecodeContext
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.input_wait import LinkInput, Wakeup
from labbridge.links.intake import InstrumentDecoder
from labbridge.logs import get_logger
from labbridge.model import HostQuery, OrderLine
from labbridge.orders import LIVE_STATES, Order, OrderSource, answer_query, push_lines
from labbridge.protocols import e1381, raw
from labbridge.store.db import Store

log = get_logger("labbridge.astm")

READ_SIZE = 64 * 1024
ORDER_POLL_S = 5.0  # look for orders added to the store by another process this often
PUSH_BATCH = 50  # orders (at most) in one pushed message


@dataclass(slots=True)
class _Job:
    """A message of ours handed to the link."""

    kind: str  # "reply" (answer to a host query) or "orders" (push)
    records: list[bytes]
    order_ids: tuple[int, ...]


class ByteWriter(Protocol):
    """What a session writes to: an asyncio.StreamWriter, or the serial transport's writer."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...


class AstmSession:
    def __init__(self, *, link: e1381.E1381Link | raw.RawLink, driver: AstmDriver, context: DecodeContext, store: Store,
                 health: InstrumentHealth, destinations: list[str], reader: asyncio.StreamReader,
                 writer: ByteWriter, on_stored: Callable[[], None] | None = None,
                 orders: OrderSource | None = None, site: str = "", wakeup: Wakeup | None = None,
                 decoder: InstrumentDecoder | None = None, backlog_after_s: float | None = None,
                 attribute: Callable[[str], InstrumentHealth] | None = None) -> None:
        self.link = link
        self.driver = driver
        self.context = context
        # The instrument's policies (unmapped test codes, expected sender); plain decoding without one.
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
        # Answers and pushes need a link that can send: E1381 (raw framing has no way back).
        self.orders = orders if driver.supports_orders and isinstance(link, e1381.E1381Link) else None
        self.site = site
        self.wakeup = wakeup
        self._reply: _Job | None = None  # the answer to the last host query, not yet on the link
        self._on_link: dict[int, _Job] = {}  # link handle -> our message being sent
        self._next_poll = 0.0  # when to look for orders to push (0: at once)
        self._warned_no_orders = False
        # The health reason says so while our messages fail, or after a transfer that ended incomplete.
        self._send_trouble = False
        self._incomplete_noted = False
        self._input: LinkInput | None = None
        self._held: object | None = None  # an event the fast path took from the link for the task to handle
        self._failed: Exception | None = None  # an error in the fast path, raised in the task

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        link = self.link
        wakeup = self.wakeup if self.orders is not None else None
        fast = isinstance(link, e1381.E1381Link) and isinstance(self.writer, asyncio.StreamWriter)  # TCP
        link_input = self._input = LinkInput(self.reader, READ_SIZE, wakeup, consume=self._take if fast else None)
        try:
            await self._offer_work()
            while True:
                data = await link_input.read(self._deadline())
                if self._failed is not None:
                    raise self._failed
                if wakeup is not None and wakeup.consume():
                    self._next_poll = 0.0
                if data is not None:
                    if not data:
                        break
                    self._feed(data)
                timer = link.get_timer()
                if timer is not None and loop.time() >= timer:
                    link.handle_timer(loop.time())
                await self._pump()
                await self._offer_work()
        except (ConnectionError, OSError) as exc:
            log.info("connection_error", instrument=self.health.id, error=type(exc).__name__)
        finally:
            link_input.close()
            link.connection_lost()
            await self._handle_events(flush=False)
            if self._on_link or self._reply is not None:
                log.info("host_messages_not_delivered", instrument=self.health.id,
                         messages=len(self._on_link) + (self._reply is not None),
                         note="orders stay pending and are pushed again on the next connection")

    def _take(self, data: bytes) -> None:
        """The fast path (see the module's docstring): bytes that arrived while the task waits in its read."""
        link = self.link
        link_input = self._input
        assert link_input is not None
        try:
            self._feed(data)
            out = link.data_to_send()
            if out:
                self.writer.write(out)  # an ACK or NAK, a byte: no drain needed (the peer waits for it)
            while (event := link.next_event()) is not None:
                if not self._count(event):
                    self._held = event  # handled first when the task runs, then the link's next events
                    link_input.interrupt()
                    return
            link_input.move_deadline(self._deadline())
        except Exception as exc:  # raised in the task, as the same error on the task's path would be
            self._failed = exc
            link_input.interrupt()

    def _feed(self, data: bytes) -> None:
        self.health.counters.bytes_received += len(data)
        self.health.last_byte_at = time.time()
        self.link.receive_data(data, asyncio.get_running_loop().time())

    def _link_idle(self) -> bool:
        link = self.link
        return isinstance(link, e1381.E1381Link) and link.state is e1381.State.NEUTRAL and link.pending_messages == 0

    def _deadline(self) -> float | None:
        timer = self.link.get_timer()
        if self.orders is not None and self._link_idle() and (timer is None or self._next_poll < timer):
            return self._next_poll
        return timer

    # ---- host side: query answers and order push ------------------------------------------------

    async def _offer_work(self) -> None:
        """Hand our next message to the link when it is neutral with nothing of ours queued."""
        if not self._link_idle():
            return
        loop = asyncio.get_running_loop()
        job = self._reply
        self._reply = None
        if job is None and self.orders is not None and loop.time() >= self._next_poll:
            self._next_poll = loop.time() + ORDER_POLL_S
            job = await self._push_job()
        if job is None or not self._link_idle():
            if job is not None and job.kind == "reply":
                self._reply = job  # the analyzer took the line while we looked: answer after its transfer
            return
        assert isinstance(self.link, e1381.E1381Link)  # _link_idle() said so
        handle = self.link.send_message(job.records, loop.time())
        self._on_link[handle] = job
        await self._flush()

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

    async def _flush(self) -> None:
        out = self.link.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def _pump(self) -> None:
        await self._handle_events(flush=True)

    async def _handle_events(self, *, flush: bool) -> None:
        link = self.link
        loop = asyncio.get_running_loop()
        counters = self.health.counters
        while True:
            if flush:
                await self._flush()
            event = self._held
            if event is None:
                event = link.next_event()
                if event is None:
                    return
            else:
                self._held = None
            if self._count(event):
                continue
            if isinstance(event, e1381.MessageReceived):
                queries = await self._store_message(event)
                if queries is not None:
                    link.accept_message(loop.time())
                    if flush and queries:
                        await self._flush()  # the ACK first, then the time to look the orders up
                        await self._answer(queries)
                else:
                    link.reject_message(loop.time())
            elif isinstance(event, e1381.MessageSent):
                await self._sent(event.handle)
                if self._send_trouble:
                    self._send_trouble = False
                    if self.health.state == "degraded":
                        self.health.set_state("up", f"analyzer connected from {self.health.peer}; it accepts "
                                                    "labbridge's messages again")
            elif isinstance(event, e1381.SendAborted):
                counters.sends_aborted += 1
                log.info("send_aborted", instrument=self.health.id, reason=event.reason)
                if event.reason != "connection lost" and self.health.state in ("up", "degraded"):
                    self._send_trouble = True
                    self.health.set_state("degraded", (
                        f"the analyzer did not take labbridge's message ({event.reason}); query answers and "
                        "orders stay pending and are sent again: check the analyzer's host communication "
                        "settings if this persists"))
            elif isinstance(event, e1381.IncompleteMessage):
                log.warning("incomplete_transmission", instrument=self.health.id, reason=event.reason,
                            records=len(event.records))
                if self.health.state == "up" and event.reason != "connection lost":
                    self._incomplete_noted = True
                    self.health.set_state("up", f"analyzer connected from {self.health.peer}; its last transfer "
                                                f"was incomplete ({event.reason}): kept as an incomplete "
                                                "transmission, not a result; the analyzer should send it again")
                try:
                    await self.store.record_incomplete(instrument=self.health.id, raw=event.raw,
                                                       reason=event.reason, received_at=time.time())
                except Exception as exc:  # it never became a result; keeping it is best effort
                    log.error("incomplete_not_kept", instrument=self.health.id, error=str(exc))
                # Counted once kept (or once keeping it failed), so the counter never runs ahead of the store.
                counters.incomplete_transmissions += 1
            elif isinstance(event, e1381.TransferEnded) and event.reason == "timeout":
                counters.timeouts += 1

    def _count(self, event: object) -> bool:
        """Handle an event that only counts (True); False for one the task must handle."""
        counters = self.health.counters
        if isinstance(event, e1381.FrameAccepted):
            self.health.frame_outcome(True)
        elif isinstance(event, e1381.FrameRejected):
            if event.by_peer:
                counters.naks_received += 1
            else:
                counters.frames_rejected += 1
                if event.reason.startswith("checksum"):
                    counters.checksum_errors += 1
                self.health.frame_outcome(False)
        elif isinstance(event, e1381.FrameRetransmitted):
            counters.retransmissions += 1
        elif isinstance(event, e1381.JunkDiscarded):
            counters.junk_bytes += event.count
        elif isinstance(event, e1381.Contention):
            counters.contentions += 1
        elif isinstance(event, e1381.KeepAlive):
            counters.keepalives += 1
        elif not isinstance(event, (e1381.TransferStarted, e1381.PeerBusy)):
            return False
        return True

    async def _store_message(self, event: e1381.MessageReceived) -> list[HostQuery] | None:
        """Decode and commit; the message's host queries once it is stored, None if it is not."""
        counters = self.health.counters
        intake = self.decoder.decode_records(event.records)
        if intake.instrument is not None and self.attribute is not None:
            self.health = self.attribute(intake.instrument)
            counters = self.health.counters
        if intake.error is not None:  # kept in the store next to the raw message, and dead-lettered
            counters.decode_errors += 1
            # The log gets only text labbridge controls: an arbitrary exception may quote patient data.
            log.warning("decode_failed", instrument=self.health.id, driver=self.decoder.driver.name,
                        reason=intake.log_reason)
        for held in intake.held:
            log.warning("message_held", instrument=self.health.id, kind=held.kind)
        try:
            stored = await self.store.commit_message(
                instrument=self.health.id, protocol="astm", raw=event.raw, received_at=time.time(),
                results=intake.results, destinations=self.destinations, error=intake.error, held=intake.held,
                backlog_after_s=self.backlog_after_s, held_results=intake.held_results,
                hold_reason=intake.hold_reason)
        except Exception as exc:
            counters.store_failures += 1
            full = "full" in str(exc)
            why = ("the store is full (disk or configured store.max_size_mb): free space or raise the cap"
                   if full else "check the disk")
            self.health.set_state("degraded", f"results cannot be stored ({exc}); the analyzer is not "
                                              f"acknowledged and will retransmit: {why}")
            log.error("store_failed", instrument=self.health.id, error=str(exc))
            return None
        if self.health.state == "degraded" and counters.store_failures:
            self.health.set_state("up", "store writable again")
        counters.messages_received += 1
        if self._incomplete_noted and self.health.state == "up":
            self._incomplete_noted = False
            self.health.set_state("up", f"analyzer connected from {self.health.peer}")
        counters.results_received += stored.new_results
        counters.duplicate_results += stored.duplicate_results
        self.health.last_message_at = time.time()
        log.info("message_stored", instrument=self.health.id, message_id=stored.message_id,
                 results=stored.new_results, duplicates=stored.duplicate_results)
        if self.on_stored is not None and (stored.outbox_ids or intake.held or intake.error):
            self.on_stored()
        return intake.queries
