"""Why bytes never frame, read from the bytes (issue 20, part 6): the pure classifier on byte samples, and
the health's reason built on it."""

from __future__ import annotations

import pytest

from labbridge.health.instrument import InstrumentHealth
from labbridge.health.unframed import SAMPLE_BYTES, diagnose
from labbridge.protocols import e1381, mllp
from tests.test_architecture import IO_AND_CLOCK, PACKAGE, import_graph

RECORDS = [b"H|\\^&|||Acme^1|||||||P|LIS2-A2|20261123101500", b"P|1", b"O|1|S1||^^^GLU|R",
           b"R|1|^^^GLU|5.4|mmol/L||N||F", b"L|1|N"]
FRAMED = b"\x05" + b"".join(e1381.build_frames(RECORDS)) + b"\x04"
BARE = b"".join(r + b"\r" for r in RECORDS)
UNNUMBERED = b"\x05" + b"".join(e1381.build_frames(RECORDS, profile=e1381.LinkProfile(frame_numbers=False))) + b"\x04"
BARE_FRAMES = b"\x05" + b"".join(b"\x02" + r + b"\r\x03" for r in RECORDS) + b"\x04"  # no numbers, no checksums
UNSUMMED = b"\x05" + b"".join(e1381.build_frames(RECORDS, profile=e1381.LinkProfile(checksums=False))) + b"\x04"
FRAMED_LF = b"\x05" + b"".join(e1381.build_frames(RECORDS, profile=e1381.LinkProfile(record_terminator=b"\n",
                                                                                   one_frame_per_message=True)))
HL7 = b"MSH|^~\\&|Acme|Lab|||20261123101500||ORU^R01|1|P|2.5.1\rPID|1||P1\rOBX|1|NM|GLU||5.4|mmol/L\r"
GARBLED = bytes(0x80 | (b * 7 + 13) & 0x7F for b in FRAMED)  # what a receiver at the wrong baud rate reads
SEVEN_E_ONE = bytes(b | 0x80 if bin(b).count("1") % 2 else b for b in BARE)  # 7E1 read as 8N1: parity in bit 7


def cause(sample: bytes, framing: str = "e1381", **dialect: bool | str) -> str | None:
    found = diagnose(sample, framing=framing, **dialect)  # type: ignore[arg-type]
    return None if found is None else found.cause


@pytest.mark.parametrize(("sample", "framing", "expected"), [
    (BARE, "e1381", 'records without E1381 framing: try link.framing = "raw"'),
    (BARE.replace(b"\r", b"\r\n"), "e1381", 'records without E1381 framing: try link.framing = "raw"'),
    (UNNUMBERED, "e1381", "frames without frame numbers: try link.frame_numbers = false"),
    (BARE_FRAMES, "e1381", "frames without frame numbers or checksums: try link.frame_numbers = false and "
                           "link.checksums = false"),
    (UNSUMMED, "e1381", "frames without checksums: try link.checksums = false"),
    (GARBLED, "e1381", "bytes look like the wrong baud rate or parity"),
    (SEVEN_E_ONE, "raw", "bytes look like the wrong baud rate or parity"),
    (HL7, "e1381", "HL7 messages on an ASTM link"),
    (mllp.frame(HL7), "raw", "HL7 messages on an ASTM link"),
    (FRAMED, "mllp", "ASTM on an HL7 link"),
    (BARE, "mllp", "ASTM on an HL7 link"),
    (HL7, "mllp", "HL7 segments without MLLP blocks"),
    (FRAMED, "raw", 'E1381 framing (ENQ, STX ... ETX) on a raw link: try link.framing = "e1381"'),
    (BARE.replace(b"\r", b"\n"), "raw", 'records ended by LF: try link.record_terminator = "lf"'),
    (FRAMED_LF, "e1381", 'records separated by LF inside frames: try link.record_terminator = "lf"'),
])
def test_the_likely_cause_is_read_from_the_bytes(sample: bytes, framing: str, expected: str) -> None:
    found = cause(sample, framing)
    assert found is not None and found.startswith(expected), found


@pytest.mark.parametrize(("sample", "framing", "dialect"), [
    (FRAMED, "e1381", {}),  # standard frames: nothing to say from the bytes (the frames failed otherwise)
    (UNNUMBERED, "e1381", {"frame_numbers": False}),  # the dialect already says so
    (BARE.replace(b"\r", b"\n"), "raw", {"record_terminator": "lf"}),
    (mllp.frame(HL7), "mllp", {}),
    (b"\x05\x04", "e1381", {}),  # too little to judge
    (b"hello, this is a modem\r\n", "e1381", {}),
])
def test_nothing_is_said_when_the_bytes_do_not_show_a_cause(sample: bytes, framing: str,
                                                            dialect: dict[str, bool | str]) -> None:
    assert cause(sample, framing, **dialect) is None


def health(transport: str = "tcp-server 127.0.0.1:4001", **kwargs: object) -> InstrumentHealth:
    return InstrumentHealth(id="an-1", site="arlon", driver="astm-generic", transport=transport,  # type: ignore[arg-type]
                            framing="e1381", undecoded_after_s=60, **kwargs)


