"""A simulated ASTM analyzer: E1381-framed E1394 messages over TCP, the instrument side.

It runs labbridge's own E1381 core in the instrument role (sender: ENQ, one record per frame, waits for
each ACK, retransmits on NAK, EOT). It keeps every message until its last frame is ACKed, and sends it
again after a reconnect if it was not, as analyzers do; ``acked`` holds the results the host confirmed.

Fault injection: ``corrupt_every=N`` corrupts the checksum of every Nth frame (the host must NAK it and
accept the retransmission); ``disconnect_every=N`` drops the connection in the middle of every Nth
message; ``write_chunk``/``write_delay`` split every write into small pieces sent slowly.
``per_transmission=True`` connects only when it has a message, and hangs up after its EOT (many analyzers
do); ``garble=True`` sends what a receiver at the wrong baud rate or parity reads (every byte turned into
one with the high bit set: never a control character, so nothing ever frames); ``unframed=True`` sends its
records bare (no ENQ, STX, checksum or EOT: the analyzer's ASTM low-level protocol switched off) without
waiting for anything, every ``interval``.

Dialects: ``profile`` is the E1381 ``LinkProfile`` the analyzer speaks (no frame numbers, no checksums,
LF/CRLF terminators, whole message in one frame). Scripted input: :class:`ScriptedMessages` replays the
messages of a file of records (one record a line, a blank line or a new H between messages).

Host side: with ``query_share`` > 0 that share of samples is first asked about with a host query
(``Q|1|^sample||ALL||||||||O``, as VITROS sends it); the analyzer waits for the answer (at most
``query_timeout`` s) and then runs the tests it was given (those of its panel), or its whole panel when
the host has no order (O-26 ``Y``/``Z``). It also accepts orders the host pushes unasked (O-26 ``O``).
Every order line it acknowledged is in ``orders_received``. ``drop_before_ack=N`` hangs up instead of
acknowledging the last frame of the host's first N messages (the host must not count them as
delivered). ``linger=True`` keeps the connection open when there is nothing left to send.

Faults against the host's sending (labbridge's answers and pushed orders): ``faults`` (a
:class:`~labbridge_simulators.faults.ReceiverFaults`) leaves the host's frames unanswered (lost ACKs),
NAKs them (NAK storm) or answers them with EOT (receiver interrupt); ``contend=N`` answers the host's next N
ENQs with an ENQ of its own and a result message (contention: the analyzer has priority, the host must
yield and deliver after its contention wait). Faults of its own sending: ``stall_every=N`` goes silent for
``stall_for`` seconds in the middle of every Nth message (the host's receive timer must end the transfer
as incomplete; the analyzer's own reply timer then ends it here and the message is sent again whole).
Timers are those of ``profile`` (the standard's unless a test shortens them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from labbridge.protocols import e1381
from labbridge.protocols.e1394 import encode_record, parse_records
from labbridge_simulators.faults import ReceiverFaults

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
    query_for: str | None = None  # the sample a host query asks about


@dataclass(frozen=True, slots=True)
class ReceivedOrder:
    """One O record of a message from the host, as the analyzer acknowledged it."""

    sample_id: str
    test_codes: tuple[str, ...]  # the instrument's codes (O-5, 4th components)
    report_type: str  # O-26: O (pushed), Q (query answer), Y (no order for the test), Z (unknown sample)
    priority: str  # O-6
    patient_id: str


@dataclass
class AnalyzerStats:
    messages_acked: int = 0
    connects: int = 0
    naks_received: int = 0
    frames_corrupted: int = 0
    disconnects_injected: int = 0
    aborted_transfers: int = 0
    queries_sent: int = 0
    query_answers: int = 0
    query_timeouts: int = 0
    host_messages: int = 0
    host_messages_dropped: int = 0
    contentions: int = 0
    contentions_forced: int = 0  # ENQs of the host answered with ENQ (contend)
    stalls_injected: int = 0
    hang_ups: int = 0  # per_transmission: connections closed after a transmission
    unframed_messages: int = 0  # unframed: messages written bare


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

    def sample_id(self, number: int) -> str:
        """The ID of the ``number``-th sample this factory makes (1-based): lets a test or demo order it."""
        return f"{self.prefix}{number:06d}"

    def new_sample(self) -> str:
        self.counter += 1
        return self.sample_id(self.counter)

    def query(self, sample: str, now: datetime | None = None) -> SimMessage:
        """A host query for one sample, all tests (Q-13 ``O``: orders and demographics)."""
        ts = _astm_time(now or datetime.now())
        records = (
            encode_record("H", ["", "", [self.model, "1.0", self.instrument], "", "", "", "", "", "", "P",
                                "LIS2-A2", ts]),
            encode_record("Q", ["1", ["", sample], "", "ALL", "", "", "", "", "", "", "", "O"]),
            b"L|1|N",
        )
        return SimMessage(records, (), query_for=sample)

    def next(self, now: datetime | None = None) -> SimMessage:
        return self.results_for(self.new_sample(), now=now)

    def results_for(self, sample: str, codes: tuple[str, ...] = (), now: datetime | None = None) -> SimMessage:
        """Results for ``sample``: the tests in ``codes`` that are on the panel, else the whole panel."""
        now = now or (datetime.now() - self.measured_age)
        panel = tuple(a for a in self.panel if a.code in codes) or self.panel
        patient = f"PAT{self.rng.randrange(10**6):06d}"
        name = [self.rng.choice(LAST_NAMES), self.rng.choice(FIRST_NAMES)]
        ts = _astm_time(now)
        records: list[bytes] = [
            encode_record("H", ["", "", [self.model, "1.0", self.instrument], "", "", "", "", "", "", "P",
                                "LIS2-A2", ts]),
            encode_record("P", ["1", patient, "", "", name]),
            encode_record("O", ["1", sample, "", [["", "", "", a.code] for a in panel], "R", ts, ts,
                                "", "", "", "N"]),
        ]
        identities: list[ResultIdentity] = []
        for i, analyte in enumerate(panel, start=1):
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


class MessageSource(Protocol):
    """What the simulator sends: this module's chemistry factory or a family profile (profiles.py)."""

    def next(self, now: datetime | None = None) -> SimMessage: ...


