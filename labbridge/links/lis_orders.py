"""Orders from the LIS over MLLP: a listener (``[[lis_orders]]``) that takes OML^O21, OML^O33 and ORM^O01.

Per message, in order on each connection: read it (:func:`labbridge.protocols.hl7_orders.read_lis_orders`),
route each sample's order to an instrument or a site (MSH-5 when it names one, else the listener's
default), check it (:func:`labbridge.orders.order_problems`, and each test code against the
instrument's ``test_map`` when it has one), then store the message and its orders in one transaction
(:meth:`SqliteOrderSource.add_orders_from_message`), and only then answer:

* stored: AA (per MSH-15/16, CA then AA in enhanced mode); the runners of the instruments concerned are
  woken to push them (LAB-28 for HL7 analyzers, an order download for ASTM ones);
* the same MSH-10 and content again (a resend after a lost ACK): AA, nothing added twice;
* unknown instrument, site or test, bad fields, unsupported order control: AE with the reason (MSA-3,
  ERR); the message is kept (status ``refused``) for inspection and nothing is added;
* unreadable (no MSH, bad encoding characters) or not an order message: AE/AR with the reason, kept;
* the store cannot commit: AR "send it again later".

Test codes stay LIS codes in the order source; each instrument's driver maps them to its own codes
through the inverse of its ``test_map`` when it sends the work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from labbridge.config import Config, InstrumentConfig, LisOrdersConfig
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.instrument import admit
from labbridge.links.session import Limits, LinkSession
from labbridge.links.sink import Decision
from labbridge.logs import get_logger
from labbridge.orders import NewOrder, Order, order_problems
from labbridge.protocols import mllp
from labbridge.protocols.hl7_ack import Hl7Event, Hl7Received, Hl7Receiver, IncompleteBlock
from labbridge.protocols.hl7_orders import Hl7OrderError, LisOrder, read_lis_orders
from labbridge.protocols.hl7_parse import ERR_INTERNAL, Hl7Message
from labbridge.protocols.link import Answer, Outcome, over_limit
from labbridge.store.orders import SqliteOrderSource

log = get_logger("labbridge.lis_orders")


def _unknown_tests(inst: InstrumentConfig, codes: tuple[str, ...]) -> list[str]:
    """LIS codes this instrument has no mapping for (only when it has a test map: else every code passes)."""
    if not inst.test_map:
        return []
    known = set(inst.test_map.values())
    return [c for c in codes if c not in known]


def order_for(config: Config, listener: LisOrdersConfig, message: Hl7Message, order: LisOrder,
              ) -> tuple[NewOrder | None, list[str]]:
    """The order to add for one sample of a LIS message, or the problems that prevent it."""
    target = message.value(message.header, 5, 1)
    instruments = {i.id: i for i in config.instruments}
    sites = {s.id for s in config.sites}
    instrument = site = ""
    if target in instruments:
        instrument = target
    elif target in sites:
        site = target
    else:
        instrument, site = listener.instrument, listener.site
    if not instrument and not site:
        return None, [f"no instrument for the order: MSH-5 ({target or 'empty'}) names no instrument or site "
                      f"of this labbridge, and [[lis_orders]] {listener.id} has no default instrument or site"]
    if instrument and not site and instrument in instruments:
        site = instruments[instrument].site
    new = NewOrder(sample_id=order.sample_id, test_codes=order.test_codes, instrument=instrument, site=site,
                   priority=order.priority, patient_id=order.patient_id, source=f"lis:{listener.id}")
    problems = order_problems(config, new)
    if instrument in instruments:
        unknown = _unknown_tests(instruments[instrument], order.test_codes)
        if unknown:
            problems.append(f"test {', '.join(unknown)} unknown for instrument {instrument} (not in its test_map)")
    elif site and not instrument:
        candidates = [i for i in config.instruments if i.site == site]
        if candidates and all(_unknown_tests(i, (code,)) for code in order.test_codes for i in candidates):
            problems.append(f"no instrument of site {site} has test(s) {', '.join(order.test_codes)} "
                            "in its test_map")
    return (None if problems else new), problems


class LisOrderListener:
    def __init__(self, cfg: LisOrdersConfig, *, config: Config, orders: SqliteOrderSource,
                 on_added: Callable[[Order], None]) -> None:
        self.cfg = cfg
        self.config = config
        self.orders = orders
        self.on_added = on_added
        self.bound: tuple[str, int] | None = None
        self.ready = asyncio.Event()
        self.messages = 0
        self.refused = 0
        # The listener's connections are counted like an instrument's (bytes, junk, refused blocks).
        self.health = InstrumentHealth(id=f"lis-orders:{cfg.id}", site="", driver="hl7",
                                       transport=f"tcp-server {cfg.host}:{cfg.port}")
        self.sessions: set[LinkSession[Hl7Event]] = set()
        self.retiring = False  # a reload removes or changes this listener: new connections are refused

    async def run(self) -> None:
        from labbridge.transports.tls import server_context

        ssl_ctx = server_context(self.cfg.tls) if self.cfg.tls is not None else None
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self._session, self.cfg.host, self.cfg.port, ssl=ssl_ctx)
        except OSError as exc:
            log.error("lis_orders_cannot_listen", listener=self.cfg.id, host=self.cfg.host, port=self.cfg.port,
                      error=exc.strerror or str(exc))
            self.ready.set()
            raise
        sockname = server.sockets[0].getsockname()
        self.bound = (str(sockname[0]), int(sockname[1]))
        self.health.listening = f"{self.bound[0]}:{self.bound[1]}"
        log.info("lis_orders_listening", listener=self.cfg.id, host=self.bound[0], port=self.bound[1])
        self.ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            for session in tuple(self.sessions):
                session.abort()

    def _session(self) -> LinkSession[Hl7Event]:
        cfg = self.cfg
        receiver = Hl7Receiver(default_charset=cfg.encoding, ack_id_prefix="LBL", max_message=cfg.max_message_bytes)

        def opened(session: LinkSession[Hl7Event]) -> bool:
            """Only the LIS's addresses (allow_peers), at most max_connections at once."""
            if self.retiring or not admit(session.peer_ip, session.peer, allow_peers=cfg.allow_peers,
                                          max_connections=cfg.max_connections, open_now=len(self.sessions),
                                          health=self.health, where=f"LIS order listener {cfg.id}"):
                return False
            self.sessions.add(session)
            return True

        return LinkSession(receiver, lambda session: _LisRole(session, self, receiver), self.health, on_made=opened,
                           on_closed=self.sessions.discard,
                           limits=Limits(bytes_per_s=cfg.max_bytes_per_s, idle_timeout_s=cfg.idle_timeout_s))

    async def message(self, event: Hl7Received) -> Decision:
        """One message from the LIS: its orders stored, and the answer (see the module's docstring)."""
        self.messages += 1
        origin = f"lis:{self.cfg.id}"
        msg = event.message
        problems: list[str] = []
        error_code = "207"
        outcome = Outcome.ERROR
        new: list[NewOrder] = []
        if msg is None:
            assert event.error is not None
            problems = [event.error.reason]
            if over_limit(event.error.reason):
                self.health.counters.over_limit += 1
                self.health.notice("over_limit", f"an order message went over a limit ({event.error.reason})")
            outcome = Outcome.ERROR if event.error.ack_code == "AE" else Outcome.REJECTED
            error_code = event.error.error_code
        else:
            try:
                for order in read_lis_orders(msg):
                    made, why = order_for(self.config, self.cfg, msg, order)
                    problems += why
                    if made is not None:
                        new.append(made)
            except Hl7OrderError as exc:
                problems, error_code = [exc.reason], exc.error_code
                outcome = Outcome.REJECTED if exc.error_code == "200" else Outcome.ERROR
        reason = "; ".join(problems)
        sender_id = (msg.control_id, msg.content_digest()) if msg is not None else None
        try:
            added, duplicate = await self.orders.add_orders_from_message(
                [] if problems else new, origin=origin, raw=event.raw, sender_id=sender_id, now=time.time(),
                error=reason or None)
        except Exception as exc:
            log.error("lis_orders_store_failed", listener=self.cfg.id, error=type(exc).__name__)
            return Decision(False, Answer(Outcome.REJECTED, datetime.now(UTC),
                                          "labbridge could not store the orders; send them again later",
                                          ERR_INTERNAL))
        if problems:
            self.refused += 1
            log.warning("lis_orders_refused", listener=self.cfg.id, reason=reason[:300])
            return Decision(True, Answer(outcome, datetime.now(UTC), reason, error_code))
        log.info("lis_orders_stored", listener=self.cfg.id, orders=len(added), duplicate=duplicate)
        for stored in added:
            self.on_added(stored)
        return Decision(True, Answer(Outcome.ACCEPTED, datetime.now(UTC)))


class _LisRole:
    """The listener's part of one LIS connection: each message is stored, then answered, in order."""

    def __init__(self, session: LinkSession[Hl7Event], listener: LisOrderListener, receiver: Hl7Receiver) -> None:
        self.session = session
        self.listener = listener
        self.receiver = receiver

    def on_event(self, event: Hl7Event) -> bool:
        if isinstance(event, mllp.MllpJunk):
            self.listener.health.counters.junk_bytes += event.count
            return True
        if isinstance(event, mllp.MllpOversize | mllp.MllpBadEnd):
            self.listener.health.counters.frames_rejected += 1
            log.warning("lis_orders_block_rejected", listener=self.listener.cfg.id, kind=type(event).__name__)
            return True
        if isinstance(event, IncompleteBlock):
            log.warning("lis_orders_block_cut_off", listener=self.listener.cfg.id, bytes=len(event.raw))
            return True
        return False

    async def handle(self, event: Hl7Event) -> None:
        if isinstance(event, Hl7Received):
            decision = await self.listener.message(event)
            decision.apply(self.receiver, self.session.now())

    def deadline(self) -> float | None:
        return None

    async def work(self, now: float, *, woken: bool) -> None:
        return

    async def finish(self) -> None:
        return
