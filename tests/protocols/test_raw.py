"""Raw framing: bare E1394 records on a byte stream, message boundaries from H and L (fake clock)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from labbridge.protocols import e1381
from labbridge.protocols.raw import T_RAW_IDLE, RawLink, RawProfile

MESSAGE = (b"H|\\^&|||Vision^5", b"P|1||PAT1", b"O|1|S0001||^^^ABO", b"R|1|^^^ABO|A+|||N||F", b"L|1|N")
STREAM = b"\r".join(MESSAGE) + b"\r"


def messages(events: list[e1381.Event]) -> list[tuple[bytes, ...]]:
    return [e.records for e in events if isinstance(e, e1381.MessageReceived)]


def test_one_message_from_h_to_l() -> None:
    link = RawLink()
    link.receive_data(STREAM, 0.0)
    events = link.events()
    assert messages(events) == [MESSAGE]
    received = next(e for e in events if isinstance(e, e1381.MessageReceived))
    assert received.raw == STREAM
    assert link.data_to_send() == b"" and link.get_timer() is None


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM) * 2), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    stream = b"junk\r" + STREAM * 2
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    link = RawLink()
    for a, b in itertools.pairwise(points):
        link.receive_data(stream[a:b], 0.0)
    whole = RawLink()
    whole.receive_data(stream, 0.0)
    assert link.events() == whole.events()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), chunk=st.integers(min_value=1, max_value=50))
def test_any_bytes_give_events_never_an_exception(data: bytes, chunk: int) -> None:
    link = RawLink(RawProfile(max_record_bytes=64, max_message_bytes=256))
    for i in range(0, len(data), chunk):
        link.receive_data(data[i:i + chunk], float(i))
    link.handle_timer(1e9)
    link.connection_lost()
    for event in link.events():
        if isinstance(event, e1381.MessageReceived):
            assert event.records[0][:1] in (b"H", b"h") and event.records[-1][:1] in (b"L", b"l")


def test_lf_and_crlf_terminators() -> None:
    for term in (b"\n", b"\r\n"):
        link = RawLink(RawProfile(record_terminator=term))
        link.receive_data(term.join(MESSAGE) + term, 0.0)
        assert messages(link.events()) == [MESSAGE]


def test_records_outside_a_message_are_junk_never_results() -> None:
    link = RawLink()
    link.receive_data(b"R|1|^^^GLU|5.0\rL|1|N\r" + STREAM, 0.0)
    events = link.events()
    assert messages(events) == [MESSAGE]
    assert sum(e.count for e in events if isinstance(e, e1381.JunkDiscarded)) == len(b"R|1|^^^GLU|5.0\rL|1|N\r")


def test_new_header_before_l_makes_the_first_incomplete() -> None:
    link = RawLink()
    link.receive_data(b"\r".join(MESSAGE[:3]) + b"\r" + STREAM, 0.0)
    events = link.events()
    incomplete = [e for e in events if isinstance(e, e1381.IncompleteMessage)]
    assert [i.records for i in incomplete] == [MESSAGE[:3]]
    assert messages(events) == [MESSAGE]


def test_idle_timeout_before_l_is_incomplete() -> None:
    link = RawLink()
    link.receive_data(b"\r".join(MESSAGE[:4]) + b"\r", 10.0)
    assert link.get_timer() == 10.0 + T_RAW_IDLE
    link.handle_timer(39.0)
    assert link.events() == []
    link.handle_timer(40.0)
    events = link.events()
    assert not messages(events)
    assert [type(e) for e in events] == [e1381.IncompleteMessage]
    assert link.get_timer() is None


def test_connection_closed_before_l_is_incomplete() -> None:
    link = RawLink()
    link.receive_data(b"\r".join(MESSAGE[:4]) + b"\rR|2|^^^R", 0.0)
    link.connection_lost()
    incomplete = [e for e in link.events() if isinstance(e, e1381.IncompleteMessage)]
    assert len(incomplete) == 1 and incomplete[0].records == (*MESSAGE[:4], b"R|2|^^^R")


def test_l_without_terminator_completes_when_the_stream_goes_quiet() -> None:
    link = RawLink()
    link.receive_data(STREAM[:-1], 0.0)  # no CR after L|1|N
    assert not messages(link.events())
    link.handle_timer(T_RAW_IDLE)
    assert messages(link.events()) == [MESSAGE]


def test_buffers_are_bounded() -> None:
    link = RawLink(RawProfile(max_record_bytes=100, max_message_bytes=300))
    link.receive_data(b"H|\\^&\r" + b"x" * 1000, 0.0)
    assert len(link._inbuf) <= 100
    link.receive_data(b"y" * 50 + b"\r" + STREAM, 0.0)  # the rest of the long record is dropped too
    events = link.events()
    assert messages(events) == [MESSAGE]
    assert any(isinstance(e, e1381.IncompleteMessage) for e in events)
    big = RawLink(RawProfile(max_message_bytes=300))
    big.receive_data(b"H|\\^&\r" + b"R|1|" + b"9" * 200 + b"\r" + b"R|2|" + b"9" * 200 + b"\rL|1|N\r", 0.0)
    events = big.events()
    assert not messages(events) and any(isinstance(e, e1381.IncompleteMessage) for e in events)
