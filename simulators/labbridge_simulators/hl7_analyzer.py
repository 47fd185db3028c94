"""A simulated HL7 analyzer: results over MLLP, the instrument side, in three dialects.

* ``law``: IHE Laboratory Analytical Workflow LAB-29, OUL^R22 v2.5.1, MSH-18 ``UNICODE UTF-8``, MSH-15
  ``ER`` / MSH-16 ``AL`` (as a BA400 sends: no commit ACK unless an error, always an application ACK),
  SPM-2 the specimen, OBR-2 ``""``, OBX-3 ``code^name^99ROC``, OBX-19 the analysis time.
* ``mindray``: the v2.3.1 ORU^R01 dialect of Mindray BS/BC analyzers: MSH-18 ``UNICODE`` (bytes are
  UTF-8), MSH-16 ``0`` (Mindray reuses it for the result type: not a valid acknowledgement condition,
  so original mode), OBR-2 the barcode, OBR-3 the analyzer's sample number, OBX-3 the test code and
  OBX-4 its name, OBX-14 the time.
* ``genexpert``: the Cepheid GeneXpert result upload, ORU^R32 v2.5 (MSH-15 ``AL``, MSH-16 ``NE``: enhanced
  mode, commit ACK only): PID, ORC, OBR, TQ1, then the main OBX (OBX-3 ``&<test ID>&<test name>&<version>``,
  OBX-5 ``<qualitative>^``) followed by a complementary Ct row (not a result) and the SPM last (SPM-2 the
  specimen, SPM-11 ``P`` or ``Q``): one assay per message, as the ``cepheid-genexpert-hl7`` driver reads it.

Like a real analyzer it sends one message, waits for its acknowledgement on the same connection,
resends the same message (same MSH-10) after a timeout or a reconnect, and keeps what was accepted in
``acked``. It dials the host (``run``) or, for a ``tcp-client`` link, listens for it (``serve``).
Fault injection: ``resend_every=N`` sends every Nth message a second time after its ACK (a lost ACK, seen
from the host); ``junk_every=N`` puts noise before every Nth block.

Orders (IHE LAW, ``law`` dialect): with ``query_share`` > 0 that share of its samples is first queried
(LAB-27 ``QBP^Q11`` for the specimen, waiting for the ``RSP^K11``); every ``OML^O33`` the host sends
(query answers and pushes, LAB-28) is answered with ``ORL^O34`` and recorded in ``work`` (specimen ->
AWOS ID -> test code) or ``no_work`` (ORC-1 ``DC``). Like a LAW analyzer it refuses an AWOS ID it already
holds (``UA``, ERR 205) and tests listed in ``refuse_tests`` (``UA``, "not on board"). ``linger`` keeps the
connection open after the last result, to take pushed orders.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from labbridge.protocols import mllp
from labbridge.protocols.hl7 import escape
from labbridge.protocols.hl7_parse import Hl7Message, parse_message
from labbridge_simulators.astm_analyzer import CHEMISTRY_PANEL, FIRST_NAMES, LAST_NAMES, Address, ResultIdentity

Dialect = Literal["law", "mindray", "genexpert"]
# GeneXpert assays the simulator runs: test ID, assay name, the qualitative outcomes it may report.
GENEXPERT_ASSAYS = (("MTB", "Xpert MTB-RIF Ultra", ("NOT DETECTED", "DETECTED LOW", "DETECTED MEDIUM")),
                    ("SARS-COV2", "Xpert Xpress SARS-CoV-2", ("NEGATIVE", "POSITIVE")),
                    ("GBS TC", "Xpert GBS", ("NEGATIVE", "POSITIVE")))


@dataclass
class Hl7SimMessage:
    control_id: str
    payload: bytes
    results: tuple[ResultIdentity, ...]
    sample: str = ""
    # Enhanced mode with MSH-16 NE (GeneXpert: MSH-15 AL, MSH-16 NE): the commit ACK (CA) settles the message.
    commit_only: bool = False


@dataclass
class Hl7AnalyzerStats:
    messages_acked: int = 0
    connects: int = 0
    resends: int = 0
    rejected: int = 0  # AE/AR received
    ack_codes: list[str] = field(default_factory=list)
    queries: int = 0  # QBP^Q11 sent
    query_answers: int = 0  # RSP^K11 received
    omls: int = 0  # OML^O33 received
    orl_codes: list[str] = field(default_factory=list)  # ORC-1 of each AWOS answered (OK / UA)


class Hl7MessageFactory:
    """Realistic results messages with synthetic patients (accented names: the character set matters)."""

    def __init__(self, instrument: str, *, dialect: Dialect, sample_prefix: str, panel_size: int = 10,
                 seed: int | None = None, qc_every: int = 0) -> None:
        self.instrument = instrument
        # Every qc_every-th message is a QC run, marked the dialect's way: LAW SPM-11 "Q" (HL7 table 0369,
        # control specimen), Mindray MSH-16 "2" (result type QC). Their sample IDs are kept in qc_samples.
        self.qc_every = qc_every
        self.qc_samples: set[str] = set()
        self.dialect: Dialect = dialect
        self.prefix = sample_prefix
        self.panel = CHEMISTRY_PANEL[:max(1, min(panel_size, len(CHEMISTRY_PANEL)))]
        self.rng = random.Random(seed)
        self.counter = 0
        self.queries = 0

    def next(self, now: datetime | None = None) -> Hl7SimMessage:
        now = now or datetime.now().astimezone()
        self.counter += 1
        qc = self.qc_every > 0 and self.counter % self.qc_every == 0
        sample = f"{'QC-' if qc else ''}{self.prefix}{self.counter:06d}"
        if qc:
            self.qc_samples.add(sample)
        patient = f"PAT{self.rng.randrange(10**6):06d}"
        last, first = self.rng.choice(LAST_NAMES), self.rng.choice(FIRST_NAMES) + "-Zoé"
        ts = now.strftime("%Y%m%d%H%M%S")
        values = []
        for analyte in self.panel:
            spread = analyte.high - analyte.low
            value = self.rng.uniform(analyte.low - spread * 0.3, analyte.high + spread * 0.3)
            text = f"{max(value, 0):.{analyte.decimals}f}"
            flag = "H" if value > analyte.high else "L" if value < analyte.low else "N"
            values.append((analyte, text, flag))
        control_id = f"{self.instrument[:8].upper()}{self.counter}"
        if self.dialect == "genexpert":
            return self._genexpert(sample, qc, patient, now, control_id)
        if self.dialect == "law":
            segments = [
                f"MSH|^~\\&|SIMLAW|{escape(self.instrument)}|LABBRIDGE|LAB|{ts}{now.strftime('%z')}||OUL^R22^OUL_R22|"
                f"{control_id}|P|2.5.1|||ER|AL||UNICODE UTF-8|||LAB-29^IHE",
                f"PID|1||{patient}^^^HOSP^PI||{last}^{first}",
                f"SPM|1|{sample}&SIMLAW||SER^Serum^HL70487|||||||"
                + ("Q^Control specimen^HL70369" if qc else "P^Patient^HL70369"),
                f"SAC|||{sample}",
                "OBR|1|\"\"||PANEL^Chemistry panel^99ROC|||" + ts,
                "ORC|SC|||||||||||||||||" + ts,
            ]
            for i, (a, text, flag) in enumerate(values, start=1):
                segments.append(f"OBX|{i}|NM|{a.code}^{escape(a.name)}^99ROC||{text}|{a.units}^{a.units}^UCUM|"
                                f"{a.low}-{a.high}|{flag}|||F|||||||{escape(self.instrument)}|{ts}")
        else:
            segments = [
                f"MSH|^~\\&|Mindray|{escape(self.instrument)}|||{ts}||ORU^R01|{control_id}|P|2.3.1||||"
                f"{2 if qc else 0}||UNICODE|||",
                f"PID|1||{patient}^^^^MR||{last}^{first}|||U",
                f"OBR|1|{sample}|{self.counter}|^|N||{ts}||||||||Serum|||||||||||||||||||||||||||||||||",
            ]
            for i, (a, text, flag) in enumerate(values, start=1):
                segments.append(f"OBX|{i}|NM|{a.code}|{escape(a.name)}|{text}|{a.units}|{a.low}-{a.high}|{flag}|||F|"
                                f"|{text}|{ts}||Admin|0|")
        payload = ("\r".join(segments) + "\r").encode("utf-8")
        identities = tuple((self.instrument, sample, a.code, text) for a, text, _ in values)
        return Hl7SimMessage(control_id, payload, identities, sample)

    def _genexpert(self, sample: str, qc: bool, patient: str, now: datetime, control_id: str) -> Hl7SimMessage:
        code, assay, outcomes = GENEXPERT_ASSAYS[(self.counter - 1) % len(GENEXPERT_ASSAYS)]
        outcome = outcomes[-1] if qc else self.rng.choice(outcomes)
        ts = now.strftime("%Y%m%d%H%M%S")
        segments = [
            f"MSH|^~\\&|{escape(self.instrument)}^GeneXpert^6.5||LIS||{ts}||ORU^R32^ORU_R30|{control_id}|P|2.5|||AL|NE",
            "PID|1||||" if qc else f"PID|1||{patient}||",
            f"ORC|RE|1|||||||{ts}",
            f"OBR|1|||{code}|||||||||||||||||||||F",
            f"TQ1|||||||{ts}|{ts}|R",
            f"OBX|1|ST|&{code}&{escape(assay)}&4||{outcome}^||||||F|||||^Operator One||~~~~804412~",
            f"OBX|2|ST||Probe A&Ct||^{self.rng.uniform(15, 38):.1f}||||||F",
            f"SPM|1|{escape(sample)}^||ORH|||||||{'Q' if qc else 'P'}",
        ]
        payload = ("\r".join(segments) + "\r").encode("utf-8")
        return Hl7SimMessage(control_id, payload, ((self.instrument, sample, code, outcome),), sample, commit_only=True)

    def query(self, sample: str, now: datetime | None = None) -> Hl7SimMessage:
        """A LAB-27 QBP^Q11 for one specimen."""
        now = now or datetime.now().astimezone()
        self.queries += 1
        control_id = f"Q{self.instrument[:8].upper()}{self.queries}"
        segments = [f"MSH|^~\\&|SIMLAW|{escape(self.instrument)}|LABBRIDGE|LAB|{now.strftime('%Y%m%d%H%M%S%z')}||"
                    f"QBP^Q11^QBP_Q11|{control_id}|P|2.5.1|||||UNICODE UTF-8|||LAB-27^IHE",
                    f"QPD|WOS^Work Order Step^IHE_LABTF|QT{self.queries}|{escape(sample)}",
                    "RCP|I||R"]
        return Hl7SimMessage(control_id, ("\r".join(segments) + "\r").encode("utf-8"), (), sample)


@dataclass
class Hl7AnalyzerSim:
    name: str
    address: Address
    factory: Hl7MessageFactory
    interval: tuple[float, float] = (0.5, 2.0)
    max_messages: int | None = None
    ack_timeout: float = 10.0
    reconnect_delay: float = 0.5
    resend_every: int = 0
    junk_every: int = 0
    seed: int | None = None
    query_share: float = 0.0
    refuse_tests: frozenset[str] = frozenset()
    linger: bool = False
    acked: list[ResultIdentity] = field(default_factory=list)
    work: dict[str, dict[str, str]] = field(default_factory=dict)  # specimen -> AWOS ID -> test code
    no_work: list[str] = field(default_factory=list)  # specimens answered with ORC-1 DC
    queried: list[str] = field(default_factory=list)
    stats: Hl7AnalyzerStats = field(default_factory=Hl7AnalyzerStats)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: Hl7SimMessage | None = None
    _generated: int = 0

    def done(self) -> bool:
        return self.max_messages is not None and self._generated >= self.max_messages and self._pending is None

    def _resolve(self) -> tuple[str, int]:
        return self.address() if callable(self.address) else self.address

    async def run(self, stop: asyncio.Event) -> None:
        """Dial the host and send until ``stop`` (the message in flight is finished first) or done."""
        rng = random.Random(self.seed)
        while (self.linger or not self.done()) and not (stop.is_set() and self._pending is None):
            try:
                host, port = self._resolve()
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                if stop.is_set():
                    return
                await asyncio.sleep(self.reconnect_delay)
                continue
            try:
                await self._session(reader, writer, stop, rng)
            except (ConnectionError, OSError, TimeoutError):
                pass  # what was not acknowledged stays pending and is sent again
            finally:
                self.connected.clear()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if (self.linger or not self.done()) and not stop.is_set():
                await asyncio.sleep(self.reconnect_delay)

    async def serve(self, stop: asyncio.Event, host: str = "127.0.0.1", port: int = 0,
                    bound: asyncio.Future[tuple[str, int]] | None = None) -> None:
        """Listen and let the host dial in (a ``tcp-client`` link); one connection at a time."""
        rng = random.Random(self.seed)
        lock = asyncio.Lock()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async with lock:
                try:
                    await self._session(reader, writer, stop, rng)
                except (ConnectionError, OSError, TimeoutError):
                    pass
                finally:
                    self.connected.clear()
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()

        server = await asyncio.start_server(on_client, host, port)
        if bound is not None:
            sock = server.sockets[0].getsockname()
            bound.set_result((str(sock[0]), int(sock[1])))
        async with server:
            while not (stop.is_set() or self.done()):  # noqa: ASYNC110 (the sessions do the work)
                await asyncio.sleep(0.05)

    async def _send_and_wait(self, msg: Hl7SimMessage, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             decoder: mllp.MllpDecoder, junk: bool) -> str:
        """Send one message; return the MSA-1 that settles it (AA, AE or AR; CA for a commit-only message)."""
        writer.write((b"noise\r\n" if junk else b"") + mllp.frame(msg.payload))
        await writer.drain()
        async with asyncio.timeout(self.ack_timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("host closed the connection")
                settled = ""
                for event in decoder.receive_data(data):  # all of them: an OML^O33 may follow the ACK
                    if not isinstance(event, mllp.MllpMessage):
                        continue
                    ack = parse_message(event.payload)
                    if await self._incoming(ack, writer):
                        continue
                    msa = ack.first("MSA")
                    if settled or msa is None or ack.value(msa, 2) != msg.control_id:
                        continue
                    code = ack.value(msa, 1).upper()
                    if ack.message_type == "RSP^K11":
                        self.stats.query_answers += 1
                    self.stats.ack_codes.append(code)
                    if code in ("AA", "AE", "AR", "CE", "CR") or (code == "CA" and msg.commit_only):
                        settled = code
                if settled:
                    return settled

    async def _incoming(self, message: Hl7Message, writer: asyncio.StreamWriter) -> bool:
        """A message from the host that is not an acknowledgement (an OML^O33): answer it. True if it was one."""
        if message.message_type != "OML^O33":
            return False
        self.stats.omls += 1
        specimen = ""
        orcs: list[tuple[str, str, str]] = []  # AWOS ID, test code, ORC-1 of ours
        awos = ""
        for seg in message.segments:
            if seg.name == "SPM":
                specimen = message.value(seg, 2, 1, subcomponent=1)
            elif seg.name == "ORC":
                awos = message.value(seg, 2, 1)
                if message.value(seg, 1).upper() == "DC":
                    self.no_work.append(specimen)
            elif seg.name == "OBR" and awos:
                orcs.append((awos, message.value(seg, 4, 1), specimen))
        lines = [f"MSH|^~\\&|SIMLAW|{escape(self.name)}|LABBRIDGE|LAB|{datetime.now().strftime('%Y%m%d%H%M%S')}||"
                 f"ORL^O34^ORL_O34|A{message.control_id}|P|2.5.1|||||UNICODE UTF-8|||LAB-28^IHE"]
        answers: list[str] = []
        errors: list[str] = []
        held = {a for work in self.work.values() for a in work}
        for awos_id, test, sample in orcs:
            if awos_id in held:
                answers.append(f"ORC|UA|{escape(awos_id)}")
                errors.append(f"ERR|||205^Duplicate key identifier^HL70357|E||||AWOS ID {escape(awos_id)} "
                              "already received")
            elif test in self.refuse_tests:
                answers.append(f"ORC|UA|{escape(awos_id)}")
                errors.append(f"ERR|||207^Application internal error^HL70357|E||||test {escape(test)} "
                              "not on board")
            else:
                answers.append(f"ORC|OK|{escape(awos_id)}")
                self.work.setdefault(sample, {})[awos_id] = test
        self.stats.orl_codes.extend(a.split("|")[1] for a in answers)
        msa = "AE" if errors and all(a.startswith("ORC|UA") for a in answers) else "AA"
        lines += [f"MSA|{msa}|{message.control_id}", *errors]
        if orcs:
            lines.append(f"SPM|1|{escape(orcs[0][2])}")
        lines.extend(answers)
        writer.write(mllp.frame(("\r".join(lines) + "\r").encode("utf-8")))
        await writer.drain()
        return True

    async def _listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: mllp.MllpDecoder,
                      stop: asyncio.Event, seconds: float | None) -> None:
        """Take what the host sends (OML^O33) for ``seconds`` (None: until ``stop``)."""
        loop = asyncio.get_running_loop()
        until = None if seconds is None else loop.time() + seconds
        while not stop.is_set() and (until is None or loop.time() < until):
            wait = 0.1 if until is None else min(0.1, max(0.0, until - loop.time()))
            try:
                async with asyncio.timeout(wait):
                    data = await reader.read(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionError("host closed the connection")
            for event in decoder.receive_data(data):
                if isinstance(event, mllp.MllpMessage):
                    await self._incoming(parse_message(event.payload), writer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event,
                       rng: random.Random) -> None:
        self.stats.connects += 1
        self.connected.set()
        decoder = mllp.MllpDecoder()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if self._pending is None:
                if stop.is_set():
                    return
                if self.done() or (self.max_messages is not None and self._generated >= self.max_messages):
                    if self.linger:
                        await self._listen(reader, writer, decoder, stop, None)
                    return
                delay = next_at - loop.time()
                if delay > 0:
                    await self._listen(reader, writer, decoder, stop, delay)
                    continue
                self._pending = self.factory.next()
                self._generated += 1
                next_at = loop.time() + rng.uniform(*self.interval)
                if self.query_share and rng.random() < self.query_share:
                    query = self.factory.query(self._pending.sample)
                    self.stats.queries += 1
                    self.queried.append(query.sample)
                    with contextlib.suppress(TimeoutError):
                        await self._send_and_wait(query, reader, writer, decoder, False)
            msg = self._pending
            junk = bool(self.junk_every) and self._generated % self.junk_every == 0
            try:
                code = await self._send_and_wait(msg, reader, writer, decoder, junk)
            except TimeoutError:
                self.stats.resends += 1
                continue  # no answer: the same message again, same MSH-10
            if code in ("AA", "CA"):
                self.acked.extend(msg.results)
                self.stats.messages_acked += 1
                if self.resend_every and self._generated % self.resend_every == 0:
                    self.stats.resends += 1
                    await self._send_and_wait(msg, reader, writer, decoder, False)
                self._pending = None
            elif code in ("AE", "CE"):
                self.stats.rejected += 1
                self._pending = None  # "fix it, do not resend": an operator would look at it
            else:
                self.stats.rejected += 1
                await asyncio.sleep(self.reconnect_delay)  # AR / CR: may be sent again later


async def _main(args: argparse.Namespace) -> None:
    factory = Hl7MessageFactory(args.name, dialect=args.dialect, sample_prefix=args.name[:3].upper(),
                                panel_size=args.tests)
    sim = Hl7AnalyzerSim(args.name, (args.host, args.port), factory, interval=(args.interval, args.interval),
                         max_messages=args.count, query_share=args.query_share if args.dialect == "law" else 0.0)
    await sim.run(asyncio.Event())
    print(f"{args.name}: {sim.stats.messages_acked} messages acknowledged, {len(sim.acked)} results, "
          f"{sim.stats.rejected} rejected; {sim.stats.queries} queries, {sim.stats.omls} OML^O33 received "
          f"({len(sim.no_work)} without work)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="labbridge simulate hl7-analyzer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="sim-hl7")
    parser.add_argument("--dialect", choices=["law", "mindray", "genexpert"], default="law")
    parser.add_argument("--count", type=int, default=10, help="messages to send")
    parser.add_argument("--tests", type=int, default=10, help="results per message")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--query-share", type=float, default=0.0,
                        help="share of samples queried first (LAB-27 QBP^Q11, law dialect)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
