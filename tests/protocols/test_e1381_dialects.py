"""E1381 dialect flags on LinkProfile, each under a fake clock (PROTOCOLS.md "Common vendor deviations")."""

from __future__ import annotations

import pytest

from labbridge.protocols import e1381
from labbridge.protocols.e1381 import ACK, ENQ, EOT, NAK, E1381Link, LinkProfile, Role, build_frames, checksum

MESSAGE = (b"H|\\^&|||Maglumi^1", b"P|1||PAT1", b"O|1|S0001||^^^TSH", b"R|1|^^^TSH|1.23|uIU/mL||N||F",
           b"L|1|N")


def received(link: E1381Link) -> list[e1381.MessageReceived]:
    return [e for e in link.events() if isinstance(e, e1381.MessageReceived)]


def open_transfer(link: E1381Link, now: float = 0.0) -> None:
    link.receive_data(bytes([ENQ]), now)
    assert link.data_to_send() == bytes([ACK])


def test_maglumi_no_frame_number_no_checksum_whole_message_in_one_frame() -> None:
    # Snibe MAGLUMI: STX H|..CR..L|1|N CR ETX then EOT.
    link = E1381Link(Role.HOST, LinkProfile(frame_numbers=False, checksums=False))
    open_transfer(link)
    link.receive_data(b"\x02" + b"\r".join(MESSAGE) + b"\r\x03", 1.0)
    got = received(link)
    assert len(got) == 1 and got[0].records == MESSAGE
    assert link.data_to_send() == b""  # held until the commit
    link.accept_message(1.1)
    assert link.data_to_send() == bytes([ACK])
    link.receive_data(bytes([EOT]), 1.2)
    assert link.state is e1381.State.NEUTRAL
    assert not any(isinstance(e, e1381.JunkDiscarded | e1381.FrameRejected) for e in link.events())


def test_no_checksum_frame_followed_by_crlf_is_not_junk() -> None:
    link = E1381Link(Role.HOST, LinkProfile(checksums=False))
    open_transfer(link)
    for frame in build_frames(MESSAGE, profile=link.profile):
        assert frame[-2:] == b"\r\n" and frame[-3] in (e1381.ETX, e1381.ETB)
        link.receive_data(frame, 0.5)
    assert received(link)[0].records == MESSAGE
    assert not any(isinstance(e, e1381.JunkDiscarded) for e in link.events())


def test_no_frame_number_with_checksum_and_retransmission_by_identical_bytes() -> None:
    profile = LinkProfile(frame_numbers=False)
    link = E1381Link(Role.HOST, profile)
    open_transfer(link)
    frames = build_frames(MESSAGE, profile=profile)
    assert frames[0][1:2] == b"H"  # no digit after STX
    link.receive_data(frames[0], 0.1)
    link.receive_data(frames[0], 0.2)  # the ACK was lost: the same frame again is discarded
    assert link.data_to_send() == bytes([ACK, ACK])
    assert any(isinstance(e, e1381.FrameRetransmitted) for e in link.events())
    for frame in frames[1:]:
        link.receive_data(frame, 0.3)
    assert received(link)[0].records == MESSAGE


def test_no_frame_number_store_failure_retransmission_is_offered_again() -> None:
    profile = LinkProfile(frame_numbers=False, checksums=False)
    link = E1381Link(Role.HOST, profile)
    open_transfer(link)
    frame = build_frames(MESSAGE, profile=LinkProfile(frame_numbers=False, checksums=False,
                                                      one_frame_per_message=True))[0]
    link.receive_data(frame, 0.1)
    assert len(received(link)) == 1
    link.reject_message(0.2)
    assert link.data_to_send() == bytes([NAK])
    link.receive_data(frame, 0.3)  # identical bytes, but the last one was refused: a new offer
    assert len(received(link)) == 1


def test_bad_checksum_still_caught_without_frame_numbers() -> None:
    link = E1381Link(Role.HOST, LinkProfile(frame_numbers=False))
    open_transfer(link)
    body = b"H|\\^&\r\x03"
    link.receive_data(b"\x02" + body + b"00\r\n", 0.0)
    assert link.data_to_send() == bytes([NAK])


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
def test_lf_and_crlf_record_terminators(terminator: bytes) -> None:
    profile = LinkProfile(record_terminator=terminator)
    link = E1381Link(Role.HOST, profile)
    open_transfer(link)
    frames = build_frames(MESSAGE, profile=profile)
    assert frames[0].endswith(terminator + b"\x03" + frames[0][-4:])
    for frame in frames:
        link.receive_data(frame, 0.0)
    assert received(link)[0].records == MESSAGE
    # The same dialect in one frame with all records.
    link2 = E1381Link(Role.HOST, profile)
    open_transfer(link2)
    body = b"1" + terminator.join(MESSAGE) + terminator + b"\x03"
    link2.receive_data(b"\x02" + body + checksum(body) + b"\r\n", 0.0)
    assert received(link2)[0].records == MESSAGE


