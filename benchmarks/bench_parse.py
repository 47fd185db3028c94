"""Parse throughput: labbridge's ASTM and HL7 receive paths beside python-astm, python-hl7, hl7apy and a split.

Run alone: .venv/bin/python -m benchmarks.bench_parse [--seconds 1] [--runs 5]  (or through python -m benchmarks)

ASTM, for a generated 20-test chemistry message and a 25-result CBC:
- labbridge full path: E1381 receiver (frame scan, checksums, frame numbers, joining) + E1394 records +
  the generic driver (canonical results with mapped codes and time zones);
- labbridge frame path: the E1381 receiver alone (records out), fed one frame per call and its ACK taken
  after each, as on the wire and as python-astm's handler is driven (the target's ratio); and fed the
  whole transfer in one call (fewer calls: not what a link does, shown for the difference);
- labbridge codec: E1394 ``parse_records`` (fields split; components split lazily when read), and
  codec + driver;
- python-astm (astm-2025) frame path: its RequestHandler (checksum, join, decode) through benchmarks/astm_compat;
- python-astm codec: ``astm.codec.decode`` of the message's records (fields, components, repeats);
- plain split baseline: strip the frames, split records on CR and fields on '|'.
HL7, the same content as ORU^R01 (labbridge's builder) and OUL^R22 (with SPM):
- labbridge parser: ``labbridge.protocols.hl7_parse.parse_message`` (what an HL7 link runs on each message)
  and each result read from it (sample, code, value, units); the target's ratio;
- split baseline: a plain split over segments and fields reading the same (what rounds 1-6 and issue 15's
  first run measured as "labbridge path (split)", from before labbridge had an HL7 parser);
- python-hl7 ``hl7.parse``; hl7apy ``parse_message`` (default: tolerant validation, groups found).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime

from benchmarks.common import PANELS, Figure, Ratio, one_message, print_table, rate
from labbridge.driver import AstmDriver, DecodeContext, load_driver
from labbridge.protocols import e1381, e1394
from labbridge.protocols.hl7 import Party, build_oru_r01
from labbridge.protocols.hl7_parse import parse_message as parse_hl7

SECTION = "parse"

# Issue 15's targets for parse speed (same machine, same run; benchmarks/targets.py lists them all).
TARGET_ASTM_DECODE = 4.0  # labbridge codec + driver >= 4x python-astm's codec
TARGET_ASTM_FRAMES = 5.0  # E1381 frame path, frame by frame, >= 5x python-astm's frame path (checksum, join, decode)
TARGET_HL7 = 100.0  # HL7 parse >= 100x python-hl7's hl7.parse


def _oul_r22(oru: bytes) -> bytes:
    """The same content as an OUL^R22 (v2.5.1): MSH-9 changed, SPM after PID, OBR and OBX as they were."""
    segments = oru.decode("utf-8").split("\r")
    out: list[str] = []
    sample = ""
    for seg in segments:
        if seg.startswith("MSH"):
            out.append(seg.replace("ORU^R01^ORU_R01", "OUL^R22^OUL_R22"))
            continue
        if seg.startswith("OBR"):
            sample = seg.split("|")[2]
            out.append(f"SPM|1|{sample}||SER^Serum^HL70487")
        out.append(seg)
    return "\r".join(out).encode("utf-8")


def hl7_split_results(payload: bytes) -> list[tuple[str, str, str, str]]:
    """labbridge's HL7 read path for now: segments and fields by split; (sample, code, value, units) per OBX."""
    text = payload.decode("utf-8")
    sep = text[3]
    sample = ""
    out: list[tuple[str, str, str, str]] = []
    for seg in text.split("\r"):
        if seg[:3] == "OBX":
            f = seg.split(sep)
            code = f[3].split("^")
            out.append((sample, code[3] if len(code) > 3 and code[3] else code[0], f[5], f[6]))
        elif seg[:3] in ("OBR", "SPM"):
            f = seg.split(sep)
            sample = f[2] or sample
    return out


