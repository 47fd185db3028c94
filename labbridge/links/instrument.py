"""One runner per instrument: opens its transport, runs sessions, reconnects, keeps its health.

Each runner is isolated: whatever one analyzer sends or does, the exception stops at its runner (and
is logged, counted and shown), never at the daemon or another link.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import zoneinfo
from collections.abc import Callable
from typing import Any

from labbridge.backoff import backoff_delay
from labbridge.config import InstrumentConfig, SerialTransport, TcpClientTransport, TcpServerTransport
from labbridge.driver import AstmDriver, DecodeContext, Hl7Driver
from labbridge.errors import PermanentLinkError, TransientLinkError
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.astm import AstmSession, ByteWriter
from labbridge.links.dialect import host_link
from labbridge.links.hl7 import Hl7Session
from labbridge.links.input_wait import ClientHandler, Wakeup, open_link_connection, start_link_server
from labbridge.links.intake import InstrumentDecoder
from labbridge.logs import get_logger
from labbridge.orders import OrderSource
from labbridge.protocols.hl7_ack import Hl7Receiver
from labbridge.store.db import Store
from labbridge.transports import serial as serial_transport

log = get_logger("labbridge.instrument")

BIND_RETRY_S = 30.0


async def listen_with_retry(on_client: ClientHandler, host: str, port: int, ssl_ctx: ssl.SSLContext | None, *,
                            on_failure: Callable[[str], None]) -> asyncio.Server:
    """Bind a listener, retrying with capped backoff while it cannot (the port may be freed later);
    ``on_failure`` gets a reason a technician can act on each time, for the links that wait on it."""
    attempt = 0
    while True:
        try:
            return await start_link_server(on_client, host, port, ssl_ctx)
        except OSError as exc:
            hint = ("another program (or another labbridge) already uses this port"
                    if exc.errno == errno.EADDRINUSE else "check the host address in the config")
            on_failure(f"{exc.strerror or exc}; {hint}")
            await asyncio.sleep(backoff_delay(attempt, 1.0, BIND_RETRY_S))
            attempt += 1

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
                 store: Store, destinations: list[str], on_stored: Callable[[], None],
                 orders: OrderSource | None = None, host_name: str = "labbridge",
                 backlog_after_s: float | None = None) -> None:
        self.cfg = cfg
        self.driver = driver
        self.driver_error = driver_error
        self.store = store
        self.destinations = destinations
        self.on_stored = on_stored
        self.orders = orders
        # Set when an order for this instrument was added: the connected session looks for work to push.
        self.orders_wakeup = Wakeup()
        self.backlog_after_s = backlog_after_s
        self.health = InstrumentHealth(id=cfg.id, site=cfg.site, driver=cfg.driver, name=cfg.name,
                                       transport=_transport_label(cfg), idle_after_s=cfg.idle_after_s)
        self.bound: tuple[str, int] | None = None
        self.ready = asyncio.Event()  # set once the listener is bound (or binding failed)
        self._active: asyncio.StreamWriter | None = None
        self.context = DecodeContext(instrument=cfg.id, timezone=zoneinfo.ZoneInfo(cfg.timezone),
                                     test_map=cfg.lis_test_map(), encoding=cfg.link.encoding,
                                     host_name=host_name)

    def decoder(self) -> InstrumentDecoder | None:
        """The driver and policies a message from this instrument is decoded with (also for re-decoding)."""
        if self.driver is None:
            return None
        return InstrumentDecoder.from_config(self.cfg, self.driver, self.context)

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

    # ---- TCP server: the analyzer dials in -----------------------------------------------------

    async def _serve(self, t: TcpServerTransport) -> None:
        from labbridge.transports.tls import server_context

        def failed(why: str) -> None:
            self.health.set_state("failed", f"cannot listen on {t.host}:{t.port}: {why}")
            self.ready.set()

        server = await listen_with_retry(self._on_client, t.host, t.port,
                                         server_context(t.tls) if t.tls is not None else None, on_failure=failed)
        sockname = server.sockets[0].getsockname()
        self.bound = (str(sockname[0]), int(sockname[1]))
        self.health.listening = f"{self.bound[0]}:{self.bound[1]}"
        self.health.set_state("down", f"listening on port {self.bound[1]}; no analyzer connected yet: set "
                                      f"the analyzer's host address to this machine, port {self.bound[1]}")
        self.ready.set()
        async with server:
            await server.serve_forever()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_label = f"{peer[0]}:{peer[1]}" if peer else "unknown"
        t = self.cfg.transport
        assert isinstance(t, TcpServerTransport)
        if self._active is not None:
            if t.second_connection == "reject":
                self.health.counters.connections_refused += 1
                log.warning("second_connection_refused", instrument=self.cfg.id, peer=peer_label)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            log.warning("connection_replaced", instrument=self.cfg.id, peer=peer_label)
            self._active.close()
        self._active = writer
        try:
            await self._run_session(reader, writer, peer_label)
        finally:
            if self._active is writer:
                self._active = None
                self.health.peer = None
                self.health.set_state("down", f"analyzer disconnected; listening on port "
                                              f"{self.bound[1] if self.bound else t.port} for it to reconnect")

    # ---- TCP client: labbridge dials the analyzer ----------------------------------------------

    async def _dial(self, t: TcpClientTransport) -> None:
        from labbridge.transports.tls import client_context

        ssl_ctx: ssl.SSLContext | None = client_context(t.tls) if t.tls is not None else None
        server_hostname = t.tls.server_hostname if t.tls is not None and t.tls.server_hostname else None
        self.ready.set()
        attempt = 0
        while True:
            if attempt == 0:
                self.health.set_state("connecting", f"dialing the analyzer at {t.host}:{t.port}")
            try:
                async with asyncio.timeout(t.connect_timeout_s):
                    reader, writer = await open_link_connection(t.host, t.port, ssl_ctx=ssl_ctx,
                                                                server_hostname=server_hostname)
            except (OSError, TimeoutError) as exc:
                why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
                self.health.set_state("down", f"cannot reach the analyzer at {t.host}:{t.port} ({why}); "
                                              "retrying: check it is on and its IP address and port")
                await asyncio.sleep(backoff_delay(attempt, t.reconnect_initial_s, t.reconnect_max_s))
                attempt += 1
                continue
            attempt = 0
            await self._run_session(reader, writer, f"{t.host}:{t.port}")
            self.health.set_state("down", "the analyzer closed the connection; redialing")
            await asyncio.sleep(backoff_delay(0, t.reconnect_initial_s, t.reconnect_max_s))

    # ---- serial: the analyzer's RS-232 port -----------------------------------------------------

    async def _serial(self, t: SerialTransport) -> None:
        self.ready.set()
        attempt = 0
        while True:
            if attempt == 0:
                self.health.set_state("connecting", f"opening {t.port}")
            try:
                conn = await serial_transport.SerialConnection.open(t)
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
            try:
                await self._run_link(conn.reader, conn, t.port)
            finally:
                await conn.close()
            self.health.peer = None
            self.health.set_state("down", f"the serial device {t.port} went away (unplugged or closed); "
                                          "reopening: check the cable and the USB-serial adapter")
            await asyncio.sleep(backoff_delay(0, t.reopen_initial_s, t.reopen_max_s))

    # ---- one connection ------------------------------------------------------------------------

    async def _run_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                           **routed: Any) -> None:
        try:
            await self._run_link(reader, writer, peer, **routed)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _run_link(self, reader: asyncio.StreamReader, writer: ByteWriter, peer: str, *,
                        decoder: InstrumentDecoder | None = None, health: InstrumentHealth | None = None,
                        attribute: Callable[[str], InstrumentHealth] | None = None) -> None:
        """One connection. On a shared listener (``attribute`` given), the connection starts on its own
        ``health`` and each message is attributed by ``decoder`` (see links/shared.py)."""
        assert self.driver is not None
        if health is None:
            health = self.health
            health.counters.connections += 1
            health.peer = peer
            health.set_state("up", f"analyzer connected from {peer}")
        decoder = decoder or self.decoder()
        session: AstmSession | Hl7Session
        if isinstance(self.driver, Hl7Driver):
            receiver = Hl7Receiver(default_charset=self.cfg.link.encoding,
                                   allow_missing_cr=self.cfg.link.allow_missing_cr)
            session = Hl7Session(receiver=receiver, driver=self.driver, context=self.context, store=self.store,
                                 health=health, destinations=self.destinations, reader=reader,
                                 writer=writer, on_stored=self.on_stored, decoder=decoder,
                                 backlog_after_s=self.backlog_after_s, attribute=attribute,
                                 orders=self.orders if attribute is None else None, site=self.cfg.site,
                                 wakeup=self.orders_wakeup)
        else:
            # A connection shared by several instruments answers no host queries and gets no order
            # pushes: orders belong to one instrument (not yet supported there).
            session = AstmSession(link=host_link(self.cfg.link), driver=self.driver, context=self.context,
                                  store=self.store, health=health, destinations=self.destinations,
                                  reader=reader, writer=writer, on_stored=self.on_stored,
                                  orders=self.orders if attribute is None else None,
                                  site=self.cfg.site, wakeup=self.orders_wakeup, decoder=decoder,
                                  backlog_after_s=self.backlog_after_s, attribute=attribute)
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # isolation: a bug on one link is logged and shown, never spreads
            log.exception("session_crashed", instrument=health.id, error=type(exc).__name__)
            health.set_state("down", f"internal error on this link ({type(exc).__name__}); reconnecting")
