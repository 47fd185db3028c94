"""Fuzz properties of the HL7 decoders that take a peer's bytes: MLLP framing, HL7 v2 parsing (MSH, character
sets, escapes), the analyzer-side receiver that answers with acknowledgements, and the LIS's ACK parser.

For any bytes in any chunking: no exception but the documented one (``Hl7ParseError`` from
``parse_message``; none from the framer, the receiver or ``parse_ack``), memory bounded by ``max_message``,
and the same blocks and acknowledgements whatever the chunking (for a sender that waits for each
acknowledgement, i.e. sends no more than the receiver keeps while it holds a message)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from labbridge.protocols import hl7, mllp
from labbridge.protocols.hl7_ack import Hl7Received, Hl7Receiver
from labbridge.protocols.hl7_parse import Hl7Message, Hl7ParseError, parse_message
from tests.fuzz.drive import cuts, drive, fuzz_settings, split, stream

FUZZ = fuzz_settings(150)
MAX = 1024  # a bound the fuzzer reaches

MSH = [b"MSH|^~\\&|ANALYZER|LAB|LIS|H|20261203090000||ORU^R01|CTRL1|P|2.5.1",
       b"MSH|^~\\&|A||||||OUL^R22|C2|P|2.5.1|||AL|NE||UNICODE UTF-8",
       b"MSH|^~\\&|M||||||ORU^R01|3|P|2.3.1||||1||UNICODE", b"MSH|^~\\&|X||||||ACK|4|P|2.5|||||||UTF-16",
       b"MSH#!@$%|A", b"MSH|^~\\&", b"MSH", b"MSA|AA|CTRL1", b"MSA|AE|C2|bad", b"ERR|||207"]
SEGMENTS = [b"PID|1||P1^^^H", b"OBR|1|S1||GLU", b"OBX|1|NM|GLU^Glucose||5.5|mmol/L|||||F", b"OBX|2|ST|T||a\\F\\b",
            b"NTE|1||\\X0D\\\\E\\\\H\\", b"SPM|1|S1", b"ZZZ|\xff\xfe", b"\xc3\xa9|x", b""]
TOKENS = [b"\x0b", b"\x1c", b"\r", b"\n", b"\x1c\r", b"|", b"^", b"~", b"\\", b"&",
          *(s + b"\r" for s in MSH + SEGMENTS)]


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """An MLLP block holding an MSH and segments, some well formed."""
    segments = [draw(st.sampled_from(MSH)), *draw(st.lists(st.sampled_from(SEGMENTS), max_size=6))]
    sep = draw(st.sampled_from([b"\r", b"\n", b"\r\n"]))
    return mllp.frame(sep.join(segments))


@FUZZ
@given(data=stream(TOKENS, message()), cut=cuts, lenient=st.booleans())
def test_mllp_framing_survives_any_bytes_in_any_chunking(data: bytes, cut: list[int], lenient: bool) -> None:
    def run(chunks: list[bytes]) -> tuple[list[object], int]:
        decoder = mllp.MllpDecoder(max_message=MAX, allow_missing_cr=lenient)
        events: list[object] = []
        biggest = 0
        for chunk in chunks:
            for event in decoder.receive_data(chunk):
                if isinstance(event, mllp.MllpJunk) and events and isinstance(events[-1], mllp.MllpJunk):
                    events[-1] = mllp.MllpJunk(events[-1].count + event.count)
                else:
                    events.append(event)
            biggest = max(biggest, len(decoder._buf))
        events.append(decoder.pending())
        return events, biggest

    whole, biggest = run([data])
    pieces, biggest_pieces = run(split(data, cut))
    assert pieces == whole
    assert max(biggest, biggest_pieces) <= MAX + 2 + len(data)
    for event in whole:
        if isinstance(event, mllp.MllpMessage):
            assert len(event.payload) <= MAX
        if isinstance(event, mllp.MllpOversize):
            assert len(event.head) <= mllp.HEAD_KEPT


@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), stream(TOKENS)),
       charset=st.sampled_from(["latin-1", "utf-8", "ascii"]))
def test_parse_message_raises_only_its_parse_error(payload: bytes, charset: str) -> None:
    try:
        parsed = parse_message(payload, default_charset=charset)
    except Hl7ParseError as exc:
        error = exc
    else:
        _read_everything(parsed)
        return
    assert error.ack_code in ("AE", "AR")


def _read_everything(parsed: Hl7Message) -> None:
    assert parsed.header.name == "MSH"
    parsed.content_digest()
    _ = (parsed.message_type, parsed.control_id, parsed.version, parsed.accept_ack_type,
         parsed.application_ack_type)
    for segment in parsed.segments:
        for field in range(len(segment) + 1):
            parsed.value(segment, field, 1, 1, 1)
            parsed.value(segment, field, 0)
            parsed.repeats(segment, field, 2)


@FUZZ
@given(data=stream(TOKENS, message()), cut=cuts, lenient=st.booleans())
def test_the_receiver_answers_any_bytes_the_same_in_any_chunking(data: bytes, cut: list[int], lenient: bool) -> None:
    def make() -> Hl7Receiver:
        return Hl7Receiver(max_message=MAX, allow_missing_cr=lenient)

    whole, pieces = drive(make, [data]), drive(make, split(data, cut))
    if len(data) <= MAX:  # else what is kept while a message is held depends on when it was held
        assert [repr(e) for e in pieces.events] == [repr(e) for e in whole.events]
        assert pieces.sent == whole.sent
    assert max(whole.max_buffer, pieces.max_buffer) <= 2 * MAX + 2 + len(data)
    received = [e for e in whole.events if isinstance(e, Hl7Received)]
    for event in received:
        assert (event.message is None) != (event.error is None)
    acks = [e for e in mllp.MllpDecoder().receive_data(whole.sent) if not isinstance(e, mllp.MllpJunk)]
    assert len(acks) <= 2 * len(received), "at most a commit and an application ACK per message"
    for ack in acks:
        assert isinstance(ack, mllp.MllpMessage), "every acknowledgement is one well-framed block"
        info = hl7.parse_ack(ack.payload)
        assert info is not None and info.code in ("AA", "AE", "AR", "CA", "CE", "CR")


@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), stream(TOKENS)))
def test_parse_ack_never_raises(payload: bytes) -> None:
    info = hl7.parse_ack(payload)
    assert info is None or isinstance(info.accepted, bool)
