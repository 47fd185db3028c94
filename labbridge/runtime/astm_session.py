"""One ASTM E1381 connection: the thin asyncio shell around :class:`labbridge.protocols.e1381.E1381Link`.

A single task per connection reads bytes, feeds them to the link with the loop's clock, writes what the
link wants sent, and waits for the link's next deadline (``asyncio.timeout_at``) at the same time as it
waits for bytes; no callbacks, so the link is never entered twice at once.

A complete message is decoded by the driver (pure), committed to the store, and only then is its final
frame acknowledged; if the commit fails, the frame is NAKed and the analyzer retransmits it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from labbridge.driver import AstmDriver, DecodeContext
from labbridge.logs import get_logger
from labbridge.protocols import e1381
from labbridge.runtime.health import InstrumentHealth
from labbridge.runtime.intake import InstrumentDecoder
from labbridge.runtime.store import Store

log = get_logger("labbridge.astm")

READ_SIZE = 64 * 1024


class AstmSession:
    def __init__(self, *, link: e1381.E1381Link, driver: AstmDriver, context: DecodeContext, store: Store,
                 health: InstrumentHealth, destinations: list[str], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, on_stored: Callable[[], None] | None = None,
                 decoder: InstrumentDecoder | None = None, backlog_after_s: float | None = None) -> None:
        self.link = link
        self.driver = driver
        self.context = context
        # The instrument's policies (unmapped test codes, expected sender); plain decoding without one.
        self.decoder = decoder or InstrumentDecoder(driver, context)
        self.backlog_after_s = backlog_after_s
        self.store = store
        self.health = health
        self.destinations = destinations
        self.reader = reader
        self.writer = writer
        self.on_stored = on_stored

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        link = self.link
        try:
            while True:
                try:
                    async with asyncio.timeout_at(link.get_timer()):
                        data = await self.reader.read(READ_SIZE)
                except TimeoutError:
                    link.handle_timer(loop.time())
                    await self._pump()
                    continue
                if not data:
                    break
                self.health.counters.bytes_received += len(data)
                self.health.last_byte_at = time.time()
                link.receive_data(data, loop.time())
                await self._pump()
        except (ConnectionError, OSError) as exc:
            log.info("connection_error", instrument=self.health.id, error=type(exc).__name__)
        finally:
            link.connection_lost()
            await self._handle_events(flush=False)

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
            event = link.next_event()
            if event is None:
                return
            if isinstance(event, e1381.MessageReceived):
                ok = await self._store_message(event)
                if ok:
                    link.accept_message(loop.time())
                else:
                    link.reject_message(loop.time())
            elif isinstance(event, e1381.FrameRejected):
                if event.by_peer:
                    counters.naks_received += 1
                else:
                    counters.frames_rejected += 1
                    if event.reason.startswith("checksum"):
                        counters.checksum_errors += 1
                    self.health.frame_outcome(False)
            elif isinstance(event, e1381.FrameAccepted):
                self.health.frame_outcome(True)
            elif isinstance(event, e1381.FrameRetransmitted):
                counters.retransmissions += 1
            elif isinstance(event, e1381.JunkDiscarded):
                counters.junk_bytes += event.count
            elif isinstance(event, e1381.IncompleteMessage):
                counters.incomplete_transmissions += 1
                log.warning("incomplete_transmission", instrument=self.health.id, reason=event.reason,
                            records=len(event.records))
                try:
                    await self.store.record_incomplete(instrument=self.health.id, raw=event.raw,
                                                       reason=event.reason, received_at=time.time())
                except Exception as exc:  # it never became a result; keeping it is best effort
                    log.error("incomplete_not_kept", instrument=self.health.id, error=str(exc))
            elif isinstance(event, e1381.TransferEnded) and event.reason == "timeout":
                counters.timeouts += 1

    async def _store_message(self, event: e1381.MessageReceived) -> bool:
        counters = self.health.counters
        intake = self.decoder.decode_records(event.records)
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
                backlog_after_s=self.backlog_after_s)
        except Exception as exc:
            counters.store_failures += 1
            full = "full" in str(exc)
            why = ("the store is full (disk or configured store.max_size_mb): free space or raise the cap"
                   if full else "check the disk")
            self.health.set_state("degraded", f"results cannot be stored ({exc}); the analyzer is not "
                                              f"acknowledged and will retransmit: {why}")
            log.error("store_failed", instrument=self.health.id, error=str(exc))
            return False
        if self.health.state == "degraded" and counters.store_failures:
            self.health.set_state("up", "store writable again")
        counters.messages_received += 1
        counters.results_received += stored.new_results
        counters.duplicate_results += stored.duplicate_results
        self.health.last_message_at = time.time()
        log.info("message_stored", instrument=self.health.id, message_id=stored.message_id,
                 results=stored.new_results, duplicates=stored.duplicate_results)
        if self.on_stored is not None and (stored.outbox_ids or intake.held or intake.error):
            self.on_stored()
        return True
