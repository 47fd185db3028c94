"""The Beckman Coulter AU online link (framing = "au"): blocks, BCC, per-block ACK/NAK, a result text held
until it is stored, junk, over-size, split reads and the receive timer (fake clock)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from labbridge.protocols import e1381
from labbridge.protocols.au_online import ACK, ETB, ETX, NAK, STX, AuLink, AuProfile, bcc, build_block, split_texts

HEAD = b"D 0100120301182611230042    "
TEXT = HEAD + b"E001      5.4        002       131H       "
FIRST, SECOND = HEAD + b"0001      5.4        ", HEAD + b"E002       131H       "
SESSION = build_block(b"DB01") + build_block(TEXT) + build_block(b"DE01")


def messages(events: list[e1381.Event]) -> list[tuple[bytes, ...]]:
    return [e.records for e in events if isinstance(e, e1381.MessageReceived)]


def kinds(events: list[e1381.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_bcc_is_the_xor_of_the_text_through_the_end_code() -> None:
    assert bcc(b"DB" + bytes((ETX,))) == ord("D") ^ ord("B") ^ ETX
    block = build_block(b"DB01")
    assert block[0] == STX and block[-2] == ETX and block[-1] == bcc(block[1:-1])
    assert build_block(b"DB01", last=False, with_bcc=False) == b"\x02DB01\x17"


def test_a_session_db_text_de_acknowledges_markers_at_once_and_the_text_once_stored() -> None:
    link = AuLink()
    link.receive_data(SESSION, 0.0)
    events = link.events()
    assert messages(events) == [(TEXT,)]
    assert kinds(events) == ["FrameAccepted", "TransferStarted", "FrameAccepted", "MessageReceived"]
    received = next(e for e in events if isinstance(e, e1381.MessageReceived))
    assert received.raw == build_block(TEXT)
    # Persist before acknowledging: the DB is ACKed, the text is not, and DE is not read yet.
    assert link.data_to_send() == bytes((ACK,))
    assert link.holding and link.in_transfer and link.get_timer() is None
    link.accept_message(1.0)
    assert link.data_to_send() == bytes((ACK, ACK))  # the text, then DE
    assert kinds(link.events()) == ["FrameAccepted", "TransferEnded"]
    assert not link.holding and not link.in_transfer and link.get_timer() is None


def test_a_text_not_stored_is_nakked_and_the_resent_block_completes_it_again() -> None:
    link = AuLink()
    link.receive_data(build_block(FIRST, last=False) + build_block(SECOND), 0.0)
    assert link.data_to_send() == bytes((ACK,))  # the intermediate block at once
    assert messages(link.events()) == [(FIRST, SECOND)]
    link.reject_message(0.5)
    assert link.data_to_send() == bytes((NAK,))
    assert not link.holding and link.in_transfer  # the first block is kept for the resent last one
    link.receive_data(build_block(SECOND), 1.0)
    assert messages(link.events()) == [(FIRST, SECOND)]
    link.accept_message(1.5)
    assert link.data_to_send() == bytes((ACK,))


def test_a_wrong_bcc_is_nakked_counted_and_the_resent_block_taken() -> None:
    link = AuLink()
    good = build_block(TEXT)
    link.receive_data(good[:-1] + bytes((good[-1] ^ 1,)), 0.0)
    events = link.events()
    assert [e.reason.split(" (")[0] for e in events if isinstance(e, e1381.FrameRejected)] == ["checksum mismatch"]
    assert link.data_to_send() == bytes((NAK,)) and not link.holding
    link.receive_data(good, 1.0)
    assert messages(link.events()) == [(TEXT,)]


def test_an_intermediate_block_sent_twice_is_acknowledged_again_and_kept_once() -> None:
    link = AuLink()
    first = build_block(FIRST, last=False)
    link.receive_data(first + first + build_block(SECOND), 0.0)
    events = link.events()
    assert messages(events) == [(FIRST, SECOND)]
    assert sum(isinstance(e, e1381.FrameRetransmitted) for e in events) == 1
    assert link.data_to_send() == bytes((ACK, ACK))


def test_junk_between_blocks_is_counted_and_skipped() -> None:
    link = AuLink()
    link.receive_data(b"\r\nnoise" + build_block(b"DB01") + b"\xff\xfe" + build_block(TEXT), 0.0)
    events = link.events()
    assert sum(e.count for e in events if isinstance(e, e1381.JunkDiscarded)) == 9
    assert messages(events) == [(TEXT,)]


def test_an_oversize_block_is_discarded_nakked_and_the_next_block_read() -> None:
    link = AuLink(AuProfile(max_block_bytes=64))
    huge = build_block(HEAD + b"E" + b"0" * 200)
    link.receive_data(huge[:100], 0.0)
    link.receive_data(huge[100:], 0.0)
    events = link.events()
    assert any(isinstance(e, e1381.FrameRejected) and "longer than 64" in e.reason for e in events)
    assert sum(e.count for e in events if isinstance(e, e1381.JunkDiscarded)) == len(huge)
    assert not messages(events) and link.data_to_send() == bytes((NAK,))
    link.receive_data(build_block(b"DE01"), 1.0)
    assert kinds(link.events()) == ["FrameAccepted", "TransferEnded"]
    assert not link.in_transfer


def test_an_oversize_block_arriving_whole_is_refused_and_what_follows_it_read() -> None:
    link = AuLink(AuProfile(max_block_bytes=64))
    huge = build_block(HEAD + b"E" + b"0" * 200)
    link.receive_data(build_block(FIRST, last=False) + huge + build_block(b"DE01"), 0.0)
    events = link.events()
    assert [e.records for e in events if isinstance(e, e1381.IncompleteMessage)] == [(FIRST,)]
    assert sum(e.count for e in events if isinstance(e, e1381.JunkDiscarded)) == len(huge)
    assert kinds(events)[-2:] == ["FrameAccepted", "TransferEnded"]
    assert link.data_to_send() == bytes((ACK, NAK, ACK)) and not link.in_transfer


def test_an_oversize_text_abandons_what_was_received_of_it() -> None:
    link = AuLink(AuProfile(max_text_bytes=80))
    link.receive_data(build_block(FIRST, last=False) + build_block(FIRST[:-1] + b"1", last=False), 0.0)
    events = link.events()
    assert [e.reason for e in events if isinstance(e, e1381.IncompleteMessage)] == ["text longer than 80 bytes"]
    assert link.data_to_send() == bytes((ACK, NAK)) and not link.in_transfer


def test_silence_inside_a_text_abandons_it_as_incomplete_and_counts_a_timeout() -> None:
    link = AuLink(AuProfile(receive_timeout=2.0))
    link.receive_data(build_block(FIRST, last=False) + build_block(SECOND)[:10], 5.0)
    assert link.get_timer() == 7.0
    link.handle_timer(6.0)  # not yet
    assert not [e for e in link.events() if isinstance(e, e1381.IncompleteMessage)]
    link.handle_timer(7.0)
    events = link.events()
    assert [e.records for e in events if isinstance(e, e1381.IncompleteMessage)] == [(FIRST,)]
    assert any(isinstance(e, e1381.TransferEnded) and e.reason == "timeout" for e in events)
    assert link.get_timer() is None and not link.in_transfer


def test_a_cut_connection_keeps_the_unfinished_text_as_incomplete() -> None:
    link = AuLink()
    link.receive_data(build_block(FIRST, last=False), 0.0)
    link.connection_lost()
    assert [(e.records, e.reason) for e in link.events()
            if isinstance(e, e1381.IncompleteMessage)] == [((FIRST,), "connection lost")]


def test_a_new_text_before_the_last_block_abandons_the_previous_one() -> None:
    link = AuLink()
    other = b"DQ" + HEAD[2:] + b"E001      5.6        "
    link.receive_data(build_block(FIRST, last=False) + build_block(other), 0.0)
    events = link.events()
    assert [e.records for e in events if isinstance(e, e1381.IncompleteMessage)] == [(FIRST,)]
    assert messages(events) == [(other,)]


def test_a_restarted_block_is_junk_and_a_short_block_refused() -> None:
    link = AuLink()
    link.receive_data(b"\x02D 01half" + build_block(b"D"), 0.0)
    events = link.events()
    reasons = [e.reason for e in events if isinstance(e, e1381.FrameRejected)]
    assert reasons == ["block restarted (STX before its end code)", "block too short to carry a text classification"]
    assert link.data_to_send() == bytes((NAK,))


def test_class_a_answers_nothing_and_holds_nothing() -> None:
    link = AuLink(AuProfile(acknowledge=False, bcc=False))
    stream = b"".join(build_block(t, with_bcc=False) for t in (b"DB01", TEXT, TEXT, b"DE01"))
    link.receive_data(stream, 0.0)
    assert messages(link.events()) == [(TEXT,), (TEXT,)]
    assert link.data_to_send() == b"" and not link.holding
    link.reject_message(0.0)
    assert [e.reason for e in link.events() if isinstance(e, e1381.FrameRejected)] == [
        "text could not be stored (class A cannot ask for a resend)"]


def test_without_bcc_the_end_code_ends_the_block() -> None:
    link = AuLink(AuProfile(bcc=False))
    link.receive_data(build_block(FIRST, last=False, with_bcc=False) + build_block(SECOND, with_bcc=False), 0.0)
    assert messages(link.events()) == [(FIRST, SECOND)]


def test_what_arrives_while_a_text_is_held_waits_and_is_bounded() -> None:
    link = AuLink(AuProfile(max_block_bytes=80))
    link.receive_data(build_block(TEXT) + build_block(b"DE01") + b"x" * 200, 0.0)
    events = link.events()
    assert messages(events) == [(TEXT,)]
    assert sum(e.count for e in events if isinstance(e, e1381.JunkDiscarded)) == 200 + 7 - 80
    link.accept_message(1.0)
    assert link.data_to_send() == bytes((ACK, ACK))


def test_split_texts_reads_a_capture_like_the_daemon() -> None:
    bad = build_block(TEXT)
    capture = SESSION + bad[:-1] + bytes((bad[-1] ^ 1,)) + build_block(FIRST, last=False)
    items = list(split_texts(capture))
    assert items[0] == (TEXT,)
    assert isinstance(items[1], e1381.FrameRejected) and isinstance(items[2], e1381.IncompleteMessage)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4 * len(SESSION)), max_size=12))
def test_any_chunking_gives_the_same_events_and_answers(cuts: list[int]) -> None:
    stream = b"junk" + SESSION + build_block(FIRST, last=False) + build_block(SECOND) + SESSION
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})

    def run(pieces: list[bytes]) -> tuple[list[e1381.Event], bytes]:
        link = AuLink()
        events: list[e1381.Event] = []
        out = b""
        for piece in pieces:
            link.receive_data(piece, 0.0)
            while link.holding:
                events += link.events()
                link.accept_message(0.0)
            events += link.events()
            out += link.data_to_send()
        return events, out

    chunked = run([stream[a:b] for a, b in itertools.pairwise(points)])
    whole = run([stream])
    assert messages(chunked[0]) == messages(whole[0]) and len(messages(whole[0])) == 3
    assert chunked[1] == whole[1] == bytes((ACK,)) * 8


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400).map(lambda b: b.replace(b"\x00", bytes((ETB,)))),
       chunk=st.integers(min_value=1, max_value=50), answer=st.booleans())
def test_any_bytes_give_events_never_an_exception_and_buffers_stay_bounded(data: bytes, chunk: int,
                                                                           answer: bool) -> None:
    link = AuLink(AuProfile(max_block_bytes=64, max_text_bytes=256))
    for i in range(0, len(data), chunk):
        link.receive_data(data[i:i + chunk], float(i))
        assert len(link._inbuf) <= 64 + chunk and len(link._raw) <= 256
        if link.holding:
            (link.accept_message if answer else link.reject_message)(float(i))
        link.events()
    link.handle_timer(1e9)
    link.connection_lost()
    link.events()
    assert not link.holding