def test_cr_terminator_keeps_the_standard_split() -> None:
    link = E1381Link(Role.HOST)
    open_transfer(link)
    body = b"1" + b"\r".join(MESSAGE) + b"\r\x03"
    link.receive_data(b"\x02" + body + checksum(body) + b"\r\n", 0.0)
    assert received(link)[0].records == MESSAGE


def test_leading_newlines_and_extra_crs_around_frames() -> None:
    profile = LinkProfile(lenient_whitespace=True)
    link = E1381Link(Role.HOST, profile)
    frames = build_frames(MESSAGE)
    stream = b"\r\n" + bytes([ENQ]) + b"".join(b"\n" + f[:-2] + b"\r\r" for f in frames)
    acks = b""
    for i in range(len(stream)):  # one byte at a time: the optional trailer must not confuse the split
        link.receive_data(stream[i:i + 1], 0.0)
        acks += link.data_to_send()
    events = link.events()
    assert [e.records for e in events if isinstance(e, e1381.MessageReceived)] == [MESSAGE]
    assert not any(isinstance(e, e1381.JunkDiscarded | e1381.FrameRejected) for e in events)
    assert acks == bytes([ACK]) * len(frames)
    # Without the flag, the same stream is not silently accepted: missing CR LF trailers are NAKed.
    strict = E1381Link(Role.HOST)
    strict.receive_data(stream, 0.0)
    assert NAK in strict.data_to_send()


def test_enq_eot_keepalive() -> None:
    link = E1381Link(Role.HOST, LinkProfile(enq_eot_keepalive=True))
    link.receive_data(bytes([ENQ, EOT]), 5.0)
    assert link.data_to_send() == bytes([ACK])
    events = link.events()
    assert any(isinstance(e, e1381.KeepAlive) for e in events)
    assert not any(isinstance(e, e1381.TransferEnded | e1381.IncompleteMessage) for e in events)
    assert link.state is e1381.State.NEUTRAL and link.get_timer() is None
    # A real transfer still works right after, and EOT after frames is no keep-alive.
    link.receive_data(bytes([ENQ]), 6.0)
    for frame in build_frames(MESSAGE[:2]):
        link.receive_data(frame, 6.0)
    link.receive_data(bytes([EOT]), 6.1)
    events = link.events()
    assert not any(isinstance(e, e1381.KeepAlive) for e in events)
    assert any(isinstance(e, e1381.IncompleteMessage) for e in events)
    # Without the flag an ENQ/EOT pair is an (empty) transfer.
    plain = E1381Link(Role.HOST)
    plain.receive_data(bytes([ENQ, EOT]), 0.0)
    assert any(isinstance(e, e1381.TransferEnded) for e in plain.events())


def test_keepalive_does_not_disturb_timers() -> None:
    link = E1381Link(Role.HOST, LinkProfile(enq_eot_keepalive=True))
    for t in range(0, 300, 30):
        link.receive_data(bytes([ENQ, EOT]), float(t))
        link.handle_timer(float(t) + 29.0)
    assert link.state is e1381.State.NEUTRAL
    assert sum(isinstance(e, e1381.KeepAlive) for e in link.events()) == 10


def test_lower_case_checksum_is_accepted_in_every_dialect() -> None:
    for profile in (LinkProfile(), LinkProfile(frame_numbers=False), LinkProfile(lenient_whitespace=True)):
        link = E1381Link(Role.HOST, profile)
        open_transfer(link)
        fn = b"1" if profile.frame_numbers else b""
        body = next(b for n in range(1, 40) if (b := fn + b"H|\\^&|" + b"A" * n + b"\r\x03")
                    and checksum(b)[:1].isalpha())
        assert checksum(body) != checksum(body).lower()
        link.receive_data(b"\x02" + body + checksum(body).lower() + b"\r\n", 0.0)
        assert link.data_to_send() == bytes([ACK])


def test_whole_message_in_one_frame_longer_than_247_both_ways() -> None:
    profile = LinkProfile(one_frame_per_message=True)
    long_message = (*MESSAGE[:-1], b"C|1|" + b"c" * 600, b"L|1|N")
    frames = build_frames(long_message, profile=profile)
    assert len(frames) == 1 and len(frames[0]) > 247
    link = E1381Link(Role.HOST)
    open_transfer(link)
    link.receive_data(frames[0], 0.0)
    assert received(link)[0].records == long_message


def test_sender_uses_its_dialect_and_peers_agree() -> None:
    profile = LinkProfile(frame_numbers=False, checksums=False, record_terminator=b"\n", one_frame_per_message=True)
    sender = E1381Link(Role.INSTRUMENT, profile)
    receiver = E1381Link(Role.HOST, profile)
    sender.send_message(MESSAGE, 0.0)
    now = 0.0
    for _ in range(20):
        receiver.receive_data(sender.data_to_send(), now)
        for event in receiver.events():
            if isinstance(event, e1381.MessageReceived):
                assert event.records == MESSAGE
                receiver.accept_message(now)
        sender.receive_data(receiver.data_to_send(), now)
        now += 0.1
    assert sender.pending_messages == 0
    assert sender.state is e1381.State.NEUTRAL and receiver.state is e1381.State.NEUTRAL