@runtime_checkable
class QueryingSource(Protocol):
    """A source that can ask the host about a sample first (MessageFactory; profiles' FamilyFactory)."""

    def next(self, now: datetime | None = None) -> SimMessage: ...

    def new_sample(self) -> str: ...

    def query(self, sample: str, now: datetime | None = None) -> SimMessage: ...

    def results_for(self, sample: str, codes: tuple[str, ...] = (), now: datetime | None = None) -> SimMessage: ...


class ScriptedMessages:
    """Messages read from a file of E1394 records (one a line); used in place of a MessageFactory.

    Results known to the simulator are read from the R records with the generic driver's positions, so that
    tests can check what reached the LIS.
    """

    def __init__(self, instrument: str, text: str, *, repeat: bool = False) -> None:
        self.instrument = instrument
        self.repeat = repeat
        self.messages: list[SimMessage] = []
        current: list[bytes] = []
        for line in [*text.splitlines(), ""]:
            record = line.strip("\r\n").encode("latin-1")
            if (not record or record[:1] in (b"H", b"h")) and current:
                self.messages.append(self._message(current))
                current = []
            if record:
                current.append(record)
        self.counter = 0

    def _message(self, records: list[bytes]) -> SimMessage:
        from labbridge.protocols.e1394 import parse_records

        results: list[ResultIdentity] = []
        sample = ""
        for rec in parse_records(records):
            if rec.type == "O":
                sample = rec.component(3, 1) or rec.component(4, 1)
            elif rec.type == "R":
                results.append((self.instrument, sample, rec.component(3, 4), rec.component(4, 1)))
        return SimMessage(tuple(records), tuple(results))

    def next(self, now: datetime | None = None) -> SimMessage:
        if not self.messages or (self.counter >= len(self.messages) and not self.repeat):
            raise IndexError("the message file has no more messages")
        msg = self.messages[self.counter % len(self.messages)]
        self.counter += 1
        return msg


