"""The cores' limits as pure state: records per message (E1381 refuses by NAK before the final ACK, also on the
plain-frame fast path; raw keeps what came as incomplete), segments per HL7 message (AR with the reason)."""

from __future__ import annotations

from labbridge.protocols import e1381, raw
from labbridge.protocols.hl7_ack import Hl7Received, Hl7Receiver
from labbridge.protocols.link import over_limit

RECORDS = [b"H|\\^&", b"P|1", b"O|1|S1"] + [b"R|%d|^^^T%d|%d" % (n, n, n) for n in range(1, 6)] + [b"L|1|N"]


def test_e1381_refuses_a_message_over_its_record_limit_before_the_final_ack() -> None:
    link = e1381.E1381Link(e1381.Role.HOST, e1381.LinkProfile(max_records=5))
    link.receive_data(bytes([e1381.ENQ]), 0.0)
    assert link.data_to_send() == bytes([e1381.ACK])
    answers = []
    for frame in e1381.build_frames(RECORDS):
        link.receive_data(frame, 0.0)
        answers.append(link.data_to_send())
    assert answers == [bytes([e1381.ACK])] * 5 + [bytes([e1381.NAK])] * 4
    events = link.events()
    assert not any(isinstance(e, e1381.MessageReceived) for e in events)
    [kept] = [e for e in events if isinstance(e, e1381.IncompleteMessage)]
    assert len(kept.records) == 5 and over_limit(kept.reason) and "more than 5 records" in kept.reason


def test_e1381_within_its_record_limit_takes_the_message() -> None:
    link = e1381.E1381Link(e1381.Role.HOST, e1381.LinkProfile(max_records=len(RECORDS)))
    link.receive_data(bytes([e1381.ENQ]) + b"".join(e1381.build_frames(RECORDS)), 0.0)
    assert any(isinstance(e, e1381.MessageReceived) for e in link.events())


def test_raw_keeps_a_message_over_its_record_limit_as_incomplete() -> None:
    link = raw.RawLink(raw.RawProfile(max_records=4))
    link.receive_data(b"".join(r + b"\r" for r in RECORDS), 0.0)
    events = []
    while (event := link.next_event()) is not None:
        events.append(event)
    assert not any(isinstance(e, e1381.MessageReceived) for e in events)
    [kept] = [e for e in events if isinstance(e, e1381.IncompleteMessage)]
    assert "more than 4 records" in kept.reason and over_limit(kept.reason)


def test_hl7_refuses_a_message_over_its_segment_limit_with_the_reason() -> None:
    receiver = Hl7Receiver(max_segments=3)
    message = (b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X1|P|2.5.1\rPID|1\rOBR|1\rOBX|1\rOBX|2\r")
    receiver.receive_data(b"\x0b" + message + b"\x1c\r", 0.0)
    event = receiver.next_event()
    assert isinstance(event, Hl7Received) and event.message is None and event.error is not None
    assert "more than 3 segments (5)" in event.error.reason and event.raw == message
    assert event.error.ack_code == "AR" and over_limit(event.error.reason)
