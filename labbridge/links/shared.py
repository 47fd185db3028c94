"""One tcp-server listener shared by several instruments (same host and port in the config).

The listener binds once. For each connection it asks :class:`labbridge.sharing.SenderRouter`:

* the peer's address decides (an instrument's ``peer`` list, or the listener's default for an address
  nobody names): the connection is handed to that instrument's runner, exactly as if it had its own
  port (its second-connection policy, its health, its host queries and order pushes);
* several instruments remain: the connection runs with a :class:`RoutingDecoder`, which attributes
  each message by its sender name (ASTM H-5, HL7 MSH-3/MSH-4), then to the default. The message is
  stored under, and counted on, the instrument it was attributed to, and that instrument shows the
  connection (up, with its peer) until it closes. A message nothing attributes is stored under
  ``unknown@HOST:PORT`` and dead-lettered as ``unknown-sender``: never attributed to a guess.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from labbridge.config import InstrumentConfig, TcpServerTransport
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.instrument import AnySession, InstrumentRunner, admit, listen_with_retry
from labbridge.links.intake import InstrumentDecoder, Intake
from labbridge.logs import get_logger
from labbridge.outbox import DEAD_UNKNOWN_SENDER, Held
from labbridge.protocols.hl7_parse import Hl7Message
from labbridge.sharing import SenderRouter, astm_sender_names, hl7_sender_names

log = get_logger("labbridge.shared")


class RoutingDecoder(InstrumentDecoder):
    """Attributes each message to one instrument of a shared listener, then applies that one's policies."""

    def __init__(self, router: SenderRouter, candidates: list[InstrumentConfig],
                 decoders: dict[str, InstrumentDecoder], unknown_id: str) -> None:
        first = next(iter(decoders.values()))
        super().__init__(first.driver, first.context, link=first.link)
        self.router = router
        self.candidates = candidates
        self.decoders = decoders
        self.unknown_id = unknown_id

    def decode_records(self, records: tuple[bytes, ...] | list[bytes]) -> Intake:
        names = astm_sender_names(records, self.link.encoding)
        return self._route(names, lambda d: d.decode_records(records))

    def decode_hl7(self, message: Hl7Message) -> Intake:
        return self._route(hl7_sender_names(message), lambda d: d.decode_hl7(message))

    def _route(self, names: list[str], decode: Callable[[InstrumentDecoder], Intake]) -> Intake:
        cfg = self.router.by_sender(self.candidates, names)
        said = ", ".join(repr(n) for n in names) or "no sender name"
        if cfg is None:
            why = (f"unknown sender ({said}) on the shared listener {self.router.address}: no instrument's peer "
                   "or sender setting matches it and the listener has no listener_default; add its name to "
                   "the right instrument's sender list, then retry")
        elif cfg.id not in self.decoders:
            why = (f"sender ({said}) on the shared listener {self.router.address} is instrument {cfg.id}, whose "
                   "driver cannot be used: see its health")
        else:
            intake = decode(self.decoders[cfg.id])
            intake.instrument = cfg.id
            return intake
        return Intake(held=[Held(DEAD_UNKNOWN_SENDER, why)], instrument=self.unknown_id)


