"""The relay: drains one LIS destination's outbox, at least once, idempotent by content.

Each outbox item carries a stable control ID (MSH-10) derived from the content of its results, so a
resend after a crash or a lost ACK is the same message to the LIS. Failures are of two kinds:

* the destination is unreachable (no connection, no ACK in time): the whole destination backs off,
  with capped exponential backoff and jitter, and the item keeps its place;
* the LIS refuses this item (AR, or an unexpected code): this item backs off alone, so a poison message
  never blocks the ones behind it; codes listed in ``dead_letter_codes`` (AE/AR by default: "fix it, don't
  resend") go straight to the dead letters with the LIS's reason, as does an item older than
  ``give_up_after_s``.

Destinations differ only in how one item is handed over (:class:`Outcome`): MLLP (HL7 ACK codes), a file
drop (written atomically, always accepted once on disk) or an HTTP POST (2xx accepted, 4xx refused).

Backlog items (results measured long before they arrived: an analyzer resending what it kept during an
outage) are paced: live items always go first, and at most ``backlog_per_minute`` backlog items are sent.

Handed off, not read back: a commit tells the relay which items it queued to go now, with their results
(:meth:`Relay.offer`), and while the relay is caught up (its last read of the outbox found nothing due,
and nothing has gone wrong since) it sends those straight away instead of reading them back from the
store. Any doubt sends it back to reading: an item the LIS did not accept, the LIS unreachable, more
handed-off items than it keeps (``MAX_HANDED_OFF``), an operator's change (:meth:`Relay.poke`), a
scheduled retry or paced backlog falling due, and every ``IDLE_POLL_S`` in any case. An item is never
sent both ways: the read that makes the relay caught up tells the highest outbox id it saw, and only
items queued after it (higher ids) are taken from the hand-off; items read from the store are never
taken from it. Nothing is lost if the hand-off is dropped: the items are in the store.

An MLLP destination may take several connections at once (``connections``, default 1): each read of due
items is shared out over them by sample (a sample's items always go over the same connection, in the
order read, and every item of a read is handed over before the next read), so the LIS still gets one
sample's results in order, while a slow ACK holds up only its own connection's items. Unreachable is
then a destination's state: the first connection that cannot reach the LIS stops the others after
their current item, and the destination backs off once.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import time
import zlib
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from labbridge.backoff import backoff_delay
from labbridge.config import Destination, FileDestination, HttpDestination, MllpDestination
from labbridge.errors import TransientLinkError
from labbridge.logs import get_logger
from labbridge.outbox import DEAD_LIS_REJECTED, DEAD_UNDELIVERED, OutboxItem
from labbridge.protocols.hl7 import Hl7Options, Party
from labbridge.redact import redact
from labbridge.relay.lis.file import FileDropSender
from labbridge.relay.lis.mllp import MllpSender
from labbridge.relay.lis.render import render_astm, render_hl7, render_json
from labbridge.store.db import Store

if TYPE_CHECKING:
    from labbridge.relay.lis.http import (
        HttpSender,  # imported when an HTTP destination is configured: aiohttp is ~9 MiB
    )

log = get_logger("labbridge.relay")

IDLE_POLL_S = 5.0  # the outbox is read at least this often, even while handed-off items keep coming
BATCH_ITEMS = 64  # due items fetched in one read
MAX_UNCOMMITTED = 256  # items the LIS accepted whose "delivered" mark is not committed yet
MAX_HANDED_OFF = 1024  # items handed off and not yet sent: beyond, the relay reads them back from the store


# Stored -> accepted by the LIS, seconds: the buckets of the delivery latency histogram (/metrics).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class DestinationHealth:
    id: str
    address: str
    state: str = "unknown"  # up | down | unknown
    reason: str = "no delivery attempted yet"
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    backlog_delivered: int = 0
    last_delivery_at: float | None = None
    last_error: str | None = None
    # Delivery latency (stored -> the LIS's acceptance): per LATENCY_BUCKETS bound (not cumulative), +Inf last.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def delivered_after(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def set_state(self, state: str, reason: str) -> None:
        if state != self.state:
            (log.warning if state == "down" else log.info)("lis_state", destination=self.id, state=state,
                                                             reason=reason)
        self.state = state
        self.reason = reason

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "state": self.state, "reason": self.reason,
                "delivered": self.delivered, "retried": self.retried, "dead_lettered": self.dead_lettered,
                "backlog_delivered": self.backlog_delivered,
                "last_delivery_at": self.last_delivery_at, "last_error": self.last_error,
                "delivery_latency": {"buckets": list(LATENCY_BUCKETS), "counts": list(self.latency_counts),
                                     "sum_s": round(self.latency_sum, 3)}}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The destination's answer to one item."""

    accepted: bool
    code: str = ""  # e.g. AA, AE, AR; "HTTP 422"
    text: str = ""
    dead: bool = False  # refused for good: "fix it, don't resend"


