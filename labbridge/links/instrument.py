"""One runner per instrument: opens its transport, runs sessions, reconnects, keeps its health.

Each runner is isolated: whatever one analyzer sends or does, the exception stops at its runner (and
is logged, counted and shown), never at the daemon or another link.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from labbridge.backoff import backoff_delay
from labbridge.config import InstrumentConfig, SerialTransport, TcpClientTransport, TcpServerTransport, peer_allowed
from labbridge.driver import AstmDriver, Hl7Driver
from labbridge.errors import PermanentLinkError, TransientLinkError
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.astm import AstmRole
from labbridge.links.dialect import host_link
from labbridge.links.health_settings import health_settings
from labbridge.links.hl7 import Hl7Role
from labbridge.links.intake import InstrumentDecoder, decode_context, instrument_decoder
from labbridge.links.session import Limits, LinkSession, Wakeup
from labbridge.links.sink import MessageSink
from labbridge.logs import get_logger
from labbridge.orders import OrderSource
from labbridge.outbox import OutboxItem, Route
from labbridge.protocols.hl7_ack import Hl7Receiver
from labbridge.store.db import Store
from labbridge.transports import serial as serial_transport

log = get_logger("labbridge.instrument")

BIND_RETRY_S = 30.0

AnySession = LinkSession[Any]


async def listen_with_retry(session: Callable[[], asyncio.Protocol], host: str, port: int,
                            ssl_ctx: ssl.SSLContext | None, *, on_failure: Callable[[str], None]) -> asyncio.Server:
    """Bind a listener whose connections each get a new ``session``, retrying with capped backoff while it
    cannot (the port may be freed later); ``on_failure`` gets a reason a technician can act on each time, for
    the links that wait on it."""
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        try:
            return await loop.create_server(session, host, port, ssl=ssl_ctx)
        except OSError as exc:
            hint = ("another program (or another labbridge) already uses this port"
                    if exc.errno == errno.EADDRINUSE else "check the host address in the config")
            on_failure(f"{exc.strerror or exc}; {hint}")
            await asyncio.sleep(backoff_delay(attempt, 1.0, BIND_RETRY_S))
            attempt += 1


# ---- what may connect (docs/security.md "What may connect, fairness and limits") ----
def admit(peer_ip: str, peer: str, *, allow_peers: list[str], max_connections: int, open_now: int,
          health: InstrumentHealth, where: str) -> bool:
    """Whether a new connection to a listener may stay: its peer in ``allow_peers`` and fewer than
    ``max_connections`` open. A refusal is counted, logged with the peer's address (never patient data) and
    shown on ``health`` as a notice."""
    if not peer_allowed(allow_peers, peer_ip):
        health.counters.peers_refused += 1
        health.notice("peer_refused", f"a connection from {peer_ip or 'an unknown address'} was refused: "
                                      f"not in allow_peers of {where}; if it is the analyzer (or the LIS), add "
                                      "its address")
        log.warning("connection_refused_peer", listener=where, peer=peer)
        return False
    if open_now >= max_connections:
        health.counters.over_limit += 1
        health.notice("too_many_connections", f"a connection from {peer_ip} was refused: {where} already "
                                              f"has {open_now} open (max_connections)")
        log.warning("connection_refused_limit", listener=where, peer=peer, max_connections=max_connections)
        return False
    return True


def session_limits(cfg: InstrumentConfig) -> Limits:
    """The fairness limits of one connection of this instrument (its link's rate, its listener's idle timeout)."""
    t = cfg.transport
    return Limits(bytes_per_s=cfg.link.max_bytes_per_s,
                  idle_timeout_s=t.idle_timeout_s if isinstance(t, TcpServerTransport) else None)


def silent_after_s(cfg: InstrumentConfig) -> float:
    """How long an open connection may stay silent before a new one replaces it: the link's receive timeout."""
    return cfg.link.raw_idle_timeout_s if cfg.link.framing == "raw" else cfg.link.receive_timeout_s
# ---- end of what may connect ----


