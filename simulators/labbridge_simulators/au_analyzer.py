"""A simulated Beckman Coulter AU chemistry analyzer (AU480/AU680/AU5800): AU online result texts over TCP or
a pseudo-terminal (RS-232), the instrument side of class B transmission.

It sends what the ``beckman-au`` driver reads (its docstring gives the layout and the sources): ``DB``, then
one text per sample (``D `` patient, ``DQ`` QC every ``qc_every`` texts, ``DH`` rerun every ``rerun_every``),
each text in blocks of at most ``tests_per_block`` tests (``ETB`` between blocks, block numbers ``0``, ``1``,
... and ``E`` on the last), then ``DE``. Every block waits for the host's answer: ``ACK`` goes on, ``NAK``
sends the same block again after ``nak_delay`` s (at most ``retries`` times, then the text is given up, as the
AU does), no answer
within ``reply_timeout`` seconds sends it once more, then gives up. A text whose last block was ACKed is in
``acked`` (its results, as the LIS must receive them) and ``on_acked`` is called with it at that moment (a
test checks there that the results were stored before the ACK).

Faults: ``corrupt_every=N`` sends every Nth block first with a wrong BCC (the host must NAK it and take the
resent block); ``junk`` bytes are written between texts (line noise the host must count and skip).
``with_bcc=False`` speaks the AU's no-BCC setting.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from labbridge.protocols import au_online

ResultIdentity = tuple[str, str, str, str]  # instrument, sample, instrument test code, value

# Online test number, low, high, decimals (a chemistry panel numbered as an AU site might number it).
PANEL: tuple[tuple[str, float, float, int], ...] = (
    ("001", 3.9, 6.1, 1), ("002", 59, 104, 0), ("003", 2.5, 7.8, 1), ("004", 136, 145, 0), ("005", 3.5, 5.1, 1),
    ("006", 98, 107, 0), ("007", 7, 56, 0), ("008", 10, 40, 0), ("009", 44, 147, 0), ("010", 9, 48, 0),
)


@dataclass(frozen=True, slots=True)
class AuTest:
    code: str  # the online test number, 3 digits
    value: str
    flags: tuple[str, ...] = ()


def head(kind: str, *, unit: str = "01", rack: int = 1, cup: int = 1, sample_type: str = " ", sample_no: int = 1,
         sample_id: str = "", control: str = "", block: str = "E") -> str:
    """The 30-character head of a result text (the beckman-au driver's layout)."""
    if len(kind) != 2 or len(sample_id) > 10 or len(control) > 4 or len(block) != 1:
        raise ValueError("field too long for the AU layout")
    return (f"{kind}{unit:>2.2}{rack:04d}{cup:02d}{sample_type:1.1}{sample_no:04d}{sample_id:<10}{control:>4}"
            f"{block}")


def group(test: AuTest) -> str:
    """One test: 3-digit online test number, 9-character result (right aligned), four 2-character flags."""
    flags = "".join(f"{f:<2.2}" for f in test.flags[:4])
    return f"{test.code:>3.3}{test.value:>9.9}{flags:<8}"


def result_texts(kind: str, tests: list[AuTest], *, per_block: int = 0, unit: str = "01", rack: int = 1,
                 cup: int = 1, sample_type: str = " ", sample_no: int = 1, sample_id: str = "",
                 control: str = "") -> list[bytes]:
    """The blocks (texts without control characters) of one result text; ``per_block`` 0: one block."""
    step = per_block or max(len(tests), 1)
    chunks = [tests[i:i + step] for i in range(0, len(tests), step)] or [[]]
    out = []
    for i, chunk in enumerate(chunks):
        block = "E" if i == len(chunks) - 1 else str(i % 10)
        start = head(kind, unit=unit, rack=rack, cup=cup, sample_type=sample_type, sample_no=sample_no,
                     sample_id=sample_id, control=control, block=block)
        out.append((start + "".join(group(t) for t in chunk)).encode("latin-1"))
    return out


@dataclass(slots=True)
class AuText:
    """One result text of the simulated AU and what the LIS must receive of it."""

    kind: str
    sample: str
    blocks: list[bytes]
    results: set[ResultIdentity]


class AuTextFactory:
    """Result texts of one simulated AU: patients, a QC text every ``qc_every``, a rerun every ``rerun_every``."""

    def __init__(self, instrument: str, *, sample_prefix: str = "S", seed: int = 0, qc_every: int = 3,
                 rerun_every: int = 4, panel_size: int = 6, tests_per_block: int = 4) -> None:
        self.instrument = instrument
        self.prefix = sample_prefix
        self.rng = random.Random(seed)
        self.qc_every = qc_every
        self.rerun_every = rerun_every
        self.panel = PANEL[:panel_size]
        self.per_block = tests_per_block
        self.count = 0
        self.qc_samples: set[str] = set()
        self._last_patient: tuple[str, int] | None = None
        self._values: dict[str, str] = {}  # the last patient's values (a rerun differs from the first run)

    def next(self) -> AuText:
        self.count += 1
        n = self.count
        if self.qc_every and n % self.qc_every == 0:
            sample = f"{self.prefix}C{n:03d}"
            self.qc_samples.add(sample)
            return self._text("DQ", sample, n, control=f"{n % 3 + 1}")
        if self.rerun_every and n % self.rerun_every == 0 and self._last_patient is not None:
            sample, number = self._last_patient
            return self._text("DH", sample, number, tests=self.panel[:2])
        sample = f"{self.prefix}{n:04d}"
        self._last_patient = (sample, n)
        return self._text("D ", sample, n)

    def _text(self, kind: str, sample: str, number: int, *, control: str = "",
              tests: tuple[tuple[str, float, float, int], ...] | None = None) -> AuText:
        made: list[AuTest] = []
        rerun = tests is not None
        for code, low, high, decimals in tests or self.panel:
            while True:
                value = self.rng.uniform(low * 0.8, high * 1.2)
                text = f"{value:.{decimals}f}"
                if not rerun or text != self._values.get(code):
                    break
            flags = ("H",) if value > high else ("L",) if value < low else ()
            made.append(AuTest(code, text, flags))
        if kind == "D ":
            self._values = {t.code: t.value for t in made}
        blocks = result_texts(kind, made, per_block=self.per_block, rack=(number - 1) // 10 + 1,
                              cup=(number - 1) % 10 + 1, sample_no=number, sample_id=sample, control=control)
        return AuText(kind, sample, blocks, {(self.instrument, sample, t.code, t.value) for t in made})


@dataclass(slots=True)
class AuSimStats:
    blocks_sent: int = 0
    naks: int = 0
    timeouts: int = 0
    texts_acked: int = 0
    texts_given_up: int = 0


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass
class AuAnalyzerSim:
    """See the module docstring. ``address``: labbridge's TCP port; ``opener``: streams of another line (a pty)."""

    instrument: str
    address: tuple[str, int] | None
    factory: AuTextFactory
    texts: int = 6
    with_bcc: bool = True
    corrupt_every: int = 0
    junk: bytes = b""
    retries: int = 3
    nak_delay: float = 0.0  # wait this long before sending a NAKed block again
    reply_timeout: float = 5.0
    opener: Opener | None = None
    on_acked: Callable[[AuText], None] | None = None
    acked: set[ResultIdentity] = field(default_factory=set)
    stats: AuSimStats = field(default_factory=AuSimStats)

    async def run(self) -> None:
        if self.opener is not None:
            reader, writer = await self.opener()
        else:
            assert self.address is not None
            reader, writer = await asyncio.open_connection(*self.address)
        try:
            await self._block(reader, writer, b"DB01")
            for _ in range(self.texts):
                text = self.factory.next()
                if self.junk:
                    writer.write(self.junk)
                if await self._text(reader, writer, text):
                    self.stats.texts_acked += 1
                    self.acked |= text.results
                    if self.on_acked is not None:
                        self.on_acked(text)
                else:
                    self.stats.texts_given_up += 1
            await self._block(reader, writer, b"DE01")
        finally:
            writer.close()
            await writer.wait_closed()

    async def _text(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: AuText) -> bool:
        for i, block in enumerate(text.blocks):
            if not await self._block(reader, writer, block, last=i == len(text.blocks) - 1):
                return False  # the AU gives up on the whole text
        return True

    async def _block(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes, *,
                     last: bool = True) -> bool:
        """Send one block until ACKed; False when the AU gives up on it (NAKs or silence past its retries)."""
        wire = au_online.build_block(text, last=last, with_bcc=self.with_bcc)
        self.stats.blocks_sent += 1
        first = wire
        if self.corrupt_every and self.with_bcc and self.stats.blocks_sent % self.corrupt_every == 0:
            first = wire[:-1] + bytes((wire[-1] ^ 0x5A,))
        timeouts = 0
        for attempt in range(self.retries + 1):
            writer.write(first if attempt == 0 else wire)
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.readexactly(1), self.reply_timeout)
            except TimeoutError:
                self.stats.timeouts += 1
                timeouts += 1
                if timeouts > 1:
                    return False
                continue
            if answer[0] == au_online.ACK:
                return True
            self.stats.naks += 1
            await asyncio.sleep(self.nak_delay)
        return False


async def _main(args: argparse.Namespace) -> None:
    factory = AuTextFactory(args.instrument, sample_prefix=args.prefix, seed=args.seed)
    sim = AuAnalyzerSim(args.instrument, (args.host, args.port), factory, texts=args.texts,
                        corrupt_every=args.corrupt_every)
    await sim.run()
    print(f"{sim.stats.texts_acked} texts acknowledged, {len(sim.acked)} results, {sim.stats.naks} NAKs", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated Beckman Coulter AU analyzer (AU online texts over TCP)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instrument", default="au-1")
    parser.add_argument("--prefix", default="S")
    parser.add_argument("--texts", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corrupt-every", type=int, default=0)
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