def test_the_health_reason_names_the_cause_and_forgets_it_once_something_decodes() -> None:
    h = health()
    h.connected("10.1.2.3:5000", now=1000.0)
    h.received(BARE)
    state, reason = h.effective_state(1080.0)
    assert state == "degraded"
    assert f"{len(BARE)} bytes received in 80 s but none formed a frame or message: records without E1381 " \
           'framing: try link.framing = "raw"' in reason
    h.decoded(now=1101.0)
    h.received(b"\x05")
    assert h.effective_state(1102.0)[0] == "up"
    assert h.counters.bytes_received == len(BARE) + 1


def test_the_sample_is_the_last_bytes_and_bounded() -> None:
    h = health()
    h.connected("x", now=0.0)
    for _ in range(100):
        h.received(GARBLED)
    h.received(BARE)
    assert h.counters.bytes_received == 100 * len(GARBLED) + len(BARE)
    sample = h.recent_bytes()
    assert len(sample) == SAMPLE_BYTES and sample.endswith(BARE)
    assert sample == (b"".join([GARBLED] * 100) + BARE)[-SAMPLE_BYTES:]
    h.received(bytes(5 * SAMPLE_BYTES))  # a chunk larger than the sample
    assert h.recent_bytes() == bytes(SAMPLE_BYTES)


def test_what_is_kept_of_the_bytes_stays_bounded_read_by_read() -> None:
    """Small reads (an ACK-per-frame analyzer's frames, a byte at a time) are trimmed now and then, not at every
    read: what is held never passes the sample by more than the slack (512 bytes), and the sample is exact."""
    h = health()
    h.connected("x", now=0.0)
    sent = bytearray()
    for i in range(3000):
        chunk = bytes([65 + i % 26]) * (1 + i % 97)
        h.received(chunk)
        sent += chunk
        assert len(h._recent_bytes) <= SAMPLE_BYTES + 512
        if i % 101 == 0:
            assert h.recent_bytes() == bytes(sent[-SAMPLE_BYTES:])
    assert h.recent_bytes() == bytes(sent[-SAMPLE_BYTES:])


def test_noise_on_a_serial_line_names_its_settings_and_on_tcp_the_converter() -> None:
    h = health("serial /dev/ttyUSB0 9600 8N1")
    h.connected("/dev/ttyUSB0", now=0.0)
    h.received(GARBLED)
    reason = h.effective_state(100.0)[1]
    assert ("bytes look like the wrong baud rate or parity: check that the baud rate, parity, data bits and stop "
            "bits (serial /dev/ttyUSB0 9600 8N1) match the analyzer's") in reason
    t = health()
    t.connected("10.1.2.3:5000", now=0.0)
    t.received(GARBLED)
    assert "wrong baud rate or parity (of a serial-to-network converter on the way)" in t.effective_state(100.0)[1]


def test_rejected_frames_name_the_dialect_setting_when_the_bytes_show_it() -> None:
    h = health()
    h.connected("x", now=0.0)
    h.received(UNNUMBERED)
    for _ in range(5):
        h.frame_outcome(False)
    state, reason = h.effective_state(1.0)  # before undecoded_after_s: the reject ratio speaks
    assert state == "degraded"
    assert "100% of recent frames rejected (checksum or framing errors): frames without frame numbers: try " \
           "link.frame_numbers = false" in reason
    assert "cable" not in reason


def test_without_a_cause_in_the_bytes_the_general_advice_stays() -> None:
    h = health()
    h.connected("x", now=0.0)
    h.received(b"hello, this is a modem\r\n")
    reason = h.effective_state(100.0)[1]
    assert "check that the analyzer's protocol setting matches this link's framing (e1381)" in reason


def test_numbered_frames_in_a_dialect_without_numbers() -> None:
    found = diagnose(FRAMED, framing="e1381", frame_numbers=False)
    assert found is not None and found.cause == ("frames with frame numbers in a dialect without them: try "
                                                 "link.frame_numbers = true")


def test_frames_that_never_complete_a_message_degrade_naming_the_cause() -> None:
    h = health(frame_numbers=False)  # the analyzer numbers its frames: "1H|", "6L|" never make H..L
    h.connected("x", now=0.0)
    h.received(FRAMED)
    for _ in range(6):
        h.frame_outcome(True)
    assert h.effective_state(30.0)[0] == "up"  # before undecoded_after_s
    state, reason = h.effective_state(80.0)
    assert state == "degraded"
    assert ("6 frames accepted in 80 s but none completed a message: frames with frame numbers in a dialect "
            "without them: try link.frame_numbers = true") in reason
    h.message_counted(now=81.0)
    assert h.effective_state(100.0)[0] == "up"
    plain = health()
    plain.connected("x", now=0.0)
    plain.received(FRAMED)
    for _ in range(3):
        plain.frame_outcome(True)
    reason = plain.effective_state(80.0)[1]
    assert "3 frames accepted in 80 s but none completed a message: check the analyzer's ASTM dialect" in reason


def test_the_classifier_and_the_capture_reader_are_pure() -> None:
    """No I/O, no clock; of labbridge, only the protocol cores (testable on bytes alone)."""
    graph, outside = import_graph(PACKAGE)
    for module in ("labbridge.health.unframed", "labbridge.capture"):
        assert not outside[module] & IO_AND_CLOCK, module
        assert all(target.startswith("labbridge.protocols") for target in graph[module]), graph[module]