def _transport_label(cfg: InstrumentConfig) -> str:
    t = cfg.transport
    if isinstance(t, SerialTransport):
        return serial_transport.describe(t)
    tls = "+tls" if t.tls is not None else ""
    if isinstance(t, TcpServerTransport):
        return f"tcp-server{tls} {t.host}:{t.port}"
    return f"tcp-client{tls} {t.host}:{t.port}"


class InstrumentRunner:
    def __init__(self, cfg: InstrumentConfig, *, driver: AstmDriver | Hl7Driver | None, driver_error: str | None,
                 store: Store, destinations: list[str | Route], on_stored: Callable[[Sequence[OutboxItem]], None],
                 orders: OrderSource | None = None, host_name: str = "labbridge",
                 backlog_after_s: float | None = None) -> None:
        self.cfg = cfg
        self.driver = driver
        self.driver_error = driver_error
        self.store = store
        self.destinations = destinations
        self.on_stored = on_stored
        self.orders = orders
        # Set when an order for this instrument was added: its connected session looks for work to push.
        self.orders_wakeup = Wakeup()
        self.backlog_after_s = backlog_after_s
        self.health = InstrumentHealth(id=cfg.id, site=cfg.site, driver=cfg.driver, name=cfg.name,
                                       transport=_transport_label(cfg), idle_after_s=cfg.idle_after_s,
                                       **health_settings(cfg))
        if isinstance(cfg.transport, TcpServerTransport):
            self.health.squat_after_s = silent_after_s(cfg)
        self.bound: tuple[str, int] | None = None
        self.ready = asyncio.Event()  # set once the listener is bound (or binding failed)
        self.sessions: set[AnySession] = set()  # open connections (closed when the runner stops)
        self._active: AnySession | None = None  # the connection a tcp-server instrument shows
        self.retiring = False  # a reload removes or changes this link: new connections are refused
        self.host_name = host_name
        self.context = replace(decode_context(cfg), host_name=host_name)
        self.on_connected: Callable[[], None] | None = None  # an analyzer connected (the campaign's link-up)

    def decoder(self) -> InstrumentDecoder | None:
        """The driver and policies a message from this instrument is decoded with (also for re-decoding)."""
        if self.driver is None:
            return None
        return instrument_decoder(self.cfg, self.driver, host_name=self.host_name)

    def session(self, *, on_made: Callable[[AnySession], bool] | None = None,
                on_closed: Callable[[AnySession], None] | None = None, decoder: InstrumentDecoder | None = None,
                health: InstrumentHealth | None = None,
                attribute: Callable[[str], InstrumentHealth] | None = None) -> AnySession:
        """A session for one connection of this instrument: its link, its role and its way into the store.

        On a shared listener (``attribute`` given), the connection starts on its own ``health`` and each
        message is attributed by ``decoder`` (see links/shared.py); it answers no host queries and gets no
        order pushes, since orders belong to one instrument."""
        driver = self.driver
        assert driver is not None
        decoder = decoder or self.decoder()
        assert decoder is not None
        orders = self.orders if attribute is None else None

        def sink(session: AnySession) -> MessageSink:
            return MessageSink(self.store, decoder, self.destinations, session, on_stored=self.on_stored,
                               backlog_after_s=self.backlog_after_s, attribute=attribute)

        def opened(session: AnySession) -> bool:
            if self.retiring or (on_made is not None and not on_made(session)):
                return False
            self.sessions.add(session)
            return True

        def closed(session: AnySession) -> None:
            self.sessions.discard(session)
            if on_closed is not None:
                on_closed(session)

        wakeup = self.orders_wakeup if orders is not None else None
        if isinstance(driver, Hl7Driver):
            receiver = Hl7Receiver(default_charset=self.cfg.link.encoding,
                                   allow_missing_cr=self.cfg.link.allow_missing_cr,
                                   max_message=self.cfg.link.max_message_bytes,
                                   max_segments=self.cfg.link.max_records_per_message)
            return LinkSession(receiver, lambda s: Hl7Role(s, receiver, sink=sink(s), driver=driver,
                                                           context=self.context, orders=orders, site=self.cfg.site),
                               health or self.health, on_made=opened, on_closed=closed, wakeup=wakeup,
                               limits=session_limits(self.cfg))
        link = host_link(self.cfg.link)
        return LinkSession(link, lambda s: AstmRole(s, link, sink=sink(s), driver=driver, context=self.context,
                                                    orders=orders, site=self.cfg.site),
                           health or self.health, on_made=opened, on_closed=closed, wakeup=wakeup,
                           limits=session_limits(self.cfg))

    def connected(self, session: AnySession) -> None:
        """A connection of this instrument's own: shown up, counted; the campaign may see its link-up."""
        self.health.connected(session.peer)
        if self.on_connected is not None:
            self.on_connected()

    def ended(self, session: AnySession, *, then: str) -> None:
        """A connection of this instrument's own ended: ``idle`` (waiting for the next transmission) when the
        analyzer closed it between transmissions, else ``down`` saying when and how, then ``then`` (what
        labbridge does now and what to check)."""
        health = self.health
        at = health.clock(time.time())
        if session.failure:
            reason = session.failure
        elif session.cut:
            reason = (f"connection lost at {at} in the middle of a transfer (kept as an incomplete "
                      f"transmission); {then}")
        elif session.reset:
            reason = f"connection lost at {at} (reset: the analyzer or the network dropped it); {then}"
        else:
            reason = f"connection closed at {at}; {then}"
        health.connection_ended(clean=session.clean_close, reason=reason)

    async def run(self) -> None:
        try:
            if not self.cfg.enabled:
                self.health.set_state("planned", "in the configuration but not enabled")
                return
            if self.driver is None:
                self.health.set_state("failed", f"driver cannot be used: {self.driver_error}")
                return
            t = self.cfg.transport
            try:
                if isinstance(t, TcpServerTransport):
                    await self._serve(t)
                elif isinstance(t, SerialTransport):
                    await self._serial(t)
                else:
                    await self._dial(t)
            except PermanentLinkError as exc:
                self.health.set_state("failed", f"{exc}: fix the [instruments.transport.tls] settings")
                log.error("link_failed", instrument=self.cfg.id, reason=str(exc))
        finally:
            self.ready.set()
            for session in tuple(self.sessions):
                session.abort()

    # ---- TCP server: the analyzer dials in -----------------------------------------------------

    async def _serve(self, t: TcpServerTransport) -> None:
        from labbridge.transports.tls import server_context

        def failed(why: str) -> None:
            self.health.set_state("failed", f"cannot listen on {t.host}:{t.port}: {why}")
            self.ready.set()

        server = await listen_with_retry(lambda: self.session(on_made=self.accept, on_closed=self._disconnected),
                                         t.host, t.port, server_context(t.tls) if t.tls is not None else None,
                                         on_failure=failed)
        sockname = server.sockets[0].getsockname()
        self.bound = (str(sockname[0]), int(sockname[1]))
        self.health.listening = f"{self.bound[0]}:{self.bound[1]}"
        self.health.set_state("down", f"listening on port {self.bound[1]}; the analyzer has not connected since "
                                      f"labbridge started at {self.health.clock(self.health.started_at)}: set "
                                      f"the analyzer's host address to this machine, port {self.bound[1]}")
        self.ready.set()
        async with server:
            await server.serve_forever()

    def accept(self, session: AnySession) -> bool:
        """A connection to this instrument's port: its allowed peers and connection limit, its second-connection
        policy (an open connection silent for longer than the link's receive timeout is replaced even under
        "reject": an idle one never locks the analyzer out), then shown up."""
        t = self.cfg.transport
        assert isinstance(t, TcpServerTransport)
        if not admit(session.peer_ip, session.peer, allow_peers=t.allow_peers, max_connections=t.max_connections,
                     open_now=len(self.sessions), health=self.health, where=f"instrument {self.cfg.id}"):
            return False
        active = self._active
        if active is not None:
            silent = not active.in_transfer and active.quiet_s() > silent_after_s(self.cfg)
            if t.second_connection == "reject" and not silent:
                self.health.counters.connections_refused += 1
                log.warning("second_connection_refused", instrument=self.cfg.id, peer=session.peer)
                return False
            self.health.counters.connections_replaced += 1
            why = (f"silent for {active.quiet_s():.0f} s" if silent else "second_connection = replace")
            self.health.notice("connection_replaced", f"the connection from {active.peer} was replaced by one from "
                                                      f"{session.peer} ({why})")
            log.warning("connection_replaced", instrument=self.cfg.id, peer=session.peer, replaced=active.peer,
                        why=why)
            self._active = None  # its end is not this instrument's disconnection: the newcomer is shown
            active.abort()
        self._active = session
        self.connected(session)
        return True

    def _disconnected(self, session: AnySession) -> None:
        if self._active is not session:
            return
        self._active = None
        t = self.cfg.transport
        port = self.bound[1] if self.bound else t.port if isinstance(t, TcpServerTransport) else 0
        self.ended(session, then=f"listening on port {port} for it to reconnect: check that the analyzer is on "
                                 "and its network cable")

    # ---- TCP client: labbridge dials the analyzer ----------------------------------------------

    async def _dial(self, t: TcpClientTransport) -> None:
        from labbridge.transports.tls import client_context

        ssl_ctx: ssl.SSLContext | None = client_context(t.tls) if t.tls is not None else None
        server_hostname = t.tls.server_hostname if t.tls is not None and t.tls.server_hostname else None
        loop = asyncio.get_running_loop()
        self.ready.set()
        attempt = 0
        while True:
            if attempt == 0:
                self.health.set_state("connecting", f"dialing the analyzer at {t.host}:{t.port}")
            try:
                async with asyncio.timeout(t.connect_timeout_s):
                    _, session = await loop.create_connection(
                        lambda: self.session(on_made=self._made), t.host, t.port, ssl=ssl_ctx,
                        server_hostname=server_hostname if ssl_ctx else None)
            except (OSError, TimeoutError) as exc:
                why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
                self.health.set_state("down", f"cannot reach the analyzer at {t.host}:{t.port} ({why}); "
                                              "retrying: check it is on and its IP address and port")
                await asyncio.sleep(backoff_delay(attempt, t.reconnect_initial_s, t.reconnect_max_s))
                attempt += 1
                continue
            attempt = 0
            await session.closed
            self.ended(session, then=f"redialing {t.host}:{t.port}: check that the analyzer is on and its "
                                     "network cable")
            await asyncio.sleep(backoff_delay(0, t.reconnect_initial_s, t.reconnect_max_s))

    def _made(self, session: AnySession) -> bool:
        self.connected(session)
        return True

    # ---- serial: the analyzer's RS-232 port -----------------------------------------------------

    async def _serial(self, t: SerialTransport) -> None:
        self.ready.set()
        attempt = 0
        while True:
            if attempt == 0:
                self.health.set_state("connecting", f"opening {t.port}")
            try:
                _, protocol = await serial_transport.open_serial(
                    t, lambda: self.session(on_made=lambda s: self._opened_port(s, t.port)))
            except PermanentLinkError as exc:
                self.health.set_state("failed", f"{exc}; retrying every {t.reopen_max_s:g} s at most")
                await asyncio.sleep(backoff_delay(attempt, t.reopen_initial_s, t.reopen_max_s))
                attempt += 1
                continue
            except TransientLinkError as exc:
                self.health.set_state("down", f"{exc}; retrying")
                await asyncio.sleep(backoff_delay(attempt, t.reopen_initial_s, t.reopen_max_s))
                attempt += 1
                continue
            attempt = 0
            assert isinstance(protocol, LinkSession)
            await protocol.closed
            # A serial port is ours to keep open: its end is never a clean close between transmissions.
            self.health.connection_ended(clean=False, reason=protocol.failure or (
                f"the serial device {t.port} went away at {self.health.clock(time.time())} (cable pulled, "
                "adapter unplugged or closed); reopening: check the cable and the USB-serial adapter"))
            await asyncio.sleep(backoff_delay(0, t.reopen_initial_s, t.reopen_max_s))

    def _opened_port(self, session: AnySession, port: str) -> bool:
        session.peer = port
        self.connected(session)
        return True
