"""Fuzz properties of the ASTM decoders that take an analyzer's bytes: E1381 framing (every dialect), raw
records, and E1394 records and messages.

For any bytes in any chunking: no exception escapes but the documented one (``RemoteProtocolError`` from
E1394's message decoding; none at all from the link cores), buffers stay within the profile's bounds, every
call returns, and the events and the bytes sent back are the same whatever the chunking (the link cores are
stream decoders: how the bytes were cut into reads is not part of the protocol), for a peer that waits for the
acknowledgement of a final frame (sends no more than the link keeps while it holds a message)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from labbridge.errors import RemoteProtocolError
from labbridge.protocols import e1381, e1394
from labbridge.protocols.raw import RawLink, RawProfile
from tests.fuzz.drive import cuts, drive, fuzz_settings, split, stream

FUZZ = fuzz_settings(150)

RECORDS = [b"H|\\^&|||LB^1|||||||P|1", b"h|@!~$|", b"P|1||PID1", b"O|1|S1||^^^GLU", b"R|1|^^^GLU|5.5|mmol/L",
           b"R|2|^^^K&X41&|4.1", b"C|1|I|note", b"M|1|x", b"Q|1|^S1", b"L|1|N", b"l|1", b"X|bad", b"H", b"H|"]
TOKENS = [b"\x05", b"\x04", b"\x06", b"\x15", b"\x02", b"\x03", b"\x17", b"\r", b"\n", b"\r\n", b"1", b"7", b"0",
          b"FF", b"a0", b"|", *[r + b"\r" for r in RECORDS]]
SMALL = {"max_frame_bytes": 512, "max_message_bytes": 2048}  # bounds small enough for the fuzzer to reach

PROFILES = st.builds(
    e1381.LinkProfile, strict_frame_numbers=st.booleans(), frame_numbers=st.booleans(), checksums=st.booleans(),
    record_terminator=st.sampled_from([b"\r", b"\n", b"\r\n"]), lenient_whitespace=st.booleans(),
    enq_eot_keepalive=st.booleans(), max_frame_bytes=st.sampled_from([64, 512, 1 << 16]),
    max_message_bytes=st.sampled_from([256, 2048, 1 << 20]))


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """A transfer that is well formed for some dialect, so the fuzzer reaches the deep states too."""
    profile = draw(PROFILES)
    records = draw(st.lists(st.sampled_from(RECORDS), min_size=1, max_size=6))
    frames = e1381.build_frames(records, first_fn=draw(st.integers(0, 7)), profile=profile)
    return b"\x05" + b"".join(frames) + b"\x04"


@FUZZ
@given(profile=PROFILES, data=stream(TOKENS, framed()), cut=cuts)
def test_e1381_receiver_survives_any_bytes_in_any_chunking(profile: e1381.LinkProfile, data: bytes,
                                                           cut: list[int]) -> None:
    def make() -> e1381.E1381Link:
        return e1381.E1381Link(e1381.Role.HOST, profile)

    whole = drive(make, [data])
    pieces = drive(make, split(data, cut))
    if len(data) <= profile.max_frame_bytes:
        # A peer that sent more than a frame's bound past a final frame before its ACK overflows what the link
        # keeps while it holds, and then what is dropped depends on when the hold came: not comparable.
        assert pieces.events == whole.events
        assert pieces.sent == whole.sent
    bound = profile.max_message_bytes + profile.max_frame_bytes + len(data)
    assert whole.max_buffer <= bound and pieces.max_buffer <= bound
    for event in whole.events:
        if isinstance(event, e1381.MessageReceived):
            assert len(event.raw) <= profile.max_message_bytes + profile.max_frame_bytes


@FUZZ
@given(data=stream(TOKENS, framed()), cut=cuts, role=st.sampled_from(list(e1381.Role)))
def test_e1381_sender_survives_any_reply(data: bytes, cut: list[int], role: e1381.Role) -> None:
    """As the sender of a queued message, any reply (ACK, NAK, ENQ, junk, frames) is handled, in any chunking.

    (Not the same events whatever the chunking: a sender drops as stale what was read with a reply, which came
    before its next frame went out, so how the replies were cut into reads is part of what they mean.)"""
    def make() -> e1381.E1381Link:
        link = e1381.E1381Link(role, e1381.LinkProfile(**SMALL))
        link.send_message([b"H|\\^&", b"O|1|S1||^^^GLU", b"L|1|N"], 0.0)
        return link

    for chunks in ([data], split(data, cut)):
        run = drive(make, chunks)
        assert run.max_buffer <= SMALL["max_frame_bytes"] + SMALL["max_message_bytes"] + len(data)
        assert sum(isinstance(e, e1381.MessageSent) for e in run.events) <= 1


def test_what_follows_an_overlong_frame_in_the_same_read_is_not_lost() -> None:
    """Found by the atheris run: a frame over ``max_frame_bytes`` was rejected with the whole read buffer, so an
    EOT (or a new frame) in the same read was lost, and the transfer ended only when the receive timer ran out."""
    data = b"\x05\x02" + b"A" * 600 + b"\x04"
    profile = e1381.LinkProfile(max_frame_bytes=512)
    for chunks in ([data], [data[:300], data[300:]], [data[:-1], data[-1:]]):
        run = drive(lambda: e1381.E1381Link(e1381.Role.HOST, profile), chunks)
        assert run.events == [e1381.TransferStarted(as_sender=False),
                              e1381.FrameRejected("frame longer than 512 bytes"), e1381.JunkDiscarded(600 + 1 - 512),
                              e1381.TransferEnded(as_sender=False, reason="eot")]


@FUZZ
@given(terminator=st.sampled_from([b"\r", b"\n", b"\r\n"]), data=stream(TOKENS), cut=cuts)
def test_raw_records_survive_any_bytes_in_any_chunking(terminator: bytes, data: bytes, cut: list[int]) -> None:
    profile = RawProfile(record_terminator=terminator, max_record_bytes=64, max_message_bytes=512)

    def make() -> RawLink:
        return RawLink(profile)

    whole, pieces = drive(make, [data]), drive(make, split(data, cut))
    assert pieces.events == whole.events
    assert whole.max_buffer <= profile.max_message_bytes + profile.max_record_bytes + len(data)
    for event in whole.events:
        if isinstance(event, e1381.MessageReceived):
            assert len(event.raw) <= profile.max_message_bytes + profile.max_record_bytes


def test_the_end_of_an_overlong_record_is_junk_whenever_it_comes() -> None:
    """Found by the atheris run: a record over ``max_record_bytes`` is dropped up to its terminator, but when the
    connection closed before that terminator, the part of it read since the drop was taken as a record of its
    own (an ``H...`` there began a message), and a terminator that never came was added to the junk count."""
    profile = RawProfile(max_record_bytes=256)
    data = b"A" * 300 + b"H|\\^&|||"
    for chunks in ([data], [data[:280], data[280:]]):
        run = drive(lambda: RawLink(profile), chunks)
        assert run.events == [e1381.JunkDiscarded(len(data))]


def test_a_record_over_the_bound_is_dropped_even_when_it_comes_whole() -> None:
    """Found by the atheris run: ``max_record_bytes`` was enforced only on a record still waiting for its
    terminator, so one over the bound that came whole in one read was taken, and the same bytes in two reads
    were not."""
    profile = RawProfile(max_record_bytes=64)
    data = b"H|\\^&\rP|1|" + b"x" * 100 + b"\rL|1|N\r"
    for chunks in ([data], [data[:40], data[40:]]):
        run = drive(lambda: RawLink(profile), chunks)
        assert run.events == [e1381.IncompleteMessage((b"H|\\^&",), b"H|\\^&\r", "record longer than 64 bytes"),
                              e1381.JunkDiscarded(len(data) - len(b"H|\\^&\r"))]


def test_a_last_record_without_terminator_is_kept_as_it_came() -> None:
    data = b"H|\\^&\rP|1\rL|1|N"  # the stream closes before the CR after L
    run = drive(RawLink, [data])
    assert run.events == [e1381.MessageReceived((b"H|\\^&", b"P|1", b"L|1|N"), data)]


@FUZZ
@given(records=st.lists(st.one_of(st.sampled_from(RECORDS), st.binary(max_size=40)), max_size=12),
       encoding=st.sampled_from(["latin-1", "utf-8", "ascii", "cp1252"]))
# A message that decodes (H first, L last) every run, not only when the draw makes one: its check below read a
# field the tree's node does not have, and only a lucky draw found it.
@example(records=[RECORDS[0], RECORDS[9]], encoding="latin-1")
@example(records=[RECORDS[1], RECORDS[2], RECORDS[3], RECORDS[4], RECORDS[10]], encoding="cp1252")
def test_e1394_decoding_raises_only_its_protocol_error(records: list[bytes], encoding: str) -> None:
    try:
        message = e1394.decode_message(records, encoding)
    except RemoteProtocolError:
        pass
    else:
        assert message.header.record.type == "H"
    try:
        parsed = e1394.parse_records(records, encoding)
    except RemoteProtocolError:
        return
    for record in parsed:
        for n in range(1, len(record.raw_fields) + 2):
            record.field(n)
            record.repeats(n)
            record.components(n)
            record.component(n, 2, 1)


@FUZZ
@given(text=st.text(max_size=60),
       delims=st.sampled_from([e1394.DEFAULT_DELIMITERS, e1394.Delimiters("!", "@", "#", "$")]))
def test_e1394_escapes_survive_any_text(text: str, delims: e1394.Delimiters) -> None:
    assert e1394.unescape(e1394.escape(text, delims), delims) == text
    e1394.unescape(text, delims)