class SharedListener:
    def __init__(self, runners: list[InstrumentRunner]) -> None:
        self.runners = {r.cfg.id: r for r in runners}
        transport = runners[0].cfg.transport
        assert isinstance(transport, TcpServerTransport)
        self.transport = transport
        self.address = f"{transport.host}:{transport.port}"
        self.router = SenderRouter([r.cfg for r in runners], self.address)
        self.unknown_id = f"unknown@{self.address}"
        self._attributed: dict[str, int] = {}  # routed connections currently shown on each instrument

    @property
    def usable(self) -> list[InstrumentRunner]:
        return [r for r in self.runners.values() if r.driver is not None]

    async def run(self) -> None:
        from labbridge.transports.tls import server_context

        for runner in self.runners.values():
            if runner.driver is None:
                runner.health.set_state("failed", f"driver cannot be used: {runner.driver_error}")
                runner.ready.set()
        try:
            t = self.transport

            def failed(why: str) -> None:
                for runner in self.usable:
                    runner.health.set_state("failed", f"cannot listen on {self.address} (shared): {why}")
                    runner.ready.set()

            server = await listen_with_retry(self._session, t.host, t.port,
                                             server_context(t.tls) if t.tls is not None else None,
                                             on_failure=failed)
            sockname = server.sockets[0].getsockname()
            bound = (str(sockname[0]), int(sockname[1]))
            for runner in self.usable:
                runner.bound = bound
                runner.health.listening = f"{bound[0]}:{bound[1]}"
                runner.health.set_state("down", f"listening on port {bound[1]} (shared with "
                                                f"{len(self.runners) - 1} other instrument(s)); no analyzer "
                                                "connected yet: set the analyzer's host address to this machine, "
                                                f"port {bound[1]}")
                runner.ready.set()
            async with server:
                await server.serve_forever()
        finally:
            for runner in self.runners.values():
                runner.ready.set()
                for session in tuple(runner.sessions):
                    session.abort()

    def _session(self) -> asyncio.Protocol:
        """A connection to the shared port: handed to one instrument by its peer address, or attributed
        message by message (see the module's docstring)."""
        return _Pending(self)

    def routed(self, peer_ip: str, peer_label: str) -> AnySession | None:
        """The session for a new connection from ``peer_ip``, or None to refuse it (a peer not in the listener's
        allow_peers, or max_connections open: counted and shown on the listener's first instrument)."""
        if self.usable and not admit(peer_ip, peer_label, allow_peers=self.transport.allow_peers,
                                     max_connections=self.transport.max_connections,
                                     open_now=sum(len(r.sessions) for r in self.runners.values()),
                                     health=self.usable[0].health, where=f"shared listener {self.address}"):
            return None
        chosen = self.router.at_connect(peer_ip)
        if chosen is not None:
            runner = self.runners[chosen.id]
            if runner.driver is not None:
                return runner.session(on_made=runner.accept, on_closed=runner._disconnected)
            log.warning("shared_connection_refused", listener=self.address, instrument=chosen.id,
                        reason="driver cannot be used")
            return None
        candidates = self.router.by_peer(peer_ip)
        decoders = {r.cfg.id: d for r in self.usable if (d := r.decoder()) is not None}
        if not decoders:
            return None
        routing = RoutingDecoder(self.router, candidates, decoders, self.unknown_id)
        owner = self.usable[0]
        connection = InstrumentHealth(id=self.unknown_id, site=owner.cfg.site, driver=owner.cfg.driver,
                                      name="", transport=owner.health.transport, idle_after_s=owner.cfg.idle_after_s)
        connection.peer = peer_label
        shown: set[str] = set()

        def attribute(instrument_id: str) -> InstrumentHealth:
            runner = self.runners.get(instrument_id)
            if runner is None:
                return connection
            if instrument_id not in shown:
                shown.add(instrument_id)
                self._attributed[instrument_id] = self._attributed.get(instrument_id, 0) + 1
                runner.health.connected(peer_label)
                runner.health.set_state("up", f"analyzer connected from {peer_label}, recognised by its "
                                              "sender name on a shared port")
                if runner.on_connected is not None:
                    runner.on_connected()
                log.info("shared_connection_attributed", listener=self.address, instrument=instrument_id)
            return runner.health

        def closed(session: AnySession) -> None:
            for instrument_id in shown:
                self._attributed[instrument_id] -= 1
                runner = self.runners[instrument_id]
                if self._attributed[instrument_id] == 0 and runner._active is None:
                    runner.ended(session, then=f"listening on shared port {self.transport.port} for it to "
                                               "reconnect")

        return owner.session(on_closed=closed, decoder=routing, health=connection, attribute=attribute)


class _Pending(asyncio.Protocol):
    """A connection to a shared port until its peer's address chose its session (at once, on connect)."""

    def __init__(self, listener: SharedListener) -> None:
        self.listener = listener
        self.session: AnySession | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        peer_ip = str(peer[0]) if peer else ""
        peer_label = f"{peer[0]}:{peer[1]}" if peer else "unknown"
        self.session = self.listener.routed(peer_ip, peer_label)
        if self.session is None:
            transport.close()
            return
        self.session.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.connection_lost(exc)
