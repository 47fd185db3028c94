"""A simulated ASTM analyzer: E1381-framed E1394 messages over TCP, the instrument side.

It runs labbridge's own E1381 core in the instrument role (sender: ENQ, one record per frame, waits for
each ACK, retransmits on NAK, EOT). It keeps every message until its last frame is ACKed, and sends it
again after a reconnect if it was not, as analyzers do; ``acked`` holds the results the host confirmed.

Fault injection: ``corrupt_every=N`` corrupts the checksum of every Nth frame (the host must NAK it and
accept the retransmission); ``disconnect_every=N`` drops the connection in the middle of every Nth
message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from labbridge.protocols import e1381
from labbridge.protocols.e1394 import encode_record

ResultIdentity = tuple[str, str, str, str]  # instrument, sample, instrument test code, value


@dataclass(frozen=True, slots=True)
class Analyte:
    code: str
    name: str
    units: str
    low: float
    high: float
    decimals: int = 1


CHEMISTRY_PANEL: tuple[Analyte, ...] = (
    Analyte("GLU", "Glucose", "mmol/L", 3.9, 6.1),
    Analyte("CREA", "Creatinine", "umol/L", 59, 104, 0),
    Analyte("UREA", "Urea", "mmol/L", 2.5, 7.8),
    Analyte("NA", "Sodium", "mmol/L", 136, 145, 0),
    Analyte("K", "Potassium", "mmol/L", 3.5, 5.1),
    Analyte("CL", "Chloride", "mmol/L", 98, 107, 0),
    Analyte("ALT", "ALT", "U/L", 7, 56, 0),
    Analyte("AST", "AST", "U/L", 10, 40, 0),
    Analyte("ALP", "Alkaline phosphatase", "U/L", 44, 147, 0),
    Analyte("GGT", "Gamma-GT", "U/L", 9, 48, 0),
    Analyte("TBIL", "Bilirubin total", "umol/L", 5, 21, 0),
    Analyte("ALB", "Albumin", "g/L", 35, 52, 0),
    Analyte("TP", "Total protein", "g/L", 64, 83, 0),
    Analyte("CA", "Calcium", "mmol/L", 2.15, 2.55, 2),
    Analyte("PHOS", "Phosphate", "mmol/L", 0.81, 1.45, 2),
    Analyte("MG", "Magnesium", "mmol/L", 0.66, 1.07, 2),
    Analyte("CHOL", "Cholesterol", "mmol/L", 3.0, 5.2),
    Analyte("TRIG", "Triglycerides", "mmol/L", 0.5, 1.7),
    Analyte("CRP", "C-reactive protein", "mg/L", 0, 5),
    Analyte("URIC", "Uric acid", "umol/L", 200, 430, 0),
)

FIRST_NAMES = ("JANE", "JOHN", "MARIE", "LUC", "SOPHIE", "PIERRE")
LAST_NAMES = ("DUPONT", "MARTIN", "LAMBERT", "DUBOIS", "PEETERS", "JANSSENS")


@dataclass
class SimMessage:
    records: tuple[bytes, ...]
    results: tuple[ResultIdentity, ...]


@dataclass
class AnalyzerStats:
    messages_acked: int = 0
    connects: int = 0
    naks_received: int = 0
    frames_corrupted: int = 0
    disconnects_injected: int = 0
    aborted_transfers: int = 0


def _astm_time(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S")


class MessageFactory:
    """Realistic chemistry messages with synthetic patients (names included, to test log privacy)."""

    def __init__(self, instrument: str, *, sample_prefix: str, panel_size: int = 20, seed: int | None = None,
                 model: str = "SimChem", measured_age: timedelta = timedelta(0)) -> None:
        self.instrument = instrument
        # Results measured this long ago: an analyzer resending what it kept during an outage.
        self.measured_age = measured_age
        self.prefix = sample_prefix
        self.panel = CHEMISTRY_PANEL[:max(1, min(panel_size, len(CHEMISTRY_PANEL)))]
        self.rng = random.Random(seed)
        self.model = model
        self.counter = 0

    def next(self, now: datetime | None = None) -> SimMessage:
        now = now or (datetime.now() - self.measured_age)
        self.counter += 1
        sample = f"{self.prefix}{self.counter:06d}"
        patient = f"PAT{self.rng.randrange(10**6):06d}"
        name = [self.rng.choice(LAST_NAMES), self.rng.choice(FIRST_NAMES)]
        ts = _astm_time(now)
        records: list[bytes] = [
            encode_record("H", ["", "", [self.model, "1.0", self.instrument], "", "", "", "", "", "", "P",
                                "LIS2-A2", ts]),
            encode_record("P", ["1", patient, "", "", name]),
            encode_record("O", ["1", sample, "", [["", "", "", a.code] for a in self.panel], "R", ts, ts,
                                "", "", "", "N"]),
        ]
        identities: list[ResultIdentity] = []
        for i, analyte in enumerate(self.panel, start=1):
            spread = analyte.high - analyte.low
            value = self.rng.uniform(analyte.low - spread * 0.3, analyte.high + spread * 0.3)
            text = f"{max(value, 0):.{analyte.decimals}f}"
            flag = "H" if value > analyte.high else "L" if value < analyte.low else "N"
            records.append(encode_record("R", [str(i), ["", "", "", analyte.code], text, analyte.units,
                                               f"{analyte.low} to {analyte.high}", flag, "", "F", "", "",
                                               ts, ts, self.instrument]))
            identities.append((self.instrument, sample, analyte.code, text))
        records.append(b"L|1|N")
        return SimMessage(tuple(records), tuple(identities))


Address = tuple[str, int] | Callable[[], tuple[str, int]]


@dataclass
class AstmAnalyzerSim:
    """Connects to a host (labbridge) and sends messages until told to stop."""

    name: str
    address: Address
    factory: MessageFactory
    interval: tuple[float, float] = (0.5, 2.0)  # seconds between messages
    max_messages: int | None = None
    corrupt_every: int = 0
    disconnect_every: int = 0
    reconnect_delay: float = 0.5
    seed: int | None = None
    acked: list[ResultIdentity] = field(default_factory=list)
    stats: AnalyzerStats = field(default_factory=AnalyzerStats)
    _pending: list[SimMessage] = field(default_factory=list)
    _generated: int = 0
    _frames_out: int = 0
    _messages_started: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def _resolve(self) -> tuple[str, int]:
        return self.address() if callable(self.address) else self.address

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def done(self) -> bool:
        return self.max_messages is not None and self._generated >= self.max_messages and not self._pending

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set (the message in flight is finished first) or max_messages are ACKed."""
        rng = random.Random(self.seed)
        next_at = 0.0
        while not self.done() and not (stop.is_set() and not self._in_flight()):
            try:
                host, port = self._resolve()
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                if stop.is_set():
                    return
                await asyncio.sleep(self.reconnect_delay)
                continue
            self.stats.connects += 1
            self.connected.set()
            try:
                next_at = await self._session(reader, writer, stop, rng, next_at)
            except (ConnectionError, OSError):
                pass  # the host went away: what was not ACKed stays pending and is sent again
            finally:
                self.connected.clear()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if not self.done() and not stop.is_set():
                await asyncio.sleep(self.reconnect_delay)

    def _in_flight(self) -> bool:
        return bool(self._pending)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event,
                       rng: random.Random, next_at: float) -> float:
        loop = asyncio.get_running_loop()
        link = e1381.E1381Link(e1381.Role.INSTRUMENT)
        handles: dict[int, SimMessage] = {}
        # Messages not ACKed on an earlier connection are sent again first.
        for msg in self._pending:
            handles[link.send_message(msg.records, loop.time())] = msg
        drop_after_frames: int | None = None
        while True:
            now = loop.time()
            may_generate = (not stop.is_set() and not self._pending and now >= next_at
                            and (self.max_messages is None or self._generated < self.max_messages))
            if may_generate:
                msg = self.factory.next()
                self._generated += 1
                self._pending.append(msg)
                handles[link.send_message(msg.records, now)] = msg
                self._messages_started += 1
                if self.disconnect_every and self._messages_started % self.disconnect_every == 0:
                    drop_after_frames = len(msg.records) // 2
                next_at = now + rng.uniform(*self.interval)
            if (stop.is_set() or self.done()) and not self._pending:
                return next_at
            out = link.data_to_send()
            if out:
                writer.write(self._maybe_corrupt(out))
                await writer.drain()
                if drop_after_frames is not None and out[:1] == b"\x02":
                    drop_after_frames -= 1
                    if drop_after_frames <= 0:
                        self.stats.disconnects_injected += 1
                        return next_at  # hang up in the middle of a message
            deadlines = [d for d in (link.get_timer(), None if self._pending else next_at) if d is not None]
            deadline = min(deadlines) if deadlines else None
            if stop.is_set() and not self._pending:
                deadline = None
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(4096)
            except TimeoutError:
                link.handle_timer(loop.time())
                data = None
            if data == b"":
                link.connection_lost()
                return next_at
            if data:
                link.receive_data(data, loop.time())
            for event in link.events():
                if isinstance(event, e1381.MessageSent):
                    done = handles.pop(event.handle)
                    self._pending.remove(done)
                    self.acked.extend(done.results)
                    self.stats.messages_acked += 1
                elif isinstance(event, e1381.FrameRejected) and event.by_peer:
                    self.stats.naks_received += 1
                elif isinstance(event, e1381.SendAborted):
                    self.stats.aborted_transfers += 1

    def _maybe_corrupt(self, out: bytes) -> bytes:
        if out[:1] != b"\x02":
            return out
        self._frames_out += 1
        if self.corrupt_every and self._frames_out % self.corrupt_every == 0:
            self.stats.frames_corrupted += 1
            # Flip the first checksum digit: the frame is otherwise intact, so only the checksum catches it.
            pos = len(out) - 4
            bad = b"0" if out[pos:pos + 1] != b"0" else b"1"
            return out[:pos] + bad + out[pos + 1:]
        return out


async def _main(args: argparse.Namespace) -> None:
    sim = AstmAnalyzerSim(args.name, (args.host, args.port),
                          MessageFactory(args.name, sample_prefix=args.name[:3].upper(), panel_size=args.tests),
                          interval=(args.interval, args.interval), max_messages=args.count,
                          corrupt_every=args.corrupt_every)
    stop = asyncio.Event()
    await sim.run(stop)
    print(f"{args.name}: {sim.stats.messages_acked} messages acknowledged, {len(sim.acked)} results, "
          f"{sim.stats.naks_received} NAKs", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="labbridge simulate analyzer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="sim-analyzer")
    parser.add_argument("--count", type=int, default=10, help="messages to send")
    parser.add_argument("--tests", type=int, default=20, help="results per message")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--corrupt-every", type=int, default=0, help="corrupt every Nth frame's checksum")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
