"""A simulated ASTM host (the LIS-side role of E1381): a TCP server an instrument dials, the receiver.

It runs labbridge's own E1381 core in the host role: it ACKs good frames, NAKs bad ones, yields to the
instrument on contention (R-A7), and can send to the instrument (``send``: query answers or orders; it
keeps a message until the instrument ACKs its last frame, across reconnects). Together with the analyzer
simulator this exercises both roles of the link, both ways, without labbridge's daemon in the middle.

Receiver-side faults (``faults``, a :class:`~labbridge_simulators.faults.ReceiverFaults`): frames left
unanswered (lost ACKs), NAK storms, and receiver interrupts (EOT in place of ACK). Timers are those of
``profile`` (the standard's unless a test shortens them).

What arrived is kept: ``messages`` (records of every whole message), ``results`` (instrument, sample,
test code, value from the H, O and R records), ``incomplete`` (the reasons of transfers that never
became a message: never results), and ``stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import dataclass, field

from labbridge.protocols import e1381
from labbridge.protocols.e1394 import parse_records
from labbridge_simulators.astm_analyzer import ResultIdentity
from labbridge_simulators.faults import ReceiverFaults

READ_SIZE = 4096


@dataclass
class HostStats:
    connects: int = 0
    messages: int = 0
    naks_sent: int = 0
    retransmissions: int = 0  # frames repeated by the instrument after a lost ACK (ACKed, discarded)
    timeouts: int = 0
    sends_aborted: int = 0
    messages_sent: int = 0  # our messages the instrument ACKed to the last frame
    contentions: int = 0


@dataclass
class AstmHostSim:
    host: str = "127.0.0.1"
    port: int = 0
    profile: e1381.LinkProfile | None = None
    faults: ReceiverFaults = field(default_factory=ReceiverFaults)
    messages: list[tuple[bytes, ...]] = field(default_factory=list)
    results: list[ResultIdentity] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    stats: HostStats = field(default_factory=HostStats)
    outbox: list[tuple[bytes, ...]] = field(default_factory=list)  # to send; removed once ACKed
    received: asyncio.Event = field(default_factory=asyncio.Event)  # set on every whole message
    _server: asyncio.Server | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def send(self, records: tuple[bytes, ...] | list[bytes]) -> None:
        """Queue a message for the connected instrument (or the next one to connect)."""
        self.outbox.append(tuple(records))
        self._wake.set()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connects += 1
        loop = asyncio.get_running_loop()
        link = e1381.E1381Link(e1381.Role.HOST, self.profile)
        on_link: dict[int, tuple[bytes, ...]] = {}
        read_task: asyncio.Task[bytes] | None = None
        wake_task: asyncio.Task[bool] | None = None
        try:
            while True:
                for msg in self.outbox:
                    if msg not in on_link.values():
                        on_link[link.send_message(msg, loop.time())] = msg
                out = self.faults.outgoing(link.data_to_send())
                if out:
                    writer.write(out)
                    await writer.drain()
                if read_task is None:
                    read_task = asyncio.create_task(reader.read(READ_SIZE))
                if wake_task is None:
                    wake_task = asyncio.create_task(self._wake.wait())
                deadline = link.get_timer()
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({read_task, wake_task}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if wake_task in done:
                    self._wake.clear()
                    wake_task = None
                if read_task in done:
                    data = read_task.result()
                    read_task = None
                    if not data:
                        link.connection_lost()
                        self._events(link, on_link, loop.time())
                        return
                    link.receive_data(self.faults.incoming(data), loop.time())
                timer = link.get_timer()
                if timer is not None and loop.time() >= timer:
                    link.handle_timer(loop.time())
                self._events(link, on_link, loop.time())
        except (ConnectionError, OSError):
            pass
        finally:
            for task in (read_task, wake_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                        await task
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _events(self, link: e1381.E1381Link, on_link: dict[int, tuple[bytes, ...]], now: float) -> None:
        for event in link.events():
            if isinstance(event, e1381.MessageReceived):
                self._message(event.records)
                link.accept_message(now)
            elif isinstance(event, e1381.IncompleteMessage):
                self.incomplete.append(event.reason)
            elif isinstance(event, e1381.FrameRejected):
                if not event.by_peer:
                    self.stats.naks_sent += 1
            elif isinstance(event, e1381.FrameRetransmitted):
                self.stats.retransmissions += 1
            elif isinstance(event, e1381.TransferEnded) and event.reason == "timeout":
                self.stats.timeouts += 1
            elif isinstance(event, e1381.MessageSent):
                msg = on_link.pop(event.handle)
                self.outbox.remove(msg)
                self.stats.messages_sent += 1
            elif isinstance(event, e1381.SendAborted):
                self.stats.sends_aborted += 1
            elif isinstance(event, e1381.Contention):
                self.stats.contentions += 1

    def _message(self, records: tuple[bytes, ...]) -> None:
        self.messages.append(records)
        self.stats.messages += 1
        instrument = sample = ""
        for rec in parse_records(records):
            if rec.type == "H":
                instrument = rec.component(5, 3)
            elif rec.type == "O":
                sample = rec.component(3, 1) or rec.component(4, 1)
            elif rec.type == "R":
                self.results.append((instrument, sample, rec.component(3, 4), rec.component(4, 1)))
        self.received.set()


async def _main(args: argparse.Namespace) -> None:
    host = AstmHostSim(args.host, args.port, faults=ReceiverFaults(ignore_frames=args.ignore_frames,
                                                                   nak_frames=args.nak_frames,
                                                                   interrupt_frames=args.interrupt_frames))
    await host.start()
    print(f"simulated ASTM host listening on {args.host}:{host.port}", flush=True)
    try:
        while True:
            await host.received.wait()
            host.received.clear()
            print(f"{host.stats.messages} messages, {len(host.results)} results, "
                  f"{len(host.incomplete)} incomplete transmissions", flush=True)
    finally:
        await host.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="labbridge simulate host", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ignore-frames", type=int, default=0, help="leave the first N frames unanswered")
    parser.add_argument("--nak-frames", type=int, default=0, help="NAK the first N frames")
    parser.add_argument("--interrupt-frames", type=int, default=0, help="answer the first N frames with EOT")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