def _address(dest: Destination) -> str:
    if isinstance(dest, MllpDestination):
        return f"{dest.host}:{dest.port}"
    if isinstance(dest, FileDestination):
        return f"file:{dest.directory} ({dest.format})"
    return redact(dest.url)  # shown in /api/outbox and logs: never the password


class Relay:
    def __init__(self, dest: Destination, store: Store, wakeup: asyncio.Event) -> None:
        self.dest = dest
        self.store = store
        self.wakeup = wakeup
        self.health = DestinationHealth(dest.id, _address(dest))
        self.senders: list[MllpSender] = []  # one per MLLP connection (lane)
        self.file: FileDropSender | None = None
        self.http: HttpSender | None = None
        if isinstance(dest, MllpDestination):
            ssl_context = None
            if dest.tls is not None:
                from labbridge.transports.tls import client_context

                ssl_context = client_context(dest.tls)
            self.senders = [MllpSender(dest.host, dest.port, connect_timeout=dest.connect_timeout_s,
                                       ack_timeout=dest.ack_timeout_s, ssl_context=ssl_context,
                                       server_hostname=dest.tls.server_hostname if dest.tls is not None else None)
                            for _ in range(dest.connections)]
        elif isinstance(dest, FileDestination):
            self.file = FileDropSender(dest.directory)
        else:
            from labbridge.relay.lis.http import HttpSender

            self.http = HttpSender(dest.url, timeout=dest.timeout_s, headers=dest.headers,
                                   verify_tls=dest.verify_tls)
        # The destination's HL7 choices (coding system, PID fields not sent), made once (issue 20).
        self.hl7_options = Hl7Options(coding_system=dest.coding_system, missing=dest.missing_patient_fields,
                                      pid=dest.pid_without_patient)
        self._outage_attempts = 0
        self._down = False  # stop this batch: a connection found the LIS unreachable (or a lane failed)
        self._backlog_next_at = 0.0  # wall clock: the next backlog item may go at this time
        # Pipelining: an item the LIS accepted is marked delivered by a write that the relay does not wait
        # for before sending the next one. Until that commit lands the item is excluded from reads, so it is
        # never sent twice by a running relay; after a crash it may be sent again, under the same control
        # ID (MSH-10), which the LIS treats as the same message.
        # The marks are written in batches: one write for every item accepted while the last one committed.
        self._marking: set[int] = set()
        self._to_mark: list[tuple[OutboxItem, float]] = []  # accepted, their mark not sent to the store yet
        self._marker: asyncio.Task[None] | None = None
        self._marked = asyncio.Event()  # a batch of marks committed (or failed): room for more
        self._mark_error: Exception | None = None  # a mark's commit failed: the run fails (and is restarted)
        # The hand-off (see the module's docstring): items committed to go now, sent without a read while
        # caught up; above_id: the highest outbox id of the read that made it so; read_by: when to read anyway.
        self._handed: collections.deque[OutboxItem] = collections.deque()
        self._handed_drops = 0  # times the hand-off overflowed (a read in flight then cannot make it caught up)
        self._caught_up = False
        self._above_id = 0
        self._read_by = 0.0
        self._json = isinstance(dest, HttpDestination) or (isinstance(dest, FileDestination) and dest.format == "json")
        # While streaming (see _stream): each lane's handed-off items, and what wakes that lane alone.
        self._lane_queues: list[collections.deque[OutboxItem]] = []
        self._lane_wakeups: list[asyncio.Event] = []

    def offer(self, items: Sequence[OutboxItem]) -> None:
        """Items a commit just queued for this destination to go now (pending, live, past the gate), with
        their results; wakes the relay in any case."""
        if items:
            if self._json:  # the only rendering that shows each result's message ID (read back, it is set)
                items = [replace(item, results=tuple([replace(r, message_id=item.message_id) for r in item.results]))
                         for item in items]
            lanes = self._lane_queues
            if len(self._handed) + sum(map(len, lanes)) + len(items) > MAX_HANDED_OFF:
                self._handed.clear()  # in the store: read back from there
                for queue in lanes:
                    queue.clear()
                self._handed_drops += 1
                self._caught_up = False
            else:
                if self._caught_up and items[0].id <= self._above_id:  # cannot tell: read (ids only grow)
                    self._caught_up = False
                if lanes and self._caught_up:  # streaming: straight to its lane, and only that lane woken
                    for item in items:
                        lane = self._lane_of(item, len(lanes))
                        lanes[lane].append(item)
                        self._lane_wakeups[lane].set()
                    return
                self._handed.extend(items)
        self._wake()

    def _wake(self) -> None:
        """The run loop and every lane look again (a change of mode, new work, a failed mark)."""
        self.wakeup.set()
        for event in self._lane_wakeups:
            event.set()

    @property
    def handed(self) -> tuple[OutboxItem, ...]:
        """The handed-off items not yet taken by a connection, as they will be rendered."""
        return tuple(self._handed)

    def _leave_caught_up(self) -> None:
        """Something went wrong or changed: read the store before taking handed-off items again (every lane
        stops after its item in hand)."""
        self._caught_up = False
        self._wake()

    def poke(self) -> None:
        """The outbox changed otherwise (items released or retried, a relay started): read it now."""
        self._leave_caught_up()

    def render(self, item: OutboxItem) -> bytes:
        dest = self.dest
        if isinstance(dest, FileDestination) and dest.format == "json":
            return render_json(item.results, control_id=item.control_id, created_at=item.created_at,
                               backlog=item.backlog, test=item.test)
        if isinstance(dest, FileDestination) and dest.format == "astm":
            return render_astm(item.results, control_id=item.control_id, created_at=item.created_at,
                               sender=dest.sending_application, test=item.test)
        if isinstance(dest, HttpDestination):
            return render_json(item.results, control_id=item.control_id, created_at=item.created_at,
                               backlog=item.backlog, test=item.test)
        return render_hl7(item.results, control_id=item.control_id, created_at=item.created_at,
                          sender=Party(dest.sending_application, dest.sending_facility),
                          receiver=Party(dest.receiving_application, dest.receiving_facility),
                          message_type=dest.message_type if isinstance(dest, MllpDestination) else "ORU^R01",
                          test=item.test, options=self.hl7_options)

    async def hand_over(self, item: OutboxItem, lane: int) -> Outcome:
        """Give one item to the destination (over connection ``lane``); raises TransientLinkError if it
        cannot be reached."""
        payload = self.render(item)
        if self.senders:
            assert isinstance(self.dest, MllpDestination)
            ack = await self.senders[lane].send(payload, item.control_id)
            return Outcome(ack.accepted, ack.code, ack.text, dead=ack.code in self.dest.dead_letter_codes)
        if self.file is not None:
            assert isinstance(self.dest, FileDestination)
            await self.file.deliver(f"{item.control_id}.{self.dest.format}", payload)
            return Outcome(True, "written")
        assert self.http is not None
        answer = await self.http.post(payload, item.control_id)
        if 200 <= answer.status < 300:
            return Outcome(True, f"HTTP {answer.status}")
        return Outcome(False, f"HTTP {answer.status}", answer.reason, dead=True)

    async def close(self) -> None:
        for sender in self.senders:
            await sender.close()
        if self.http is not None:
            await self.http.close()

    async def run(self) -> None:
        self._caught_up = False  # a restart (after a failed mark) reads first
        try:
            while True:
                if self._mark_error is not None:  # as before pipelining: the supervisor backs off and restarts us
                    error, self._mark_error = self._mark_error, None
                    raise error
                self.wakeup.clear()
                now = time.time()
                if self._caught_up and now < self._read_by:
                    await self._stream()
                    await self._after_sends()
                    continue
                batch = await self._read(now)
                if batch:
                    await self._deliver_batch(batch)
        finally:
            if self._to_mark or self._marker is not None:
                await self._flush_marks()
            await self.close()

    async def _read(self, now: float) -> list[OutboxItem]:
        """Read the items due now from the store (live first; backlog paced); with none, the relay is caught
        up: it sends handed-off items until ``_read_by``."""
        backlog_ok = now >= self._backlog_next_at
        drops = self._handed_drops
        # A copy, taken before the read: the read runs in the store's writer while marks land. An id still
        # in the copy is skipped; an id gone from it was committed before the read began, so the read sees
        # it delivered. (Passing the live set let a landing mark un-exclude an item the read's snapshot
        # still showed pending: it was sent twice.)
        items, next_at, above_id = await self.store.due_items_above(
            self.dest.id, now, include_backlog=backlog_ok, limit=BATCH_ITEMS, exclude=frozenset(self._marking))
        if not items:
            wake = [IDLE_POLL_S]
            if next_at is not None:
                wake.append(next_at - now)
            if not backlog_ok:
                wake.append(self._backlog_next_at - now)
            self._read_by = now + max(0.0, min(wake))
            # Every item handed off up to above_id was in this read's view, and none was due: drop them. Those
            # above it were queued after the read: they are sent from the hand-off. If the hand-off overflowed
            # meanwhile, what it dropped may be among them: read again instead.
            self._handed = collections.deque(item for item in self._handed if item.id > above_id)
            self._above_id = above_id
            self._caught_up = drops == self._handed_drops
            return []
        self._caught_up = False
        batch: list[OutboxItem] = []
        for item in items:
            if item.backlog:
                now = time.time()
                if now < self._backlog_next_at or self.wakeup.is_set():
                    break  # paced, or new live items may have come: read again, live items first
                self._backlog_next_at = now + 60.0 / self.dest.backlog_per_minute
            batch.append(item)
        return batch

    def _streaming(self) -> bool:
        return (self._caught_up and not self._down and self._mark_error is None
                and time.time() < self._read_by)

    async def _stream(self) -> None:
        """While caught up: each connection (lane) sends the handed-off items of its samples as they come, one
        after the other, with no wait for the other lanes (a batch would hold every lane until its longest
        was done); an item handed off now goes straight to its lane's queue and wakes that lane alone.
        Returns once every lane has finished its item in hand and stopped: caught up no more (a refusal, the
        LIS unreachable, an overflow, an operator's change) or time to read the store. Items not sent go
        back to the hand-off, in their order (they are in the store: the next read finds them)."""
        count = max(1, len(self.senders))
        queues: list[collections.deque[OutboxItem]] = [collections.deque() for _ in range(count)]
        wakeups = [asyncio.Event() for _ in range(count)]
        while self._handed:
            item = self._handed.popleft()
            queues[self._lane_of(item, count)].append(item)
        self._lane_queues, self._lane_wakeups = queues, wakeups
        self._down = False

        async def lane(index: int) -> None:
            queue, wakeup = queues[index], wakeups[index]
            while self._streaming():
                if queue:
                    try:
                        await self._deliver(queue.popleft(), index)
                    except Exception:
                        self._down = True  # the store failed under this lane: the others stop after their item
                        self._wake()
                        raise
                    continue
                wakeup.clear()  # nothing for this lane: wait for a commit to hand it more, or a change
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._read_by - time.time())):
                        await wakeup.wait()

        try:
            await self._all_lanes([lane(index) for index in range(count)])
        finally:
            self._lane_queues, self._lane_wakeups = [], []
            self._handed.extendleft(reversed([item for queue in queues for item in queue]))

    async def _all_lanes(self, lanes: list[Coroutine[Any, Any, None]]) -> None:
        """Run the lanes to their end; none is left in flight when this returns or raises."""
        if len(lanes) == 1:
            await lanes[0]
            return
        outcomes = await asyncio.gather(*lanes, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _deliver_batch(self, batch: list[OutboxItem]) -> None:
        """Hand a batch read from the store over, lane by lane; back off if the destination was found
        unreachable."""
        self._down = False
        # Every lane is over before the run goes on (or fails: the supervisor restarts it), so no send of this
        # batch is still in flight when the next read begins.
        await self._all_lanes([self._deliver_lane(lane, queue) for lane, queue in self._lanes(batch)])
        await self._after_sends()

    async def _after_sends(self) -> None:
        if self._down:  # unreachable: the items not handed over keep their place; back off, read again
            self._leave_caught_up()
            delay = backoff_delay(self._outage_attempts, self.dest.backoff_initial_s, self.dest.backoff_max_s)
            self._outage_attempts += 1
            await asyncio.sleep(delay)

    @staticmethod
    def _lane_of(item: OutboxItem, count: int) -> int:
        """The connection a sample's items all go over (in the order stored)."""
        if count <= 1:
            return 0
        sample = item.results[0].sample_id if item.results else ""
        return zlib.crc32(sample.encode("utf-8")) % count

    def _lanes(self, items: list[OutboxItem]) -> list[tuple[int, list[OutboxItem]]]:
        """The items per connection, in the order read; a sample's items all on one connection."""
        count = len(self.senders)
        lanes: dict[int, list[OutboxItem]] = {}
        for item in items:
            lanes.setdefault(self._lane_of(item, count), []).append(item)
        return list(lanes.items())

    async def _deliver_lane(self, lane: int, items: list[OutboxItem]) -> None:
        """Hand items over in order on one connection; stop when the destination is found unreachable (by
        this connection or another) or a delivered mark failed to commit."""
        for item in items:
            if self._down or self._mark_error is not None:
                return
            try:
                await self._deliver(item, lane)
            except Exception:
                self._down = True  # the store failed under this lane: the others stop after their item too
                raise

    def _mark(self, item: OutboxItem, at: float) -> None:
        """Book an item the LIS accepted: marked delivered by the next batch of marks (one write for all the
        items accepted while the previous batch committed)."""
        self._marking.add(item.id)
        self._to_mark.append((item, at))
        if self._marker is None:
            self._marker = asyncio.create_task(self._write_marks())

    async def _write_marks(self) -> None:
        try:
            while self._to_mark:
                batch, self._to_mark = self._to_mark, []
                try:
                    await self.store.mark_delivered_many([(item.id, at) for item, at in batch])
                except Exception as exc:  # not committed: the items stay pending and go again, same control IDs
                    log.error("mark_delivered_failed", destination=self.dest.id, items=len(batch),
                              error=type(exc).__name__)
                    self._mark_error = exc
                    self._to_mark.clear()  # sent again after the restart (still pending in the store)
                    self._marking.clear()
                    self._wake()
                    return
                for item, at in batch:  # counted once the store says so: the health and the store's counts agree
                    self.health.delivered += 1
                    self.health.delivered_after(at - item.created_at)
                    if item.backlog:
                        self.health.backlog_delivered += 1
                    self._marking.discard(item.id)
                self._marked.set()
        finally:
            self._marker = None
            self._marked.set()

    async def _flush_marks(self) -> None:
        """Wait for every mark booked so far to be committed (or to fail)."""
        while self._marker is not None:
            self._marked.clear()
            await self._marked.wait()

    async def _deliver(self, item: OutboxItem, lane: int) -> None:
        """Hand one item over and book the outcome; sets ``_down`` if the destination is unreachable."""
        now = time.time()
        if not item.results:
            self._leave_caught_up()
            await self.store.dead_letter(item.id, "no results left to send (store inconsistency)", DEAD_UNDELIVERED)
            return
        try:
            outcome = await self.hand_over(item, lane)
        except UnicodeEncodeError as exc:  # e.g. a Greek name for an ASTM file (latin-1): resending cannot help
            self._leave_caught_up()
            await self._dead(item, f"not sent: a value has characters that this destination's format cannot carry "
                                   f"(character set {exc.encoding}); change its format, then retry", DEAD_UNDELIVERED)
            return
        except TransientLinkError as exc:
            self._down = True
            self._leave_caught_up()
            reason = str(exc)
            self.health.last_error = reason
            self.health.set_state("down", f"{reason}; results wait in the store and are sent when it is back")
            if now - item.created_at > self.dest.give_up_after_s:
                await self._dead(item, f"undelivered after {self.dest.give_up_after_s / 3600:g} h: {reason}",
                                 DEAD_UNDELIVERED)
                return
            # Its place in line is kept (due time unchanged): once the LIS is back it goes first, before the
            # items stored after it, so a sample's results still arrive in the order stored.
            await self.store.schedule_retry(item.id, None, reason)
            return
        self._outage_attempts = 0
        self.health.set_state("up", "the LIS acknowledges results")
        if outcome.accepted:
            self.health.last_delivery_at = time.time()
            self._mark(item, self.health.last_delivery_at)
            while len(self._marking) >= MAX_UNCOMMITTED and self._marker is not None:  # bounded: wait for the writer
                self._marked.clear()
                await self._marked.wait()
            return
        self._leave_caught_up()  # refused: read the outbox again before taking handed-off items
        reason = f"LIS answered {outcome.code}" + (f": {outcome.text}" if outcome.text else "")
        self.health.last_error = reason
        if outcome.dead or now - item.created_at > self.dest.give_up_after_s:
            await self._dead(item, reason, DEAD_LIS_REJECTED)
            return
        self.health.retried += 1
        delay = backoff_delay(item.attempts, self.dest.backoff_initial_s, self.dest.backoff_max_s)
        await self.store.schedule_retry(item.id, now + delay, reason)
        log.warning("lis_refused", destination=self.dest.id, outbox_id=item.id, code=outcome.code,
                    retry_in_s=round(delay, 1))

    async def _dead(self, item: OutboxItem, reason: str, kind: str) -> None:
        await self.store.dead_letter(item.id, reason, kind)
        self.health.dead_lettered += 1
        log.error("dead_letter", destination=self.dest.id, outbox_id=item.id, reason=reason)
