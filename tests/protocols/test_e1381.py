"""The E1381 link under a fake clock: receiver, sender, timers, and two peers talking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from labbridge.protocols import e1381
from labbridge.protocols.e1381 import ACK, ENQ, EOT, NAK, E1381Link, Role, build_frames, checksum

MESSAGE = (b"H|\\^&|||SimChem^1.0", b"P|1|PAT1", b"O|1|S0001||^^^GLU", b"R|1|^^^GLU|5.4|mmol/L||N||F",
           b"L|1|N")


def host() -> E1381Link:
    return E1381Link(Role.HOST)


def kinds(events: list[e1381.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def feed_frames(link: E1381Link, frames: list[bytes], now: float = 0.0) -> bytes:
    out = b""
    for frame in frames:
        link.receive_data(frame, now)
        out += link.data_to_send()
    return out


def test_checksum_vector_from_cobas_c111_capture() -> None:
    # PROTOCOLS.md R-A14: "7L|1|N<CR><ETX>" -> "0A"
    assert checksum(b"7L|1|N\r\x03") == b"0A"


def test_build_frames_numbers_and_splits() -> None:
    long_record = b"R|1|" + b"x" * 600
    frames = build_frames([b"H|\\^&", long_record, b"L|1|N"])
    # H (1 frame), long record (3 frames: 240 + 240 + rest), L (1 frame)
    assert [f[1:2] for f in frames] == [b"1", b"2", b"3", b"4", b"5"]
    assert frames[1][-5] == e1381.ETB and frames[3][-5] == e1381.ETX
    assert all(len(f) <= 247 for f in frames)
    wrapped = build_frames([b"R"] * 9)
    assert [f[1:2] for f in wrapped] == [b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"0", b"1"]


def test_receiver_holds_final_ack_until_commit() -> None:
    link = host()
    link.receive_data(bytes([ENQ]), 0.0)
    assert link.data_to_send() == bytes([ACK])
    frames = build_frames(MESSAGE)
    replies = feed_frames(link, frames[:-1])
    assert replies == bytes([ACK]) * (len(frames) - 1)
    link.receive_data(frames[-1], 1.0)
    assert link.data_to_send() == b"", "the final frame must not be ACKed before the commit"
    received = [e for e in link.events() if isinstance(e, e1381.MessageReceived)]
    assert len(received) == 1
    assert received[0].records == MESSAGE
    assert received[0].raw == b"".join(frames)
    assert link.get_timer() is None  # while holding, the caller owns the time
    link.accept_message(1.5)
    assert link.data_to_send() == bytes([ACK])
    link.receive_data(bytes([EOT]), 2.0)
    assert link.state is e1381.State.NEUTRAL


def test_rejected_commit_naks_and_the_retransmission_is_offered_again() -> None:
    link = host()
    link.receive_data(bytes([ENQ]), 0.0)
    frames = build_frames(MESSAGE)
    feed_frames(link, frames[:-1])
    link.data_to_send()
    link.events()
    link.receive_data(frames[-1], 1.0)
    link.reject_message(1.0)
    assert link.data_to_send() == bytes([NAK])
    link.events()
    link.receive_data(frames[-1], 2.0)  # the analyzer retransmits the same frame
    again = [e for e in link.events() if isinstance(e, e1381.MessageReceived)]
    assert len(again) == 1 and again[0].records == MESSAGE
    assert again[0].raw == b"".join(frames)
    link.accept_message(2.0)
    assert link.data_to_send() == bytes([ACK])


def test_bad_checksum_is_naked_and_retransmission_accepted() -> None:
    link = host()
    link.receive_data(bytes([ENQ]), 0.0)
    link.data_to_send()
    frames = build_frames(MESSAGE)
    bad = frames[1][:-4] + b"00" + frames[1][-2:]
    if bad == frames[1]:
        bad = frames[1][:-4] + b"11" + frames[1][-2:]
    feed_frames(link, frames[:1])
    link.receive_data(bad, 0.1)
    assert link.data_to_send() == bytes([NAK])
    rejected = [e for e in link.events() if isinstance(e, e1381.FrameRejected)]
    assert rejected and rejected[0].reason.startswith("checksum")
    assert feed_frames(link, frames[1:-1]) == bytes([ACK]) * (len(frames) - 2)
    link.receive_data(frames[-1], 0.2)
    received = [e for e in link.events() if isinstance(e, e1381.MessageReceived)]
    assert len(received) == 1 and received[0].records == MESSAGE


def test_lower_case_checksum_is_accepted() -> None:
    link = host()
    link.receive_data(bytes([ENQ]), 0.0)
    link.data_to_send()
    body = b"1H|\\^&\r\x03"
    frame = b"\x02" + body + checksum(body).lower() + b"\r\n"
    link.receive_data(frame, 0.0)
    assert link.data_to_send() == bytes([ACK])


def test_retransmitted_frame_is_acked_and_not_stored_twice() -> None:
    link = host()
    link.receive_data(bytes([ENQ]), 0.0)
    frames = build_frames(MESSAGE)
    feed_frames(link, frames[:2])
    link.receive_data(frames[1], 0.5)  # our ACK was lost: the sender repeats frame 2
    assert link.data_to_send() == bytes([ACK])
    assert any(isinstance(e, e1381.FrameRetransmitted) for e in link.events())
    feed_frames(link, frames[2:])
    received = [e for e in link.events() if isinstance(e, e1381.MessageReceived)]
    assert received[0].records == MESSAGE  # P record present once


def test_unexpected_frame_number_is_naked() -> None:
    link = host()
    link.receive_data(bytes([ENQ]), 0.0)
    link.data_to_send()
    frames = build_frames(MESSAGE)
    link.receive_data(frames[2], 0.0)  # FN 3 where 1 is expected
    assert link.data_to_send() == bytes([NAK])


def test_one_byte_at_a_time_with_junk_around_frames() -> None:
    link = host()
    frames = build_frames(MESSAGE)
    stream = b"\r\n noise" + bytes([ENQ]) + b"".join(b"\x00junk\n" + f for f in frames)
    acks = b""
    for i in range(len(stream)):
        link.receive_data(stream[i:i + 1], i * 0.001)
        acks += link.data_to_send()
    events = link.events()
    received = [e for e in events if isinstance(e, e1381.MessageReceived)]
    assert len(received) == 1 and received[0].records == MESSAGE
    assert sum(e.count for e in events if isinstance(e, e1381.JunkDiscarded)) > 0
    assert acks == bytes([ACK]) * len(frames)  # ENQ ACK + all frames but the held last one


def test_record_split_over_etb_frames_is_joined() -> None:
    link = host()
    long_record = b"R|1|^^^GLU|" + b"9" * 500
    message = (b"H|\\^&", b"P|1", b"O|1|S1", long_record, b"L|1|N")
    link.receive_data(bytes([ENQ]), 0.0)
    feed_frames(link, build_frames(message))
    received = [e for e in link.events() if isinstance(e, e1381.MessageReceived)]
    assert received[0].records == message


def test_whole_message_in_one_long_frame_is_accepted() -> None:
    # Vendor deviation 1: all records in one frame, CR-separated, longer than 247 characters.
    text = b"\r".join(MESSAGE[:-1]) + b"\r" + b"C|1|" + b"c" * 300 + b"\rL|1|N\r"
    body = b"1" + text + b"\x03"
    link = host()
    link.receive_data(bytes([ENQ]) + b"\x02" + body + checksum(body) + b"\r\n", 0.0)
    received = [e for e in link.events() if isinstance(e, e1381.MessageReceived)]
    assert len(received) == 1 and received[0].records[-1] == b"L|1|N"


def test_eot_before_terminator_is_an_incomplete_message_not_a_result() -> None:
    link = host()
    link.receive_data(bytes([ENQ]), 0.0)
    feed_frames(link, build_frames(MESSAGE[:3]))
    link.receive_data(bytes([EOT]), 1.0)
    events = link.events()
    assert not any(isinstance(e, e1381.MessageReceived) for e in events)
    incomplete = [e for e in events if isinstance(e, e1381.IncompleteMessage)]
    assert len(incomplete) == 1 and incomplete[0].records == MESSAGE[:3]
    assert link.state is e1381.State.NEUTRAL


def test_receiver_times_out_after_30_seconds() -> None:
    link = host()
    link.receive_data(bytes([ENQ]), 100.0)
    feed_frames(link, build_frames(MESSAGE[:2]), now=101.0)
    assert link.get_timer() == 101.0 + e1381.T_RECEIVER
    link.handle_timer(120.0)  # not yet
    assert link.state is e1381.State.RECEIVER
    link.handle_timer(131.0)
    assert link.state is e1381.State.NEUTRAL
    assert any(isinstance(e, e1381.IncompleteMessage) for e in link.events())


def test_neutral_ignores_everything_but_enq() -> None:
    link = host()
    link.receive_data(b"\x04\x04garbage\x06\x15", 0.0)  # EOT keep-alives and noise
    assert link.data_to_send() == b""
    assert link.state is e1381.State.NEUTRAL


# ---- sender ----------------------------------------------------------------------------------


def test_sender_retransmits_on_nak_and_aborts_after_six_failures() -> None:
    link = E1381Link(Role.INSTRUMENT)
    handle = link.send_message(MESSAGE, 0.0)
    assert link.data_to_send() == bytes([ENQ])
    link.receive_data(bytes([ACK]), 0.1)
    first = link.data_to_send()
    assert first == build_frames(MESSAGE)[0]
    for attempt in range(1, 6):
        link.receive_data(bytes([NAK]), 0.1 * attempt)
        assert link.data_to_send() == first
    link.receive_data(bytes([NAK]), 1.0)
    assert link.data_to_send() == bytes([EOT])
    aborted = [e for e in link.events() if isinstance(e, e1381.SendAborted)]
    assert aborted and aborted[0].handle == handle
    assert link.pending_messages == 1  # still queued: it will be sent again
    assert link.get_timer() == 1.0 + e1381.T_BUSY


def test_sender_times_out_after_15_seconds_without_reply() -> None:
    link = E1381Link(Role.INSTRUMENT)
    link.send_message(MESSAGE, 0.0)
    link.data_to_send()
    assert link.get_timer() == e1381.T_SENDER_REPLY
    link.handle_timer(15.0)
    assert link.data_to_send() == bytes([EOT])
    assert link.state is e1381.State.NEUTRAL


def test_busy_receiver_nak_to_enq_waits_ten_seconds() -> None:
    link = E1381Link(Role.INSTRUMENT)
    link.send_message(MESSAGE, 0.0)
    link.data_to_send()
    link.receive_data(bytes([NAK]), 1.0)
    assert link.get_timer() == 11.0
    link.handle_timer(5.0)
    assert link.data_to_send() == b""
    link.handle_timer(11.0)
    assert link.data_to_send() == bytes([ENQ])


def test_contention_host_yields_instrument_keeps_priority() -> None:
    hst = E1381Link(Role.HOST)
    hst.send_message(MESSAGE, 0.0)
    assert hst.data_to_send() == bytes([ENQ])
    hst.receive_data(bytes([ENQ]), 0.0)  # the instrument's ENQ crossed ours
    assert hst.data_to_send() == b""
    assert any(isinstance(e, e1381.Contention) and e.yielded for e in hst.events())
    hst.receive_data(bytes([ENQ]), 1.0)  # the instrument asks again after 1 s: the host answers
    assert hst.data_to_send() == bytes([ACK])

    ins = E1381Link(Role.INSTRUMENT)
    ins.send_message(MESSAGE, 0.0)
    ins.data_to_send()
    ins.receive_data(bytes([ENQ]), 0.0)
    assert ins.get_timer() == e1381.T_CONTENTION_INSTRUMENT
    ins.handle_timer(1.0)
    assert ins.data_to_send() == bytes([ENQ])


def test_receiver_interrupt_eot_counts_as_received() -> None:
    link = E1381Link(Role.INSTRUMENT)
    link.send_message(MESSAGE[:2], 0.0)
    link.data_to_send()
    link.receive_data(bytes([ACK]), 0.0)
    link.data_to_send()
    link.receive_data(bytes([EOT]), 0.1)  # receiver interrupt in place of ACK
    assert link.data_to_send() == build_frames(MESSAGE[:2])[1]


# ---- two peers -------------------------------------------------------------------------------


def converse(sender: E1381Link, receiver: E1381Link, *, chunk: int, steps: int = 10_000) -> list[tuple[bytes, ...]]:
    """Pass bytes both ways in chunks of ``chunk`` until quiet; the receiver commits every message."""
    received: list[tuple[bytes, ...]] = []
    now = 0.0
    for _ in range(steps):
        a = sender.data_to_send()
        for i in range(0, len(a), chunk):
            receiver.receive_data(a[i:i + chunk], now)
        for event in receiver.events():
            if isinstance(event, e1381.MessageReceived):
                received.append(event.records)
                receiver.accept_message(now)
        b = receiver.data_to_send()
        for i in range(0, len(b), chunk):
            sender.receive_data(b[i:i + chunk], now)
        now += 0.01
        if not a and not b:
            timer = sender.get_timer()
            if timer is None:
                break
            now = max(now, timer)
            sender.handle_timer(now)
    return received


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(
        st.lists(st.binary(min_size=1, max_size=400).map(
            lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F) or b"x"), min_size=0, max_size=5),
        min_size=1, max_size=4),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_two_peers_deliver_every_message_once_whatever_the_chunking(messages: list[list[bytes]], chunk: int) -> None:
    sender = E1381Link(Role.INSTRUMENT)
    receiver = E1381Link(Role.HOST)
    expected = []
    for body in messages:
        # Records may not start with H or L inside a message body (those delimit messages).
        records = (b"H|\\^&", *(b"C|" + r for r in body), b"L|1|N")
        expected.append(records)
        sender.send_message(records, 0.0)
    got = converse(sender, receiver, chunk=chunk)
    assert got == expected
    assert sender.state is e1381.State.NEUTRAL and receiver.state is e1381.State.NEUTRAL
    assert sender.pending_messages == 0