Address = tuple[str, int] | Callable[[], tuple[str, int]]
Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass
class AstmAnalyzerSim:
    """Connects to a host (labbridge) and sends messages until told to stop."""

    name: str
    address: Address
    factory: MessageSource
    interval: tuple[float, float] = (0.5, 2.0)  # seconds between messages
    max_messages: int | None = None
    corrupt_every: int = 0
    disconnect_every: int = 0
    reconnect_delay: float = 0.5
    seed: int | None = None
    query_share: float = 0.0
    query_timeout: float = 10.0
    drop_before_ack: int = 0
    linger: bool = False
    acked: list[ResultIdentity] = field(default_factory=list)
    orders_received: list[ReceivedOrder] = field(default_factory=list)
    stats: AnalyzerStats = field(default_factory=AnalyzerStats)
    _pending: list[SimMessage] = field(default_factory=list)
    _generated: int = 0
    _frames_out: int = 0
    _messages_started: int = 0
    _awaiting: str | None = None  # the sample whose query answer we wait for
    _awaiting_until: float | None = None
    _answer: tuple[str, ...] = ()
    _answered: bool = False
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    host_message_dropped: asyncio.Event = field(default_factory=asyncio.Event)
    # Instead of dialing ``address`` over TCP: open any byte stream (a pseudo-terminal for serial).
    opener: Opener | None = None
    profile: e1381.LinkProfile | None = None  # the dialect this analyzer speaks
    write_chunk: int = 0  # split every write into pieces of this many bytes...
    write_delay: float = 0.0  # ...with this pause between pieces (slow writes)
    faults: ReceiverFaults = field(default_factory=ReceiverFaults)  # against the host's frames
    contend: int = 0  # answer the host's next N ENQs with our own ENQ (and a result message)
    stall_every: int = 0  # go silent in the middle of every Nth message...
    stall_for: float = 0.0  # ...for this long
    per_transmission: bool = False  # connect for each message, hang up after its EOT
    garble: bool = False  # every byte sent arrives as noise (wrong baud rate or parity)
    unframed: bool = False  # records sent bare, no E1381 framing

    def _resolve(self) -> tuple[str, int]:
        return self.address() if callable(self.address) else self.address

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def done(self) -> bool:
        return (self.max_messages is not None and self._generated >= self.max_messages and not self._pending
                and self._awaiting is None)

    def _finished(self, stop: asyncio.Event) -> bool:
        return stop.is_set() or (self.done() and not self.linger)

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set (the message in flight is finished first) or max_messages are ACKed."""
        rng = random.Random(self.seed)
        next_at = 0.0
        while not (self.done() and not self.linger) and not (stop.is_set() and not self._in_flight()):
            try:
                if self.opener is not None:
                    reader, writer = await self.opener()
                else:
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
                if self.unframed:
                    await self._send_unframed(writer, stop, rng)
                    continue
                next_at = await self._session(reader, writer, stop, rng, next_at)
            except (ConnectionError, OSError):
                pass  # the host went away: what was not ACKed stays pending and is sent again
            finally:
                self.connected.clear()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if not self._finished(stop):
                wait = self.reconnect_delay
                if self.per_transmission and not self._pending:  # the next connection is for the next message
                    wait = max(0.0, next_at - asyncio.get_running_loop().time())
                await asyncio.sleep(wait)

    async def _send_unframed(self, writer: asyncio.StreamWriter, stop: asyncio.Event, rng: random.Random) -> None:
        while not stop.is_set() and (self.max_messages is None or self._generated < self.max_messages):
            msg = self.factory.next()
            self._generated += 1
            self.stats.unframed_messages += 1
            writer.write(b"".join(record + b"\r" for record in msg.records))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(*self.interval))

    def _in_flight(self) -> bool:
        return bool(self._pending)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event,
                       rng: random.Random, next_at: float) -> float:
        loop = asyncio.get_running_loop()
        link = e1381.E1381Link(e1381.Role.INSTRUMENT, self.profile)
        handles: dict[int, SimMessage] = {}
        # Messages not ACKed on an earlier connection are sent again first.
        for msg in self._pending:
            handles[link.send_message(msg.records, loop.time())] = msg
        drop_after_frames: int | None = None
        stall_after_frames: int | None = None
        transmitted = False  # a message of ours went through on this connection (per_transmission)
        while True:
            now = loop.time()
            if self._awaiting is not None and (self._answered or stop.is_set() or (
                    self._awaiting_until is not None and now >= self._awaiting_until)):
                if not self._answered:
                    self.stats.query_timeouts += 1
                sample, codes = self._awaiting, self._answer
                self._awaiting, self._awaiting_until, self._answer, self._answered = None, None, (), False
                if not stop.is_set():
                    assert isinstance(self.factory, QueryingSource)  # only these send host queries
                    msg = self.factory.results_for(sample, codes)
                    self._generated += 1
                    self._pending.append(msg)
                    handles[link.send_message(msg.records, now)] = msg
            may_generate = (not stop.is_set() and not self._pending and now >= next_at and self._awaiting is None
                            and (self.max_messages is None or self._generated < self.max_messages)
                            and not (self.per_transmission and transmitted))
            if may_generate:
                factory = self.factory
                if not isinstance(factory, QueryingSource) or not self.query_share:  # results only
                    msg = factory.next()
                    self._generated += 1
                elif rng.random() < self.query_share:
                    sample = factory.new_sample()
                    msg = factory.query(sample)
                    self._awaiting = sample
                    self.stats.queries_sent += 1
                else:
                    msg = factory.results_for(factory.new_sample())
                    self._generated += 1
                self._pending.append(msg)
                handles[link.send_message(msg.records, now)] = msg
                self._messages_started += 1
                if self.disconnect_every and self._messages_started % self.disconnect_every == 0:
                    drop_after_frames = len(msg.records) // 2
                if self.stall_every and self._messages_started % self.stall_every == 0:
                    stall_after_frames = max(1, len(msg.records) // 2)
                next_at = now + rng.uniform(*self.interval)
            if self._finished(stop) and not self._pending and self._awaiting is None:
                if self.per_transmission and transmitted:  # its EOT, then hang up
                    writer.write(link.data_to_send())
                    await writer.drain()
                    self.stats.hang_ups += 1
                return next_at
            out = self.faults.outgoing(link.data_to_send())
            if out:
                out = self._maybe_corrupt(out)
                if self.garble:
                    out = bytes(0x80 | (b * 7 + 13) & 0x7F for b in out)
                step = self.write_chunk or len(out)
                for i in range(0, len(out), step):
                    if writer.is_closing():  # the peer went away between two pieces (uvloop raises on a write)
                        raise ConnectionResetError("connection closed by the receiver")
                    writer.write(out[i:i + step])
                    await writer.drain()
                    if self.write_delay and i + step < len(out):
                        await asyncio.sleep(self.write_delay)
                if drop_after_frames is not None and out[:1] == b"\x02":
                    drop_after_frames -= 1
                    if drop_after_frames <= 0:
                        self.stats.disconnects_injected += 1
                        return next_at  # hang up in the middle of a message
                if (self.per_transmission and transmitted and not self._pending and self._awaiting is None
                        and link.state is e1381.State.NEUTRAL):
                    self.stats.hang_ups += 1
                    return next_at  # our EOT is written: hang up until the next message
                if stall_after_frames is not None and out[:1] == b"\x02":
                    stall_after_frames -= 1
                    if stall_after_frames <= 0:
                        stall_after_frames = None
                        self.stats.stalls_injected += 1
                        await asyncio.sleep(self.stall_for)  # silent: no frame, no reading
            deadlines = [d for d in (link.get_timer(), None if self._pending else next_at, self._awaiting_until,
                                     now + 0.2 if self.linger else None) if d is not None]
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
                data = self.faults.incoming(data)
                if self.contend and e1381.ENQ in data and link.state is e1381.State.NEUTRAL:
                    # Contention: our ENQ goes out as the host's arrives; the core sees the host's ENQ while
                    # waiting for a reply to its own and keeps priority (R-A8).
                    self.contend -= 1
                    self.stats.contentions_forced += 1
                    msg = self._contention_message()
                    self._pending.append(msg)
                    handles[link.send_message(msg.records, loop.time())] = msg
                link.receive_data(data, loop.time())
            for event in link.events():
                if isinstance(event, e1381.MessageReceived):
                    if self.stats.host_messages_dropped < self.drop_before_ack:
                        self.stats.host_messages_dropped += 1
                        self.host_message_dropped.set()
                        link.connection_lost()
                        return next_at  # hang up with the host's last frame unacknowledged
                    self._host_message(event.records)
                    link.accept_message(loop.time())
                elif isinstance(event, e1381.MessageSent):
                    done = handles.pop(event.handle)
                    self._pending.remove(done)
                    transmitted = True
                    self.acked.extend(done.results)
                    self.stats.messages_acked += 1
                    if done.query_for is not None and done.query_for == self._awaiting:
                        self._awaiting_until = loop.time() + self.query_timeout
                elif isinstance(event, e1381.Contention):
                    self.stats.contentions += 1
                elif isinstance(event, e1381.FrameRejected) and event.by_peer:
                    self.stats.naks_received += 1
                elif isinstance(event, e1381.SendAborted):
                    self.stats.aborted_transfers += 1

    def _contention_message(self) -> SimMessage:
        """A result message to send when we take the line from the host (not counted in max_messages)."""
        factory = self.factory
        if isinstance(factory, MessageFactory):
            return factory.results_for(factory.new_sample())
        return factory.next()

    def _host_message(self, records: tuple[bytes, ...]) -> None:
        """Book the O records of a message from the host; an answer to our query unblocks that sample."""
        self.stats.host_messages += 1
        patient = ""
        answered = False
        parsed = parse_records(records)
        for rec in parsed:
            if rec.type == "P":
                patient = rec.component(3, 1)
            elif rec.type == "O":
                codes = tuple(c for r in range(len(rec.repeats(5))) if (c := rec.component(5, 4, repeat=r)))
                order = ReceivedOrder(rec.field(3), codes, rec.field(26).upper(), rec.field(6), patient)
                self.orders_received.append(order)
                if order.sample_id == self._awaiting and order.report_type in ("Q", "Y", "Z"):
                    answered = True
                    if order.report_type == "Q":
                        self._answer = codes
        if self._awaiting is not None and (answered or any(r.type == "L" and r.field(3).upper() == "I"
                                                           for r in parsed)):
            self._answered = True
            self.stats.query_answers += 1

    def _maybe_corrupt(self, out: bytes) -> bytes:
        if out[:1] != b"\x02":
            return out
        self._frames_out += 1
        if self.corrupt_every and self._frames_out % self.corrupt_every == 0 and \
                (self.profile is None or self.profile.checksums):
            self.stats.frames_corrupted += 1
            # Flip the first checksum digit: the frame is otherwise intact, so only the checksum catches it.
            pos = len(out) - 4
            bad = b"0" if out[pos:pos + 1] != b"0" else b"1"
            return out[:pos] + bad + out[pos + 1:]
        return out


async def _main(args: argparse.Namespace) -> None:
    factory: MessageSource
    if args.messages_file:
        text = await asyncio.to_thread(Path(args.messages_file).read_text, encoding="latin-1")
        factory = ScriptedMessages(args.name, text)
        count = len(factory.messages)
    else:
        factory = MessageFactory(args.name, sample_prefix=args.name[:3].upper(), panel_size=args.tests)
        count = args.count
    profile = e1381.LinkProfile(frame_numbers=not args.no_frame_numbers, checksums=not args.no_checksums,
                                record_terminator={"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}[args.terminator],
                                one_frame_per_message=args.one_frame)
    sim = AstmAnalyzerSim(args.name, (args.host, args.port), factory,
                          interval=(args.interval, args.interval), max_messages=count,
                          corrupt_every=args.corrupt_every, profile=profile,
                          query_share=args.query_share)
    stop = asyncio.Event()
    await sim.run(stop)
    print(f"{args.name}: {sim.stats.messages_acked} messages acknowledged, {len(sim.acked)} results, "
          f"{sim.stats.naks_received} NAKs, {sim.stats.queries_sent} host queries, "
          f"{len(sim.orders_received)} order lines received", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="labbridge simulate analyzer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="sim-analyzer")
    parser.add_argument("--count", type=int, default=10, help="messages to send")
    parser.add_argument("--tests", type=int, default=20, help="results per message")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--corrupt-every", type=int, default=0, help="corrupt every Nth frame's checksum")
    parser.add_argument("--query-share", type=float, default=0.0,
                        help="share of samples asked about with a host query first (0 to 1)")
    parser.add_argument("--messages-file", help="send the messages of this file of records instead")
    parser.add_argument("--no-frame-numbers", action="store_true", help="dialect: frames without FN")
    parser.add_argument("--no-checksums", action="store_true", help="dialect: frames without checksum")
    parser.add_argument("--terminator", choices=["cr", "lf", "crlf"], default="cr", help="record terminator")
    parser.add_argument("--one-frame", action="store_true", help="dialect: whole message in one frame")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
