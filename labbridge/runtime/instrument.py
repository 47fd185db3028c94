"""One runner per instrument: opens its transport, runs sessions, reconnects, keeps its health.

Each runner is isolated: whatever one analyzer sends or does, the exception stops at its runner (and
is logged, counted and shown), never at the daemon or another link.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import zoneinfo
from collections.abc import Callable

from labbridge.config import InstrumentConfig, TcpClientTransport, TcpServerTransport
from labbridge.driver import AstmDriver, DecodeContext
from labbridge.logs import get_logger
from labbridge.protocols import e1381
from labbridge.runtime.astm_session import AstmSession
from labbridge.runtime.backoff import backoff_delay
from labbridge.runtime.health import InstrumentHealth
from labbridge.runtime.intake import InstrumentDecoder
from labbridge.runtime.store import Store

log = get_logger("labbridge.instrument")

BIND_RETRY_S = 30.0


def _transport_label(cfg: InstrumentConfig) -> str:
    t = cfg.transport
    if isinstance(t, TcpServerTransport):
        return f"tcp-server {t.host}:{t.port}"
    return f"tcp-client {t.host}:{t.port}"


class InstrumentRunner:
    def __init__(self, cfg: InstrumentConfig, *, driver: AstmDriver | None, driver_error: str | None,
                 store: Store, destinations: list[str], on_stored: Callable[[], None],
                 backlog_after_s: float | None = None) -> None:
        self.cfg = cfg
        self.driver = driver
        self.driver_error = driver_error
        self.store = store
        self.destinations = destinations
        self.on_stored = on_stored
        self.backlog_after_s = backlog_after_s
        self.health = InstrumentHealth(id=cfg.id, site=cfg.site, driver=cfg.driver, name=cfg.name,
                                       transport=_transport_label(cfg), idle_after_s=cfg.idle_after_s)
        self.bound: tuple[str, int] | None = None
        self.ready = asyncio.Event()  # set once the listener is bound (or binding failed)
        self._active: asyncio.StreamWriter | None = None
        self.context = DecodeContext(instrument=cfg.id, timezone=zoneinfo.ZoneInfo(cfg.timezone),
                                     test_map=dict(cfg.test_map), encoding=cfg.link.encoding)

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
            if isinstance(t, TcpServerTransport):
                await self._serve(t)
            else:
                await self._dial(t)
        finally:
            self.ready.set()

    # ---- TCP server: the analyzer dials in -----------------------------------------------------

    async def _serve(self, t: TcpServerTransport) -> None:
        attempt = 0
        while True:
            try:
                server = await asyncio.start_server(self._on_client, t.host, t.port)
                break
            except OSError as exc:
                hint = ("another program (or another labbridge) already uses this port"
                        if exc.errno == errno.EADDRINUSE else "check the host address in the config")
                self.health.set_state("failed", f"cannot listen on {t.host}:{t.port}: "
                                                f"{exc.strerror or exc}; {hint}")
                self.ready.set()
                await asyncio.sleep(backoff_delay(attempt, 1.0, BIND_RETRY_S))
                attempt += 1
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
        self.ready.set()
        attempt = 0
        while True:
            if attempt == 0:
                self.health.set_state("connecting", f"dialing the analyzer at {t.host}:{t.port}")
            try:
                async with asyncio.timeout(t.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(t.host, t.port)
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

    # ---- one connection ------------------------------------------------------------------------

    async def _run_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        assert self.driver is not None
        self.health.counters.connections += 1
        self.health.peer = peer
        self.health.set_state("up", f"analyzer connected from {peer}")
        link = e1381.E1381Link(e1381.Role.HOST,
                               e1381.LinkProfile(strict_frame_numbers=self.cfg.link.strict_frame_numbers))
        session = AstmSession(link=link, driver=self.driver, context=self.context, store=self.store,
                              health=self.health, destinations=self.destinations, reader=reader,
                              writer=writer, on_stored=self.on_stored, decoder=self.decoder(),
                              backlog_after_s=self.backlog_after_s)
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # isolation: a bug on one link is logged and shown, never spreads
            log.exception("session_crashed", instrument=self.cfg.id, error=type(exc).__name__)
            self.health.set_state("down", f"internal error on this link ({type(exc).__name__}); reconnecting")
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