def hl7_parse_results(payload: bytes) -> list[tuple[str, str, str, str]]:
    """labbridge's HL7 parser (``labbridge.protocols.hl7_parse.parse_message``: character set, separators,
    segments, checks), then (sample, code, value, units) read per OBX through ``Hl7Message.value``."""
    message = parse_hl7(payload)
    sample = ""
    out: list[tuple[str, str, str, str]] = []
    for seg in message.segments:
        name = seg.name
        if name == "OBX":
            code = message.value(seg, 3, 4) or message.value(seg, 3, 1)
            out.append((sample, code, message.value(seg, 5, 0), message.value(seg, 6, 1)))
        elif name in ("OBR", "SPM"):
            sample = message.value(seg, 2, 1) or sample
    return out


def feed_frame_by_frame(frames: list[bytes]) -> None:
    """labbridge's E1381 receiver fed one frame per call, its ACK taken after each, as on the wire (ENQ, the
    frames, EOT; the message accepted when it completes)."""
    link = e1381.E1381Link(e1381.Role.HOST)
    link.receive_data(b"\x05", 0.0)
    link.data_to_send()
    for frame in frames:
        link.receive_data(frame, 0.0)
        for event in link.events():
            if isinstance(event, e1381.MessageReceived):
                link.accept_message(0.0)
        if link.data_to_send() != b"\x06":
            raise RuntimeError("labbridge did not ACK a frame")
    link.receive_data(b"\x04", 0.0)


def run(seconds: float, runs: int, panels: tuple[str, ...] = PANELS) -> tuple[list[Figure], list[Ratio]]:
    driver = load_driver("astm-generic")
    assert isinstance(driver, AstmDriver)
    ctx = DecodeContext(instrument="bench")
    figures: list[Figure] = []
    ratios: list[Ratio] = []
    for panel in panels:
        f, r = _run_panel(panel, seconds, runs, driver, ctx)
        figures.extend(f)
        ratios.extend(r)
    return figures, ratios


