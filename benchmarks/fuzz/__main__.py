"""``python -m benchmarks.fuzz TARGET [-max_total_time=SECONDS] [libFuzzer options]``: fuzz one decoder.

Targets (each asserts what tests/fuzz/ asserts: only the documented error, bounded buffers, the same
events whatever the chunking):

* ``e1381``: the E1381 receiver, any dialect, the input cut into reads where the fuzzer says;
* ``raw``: bare E1394 records on a stream, then E1394 message decoding of every message;
* ``mllp``: the MLLP framer and the HL7 receiver that answers with acknowledgements;
* ``hl7``: HL7 v2 parsing (MSH, character sets, escapes, every value) and the LIS's ACK parser;
* ``config``: a config file (TOML -> labbridge.config.load_config).

The seed corpus is the drivers' captures and the example config; libFuzzer's final line gives the number of
inputs executed and its status lines the peak RSS. A crash is written to ./crash-<sha1> by libFuzzer.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

from labbridge.config import load_config
from labbridge.errors import ConfigError, RemoteProtocolError
from labbridge.protocols import e1381, e1394, hl7, mllp
from labbridge.protocols.hl7_ack import Hl7Receiver
from labbridge.protocols.hl7_parse import Hl7ParseError, parse_message
from labbridge.protocols.raw import RawLink, RawProfile
from tests.fuzz.drive import drive, split

ROOT = Path(__file__).resolve().parents[2]
TERMINATORS = (b"\r", b"\n", b"\r\n")


def _chunks(fdp: atheris.FuzzedDataProvider) -> tuple[bytes, list[bytes]]:
    cuts = [fdp.ConsumeIntInRange(0, 1 << 16) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    return data, split(data, cuts)


def _same(make: Callable[[], object], data: bytes, chunks: list[bytes], bound: int, held: int) -> list[object]:
    """The link's events, checked: the same in one read and in ``chunks`` (when ``data`` fits in what the link
    keeps while it holds a message, ``held``: see tests/fuzz), buffers within ``bound``."""
    whole, pieces = drive(make, [data]), drive(make, chunks)  # type: ignore[arg-type]
    same = [repr(e) for e in pieces.events] == [repr(e) for e in whole.events]  # an error event: by value
    if len(data) <= held and not (same and pieces.sent == whole.sent):
        raise AssertionError("the chunking changed what the link did")
    if max(whole.max_buffer, pieces.max_buffer) > bound + len(data):
        raise AssertionError(f"buffers over the bound: {whole.max_buffer}, {pieces.max_buffer}")
    return whole.events


def fuzz_e1381(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    profile = e1381.LinkProfile(
        strict_frame_numbers=fdp.ConsumeBool(), frame_numbers=fdp.ConsumeBool(), checksums=fdp.ConsumeBool(),
        record_terminator=TERMINATORS[fdp.ConsumeIntInRange(0, 2)], lenient_whitespace=fdp.ConsumeBool(),
        enq_eot_keepalive=fdp.ConsumeBool(), max_frame_bytes=fdp.PickValueInList([64, 512, 1 << 16]),
        max_message_bytes=fdp.PickValueInList([256, 4096]))
    role = e1381.Role.HOST if fdp.ConsumeBool() else e1381.Role.INSTRUMENT
    data, chunks = _chunks(fdp)
    _same(lambda: e1381.E1381Link(role, profile), data, chunks, profile.max_message_bytes + profile.max_frame_bytes,
          profile.max_frame_bytes)


def fuzz_raw(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    profile = RawProfile(record_terminator=TERMINATORS[fdp.ConsumeIntInRange(0, 2)], max_record_bytes=256,
                         max_message_bytes=4096)
    data, chunks = _chunks(fdp)
    for event in _same(lambda: RawLink(profile), data, chunks, 4096 + 256, len(data)):
        if isinstance(event, e1381.MessageReceived):
            with contextlib.suppress(RemoteProtocolError):
                e1394.decode_message(event.records)


def fuzz_mllp(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    lenient = fdp.ConsumeBool()
    data, chunks = _chunks(fdp)
    _same(lambda: Hl7Receiver(max_message=4096, allow_missing_cr=lenient), data, chunks, 2 * 4096 + 2, 4096)
    for event in mllp.MllpDecoder(max_message=4096).receive_data(data):
        if isinstance(event, mllp.MllpMessage) and len(event.payload) > 4096:
            raise AssertionError("a block over the bound")


def fuzz_hl7(raw: bytes) -> None:
    hl7.parse_ack(raw)
    try:
        parsed = parse_message(raw)
    except Hl7ParseError:
        return
    parsed.content_digest()
    for segment in parsed.segments:
        for field in range(len(segment) + 1):
            parsed.value(segment, field, 1, 1, 1)
            parsed.repeats(segment, field, 2)


def fuzz_config(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labbridge.toml"
        path.write_bytes(raw)
        with contextlib.suppress(ConfigError):
            load_config(path)


TARGETS: dict[str, tuple[Callable[[bytes], None], tuple[str, ...]]] = {
    "e1381": (fuzz_e1381, ("drivers/*/captures/*.astm",)),
    "raw": (fuzz_raw, ("drivers/*/captures/*.astm",)),
    "mllp": (fuzz_mllp, ("drivers/*/captures/*.mllp",)),
    "hl7": (fuzz_hl7, ("drivers/*/captures/*.mllp",)),
    "config": (fuzz_config, ("config/*.toml",)),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m benchmarks.fuzz {{{','.join(TARGETS)}}} [libFuzzer options]")
    target, seeds = TARGETS[sys.argv[1]]
    corpus = Path(tempfile.mkdtemp(prefix=f"labbridge-fuzz-{sys.argv[1]}-"))
    for pattern in seeds:
        for seed in ROOT.glob(pattern):
            shutil.copy(seed, corpus / seed.name)
            if sys.argv[1] == "hl7":  # the parser takes a block's payload: the captures' messages, unframed
                for i, event in enumerate(mllp.MllpDecoder().receive_data(seed.read_bytes())):
                    if isinstance(event, mllp.MllpMessage):
                        (corpus / f"{seed.name}.{i}").write_bytes(event.payload)
    atheris.instrument_all()  # every Python function loaded so far: labbridge's decoders and config
    try:
        atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], target)
        atheris.Fuzz()
    finally:
        shutil.rmtree(corpus, ignore_errors=True)


if __name__ == "__main__":
    main()