def _run_panel(panel: str, seconds: float, runs: int, driver: AstmDriver,
               ctx: DecodeContext) -> tuple[list[Figure], list[Ratio]]:
    import hl7
    from hl7apy.parser import parse_message

    from benchmarks import astm_compat

    figures: list[Figure] = []
    ratios: list[Ratio] = []
    msg = one_message(panel)
    n_results = len(msg.results)
    frames = e1381.build_frames(msg.records)
    stream = b"\x05" + b"".join(frames) + b"\x04"
    decoded = driver.decode(msg.records, ctx)
    assert len(decoded.results) == n_results
    oru = build_oru_r01(decoded.results, control_id="LB000000000000000001", created_at=datetime.now(UTC),
                        sender=Party("LABBRIDGE", "BENCH"), receiver=Party("LIS"))
    oul = _oul_r22(oru)
    frame_path = astm_compat.FramePath()
    assert len(frame_path.receive(frames)) == len(msg.records)
    assert len(astm_compat.decode_message_records(msg.records)) == len(msg.records)

    def labbridge_full() -> int:
        link = e1381.E1381Link(e1381.Role.HOST)
        link.receive_data(stream[:-1], 0.0)
        for event in link.events():
            if isinstance(event, e1381.MessageReceived):
                got = driver.decode(event.records, ctx)
                assert len(got.results) == n_results
                link.accept_message(0.0)
        link.receive_data(stream[-1:], 0.0)
        return 1

    def labbridge_frames() -> int:
        link = e1381.E1381Link(e1381.Role.HOST)
        link.receive_data(stream[:-1], 0.0)
        for event in link.events():
            if isinstance(event, e1381.MessageReceived):
                link.accept_message(0.0)
        link.receive_data(stream[-1:], 0.0)
        return 1

    def labbridge_frame_by_frame() -> int:
        feed_frame_by_frame(frames)
        return 1

    def labbridge_codec() -> int:
        return 1 if e1394.parse_records(msg.records) else 0

    def labbridge_codec_driver() -> int:
        return 1 if driver.decode(msg.records, ctx).results else 0

    def python_astm_frames() -> int:
        return 1 if frame_path.receive(frames) else 0

    def python_astm_codec() -> int:
        return 1 if astm_compat.decode_message_records(msg.records) else 0

    def plain_split() -> int:
        text = b"".join(f[2:-5] for f in frames)
        fields = [r.split(b"|") for r in text.split(b"\r") if r]
        return 1 if fields else 0

    hl7_text = {"ORU^R01": oru.decode("utf-8"), "OUL^R22": oul.decode("utf-8")}
    for kind, payload in (("ORU^R01", oru), ("OUL^R22", oul)):
        assert len(hl7_split_results(payload)) == n_results, kind
        assert hl7_parse_results(payload) == hl7_split_results(payload), kind
        assert len(hl7.parse(hl7_text[kind]).segments("OBX")) == n_results
        parse_message(hl7_text[kind])

    def make_hl7(kind: str, payload: bytes) -> dict[str, Callable[[], int]]:
        text = hl7_text[kind]
        return {
            f"HL7 {kind} labbridge parser (hl7_parse)": lambda: 1 if hl7_parse_results(payload) else 0,
            f"HL7 {kind} split baseline": lambda: 1 if hl7_split_results(payload) else 0,
            f"HL7 {kind} python-hl7 hl7.parse": lambda: 1 if hl7.parse(text) else 0,
            f"HL7 {kind} hl7apy parse_message": lambda: 1 if parse_message(text) is not None else 0,
        }

    paths: dict[str, Callable[[], int]] = {
        "ASTM labbridge E1381+E1394+driver": labbridge_full,
        "ASTM labbridge frame path (E1381), frame by frame": labbridge_frame_by_frame,
        "ASTM labbridge frame path (E1381), whole transfer in one call": labbridge_frames,
        "ASTM labbridge codec (E1394)": labbridge_codec,
        "ASTM labbridge codec + driver": labbridge_codec_driver,
        "ASTM python-astm frame path": python_astm_frames,
        "ASTM python-astm codec": python_astm_codec,
        "ASTM plain split baseline": plain_split,
        **make_hl7("ORU^R01", oru),
        **make_hl7("OUL^R22", oul),
    }
    # Runs interleaved (every path once, then again): a burst of load from the shared machine's neighbours
    # then slows one run of each path, not every run of one path, which would skew its ratios.
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, fn in paths.items():
            rates[name].append(rate(fn, seconds))
    medians: dict[str, float] = {}
    for name in paths:
        values = rates[name]
        fig = Figure.of(SECTION, f"{panel} {name}", "messages/s", values, panel=panel,
                        results_per_message=n_results)
        figures.append(fig)
        figures.append(Figure.of(SECTION, f"{panel} {name}", "results/s", [v * n_results for v in values],
                                 panel=panel))
        medians[name] = fig.median

    def ratio(name: str, a: str, b: str, target: float | None = None) -> None:
        ratios.append(Ratio(SECTION, f"{panel}: {name}", medians[a] / medians[b], target))

    ratio("labbridge codec / python-astm codec", "ASTM labbridge codec (E1394)", "ASTM python-astm codec")
    ratio("labbridge codec+driver / python-astm codec", "ASTM labbridge codec + driver",
          "ASTM python-astm codec", TARGET_ASTM_DECODE)
    ratio("labbridge frame path / python-astm frame path", "ASTM labbridge frame path (E1381), frame by frame",
          "ASTM python-astm frame path", TARGET_ASTM_FRAMES)
    ratio("labbridge frame path, whole transfer in one call / python-astm frame path",
          "ASTM labbridge frame path (E1381), whole transfer in one call", "ASTM python-astm frame path")
    ratio("labbridge full path / python-astm frame path", "ASTM labbridge E1381+E1394+driver",
          "ASTM python-astm frame path")
    ratio("labbridge full path / plain split", "ASTM labbridge E1381+E1394+driver", "ASTM plain split baseline")
    for kind in ("ORU^R01", "OUL^R22"):
        ratio(f"HL7 {kind} labbridge parser / hl7.parse", f"HL7 {kind} labbridge parser (hl7_parse)",
              f"HL7 {kind} python-hl7 hl7.parse", TARGET_HL7)
        ratio(f"HL7 {kind} split baseline / hl7.parse", f"HL7 {kind} split baseline",
              f"HL7 {kind} python-hl7 hl7.parse")
        ratio(f"HL7 {kind} labbridge parser / hl7apy", f"HL7 {kind} labbridge parser (hl7_parse)",
              f"HL7 {kind} hl7apy parse_message")
    return figures, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run of one path")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    figures, ratios = run(args.seconds, args.runs)
    print_table("parse", [f for f in figures if f.unit == "messages/s"], ratios)


if __name__ == "__main__":
    main()
