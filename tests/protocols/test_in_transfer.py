"""``Link.in_transfer``: whether closing the connection now would cut a transfer off (a reload waits for False)."""

from __future__ import annotations

from datetime import UTC, datetime

from labbridge.protocols import e1381, mllp
from labbridge.protocols.hl7_ack import Hl7Receiver
from labbridge.protocols.link import Answer, Outcome
from labbridge.protocols.raw import RawLink

RECORDS = [b"H|\\^&", b"P|1", b"O|1|S1||^^^GLU", b"R|1|^^^GLU|5.4", b"L|1|N"]


def test_e1381_is_in_transfer_from_enq_to_eot() -> None:
    link = e1381.E1381Link(e1381.Role.HOST)
    assert not link.in_transfer
    link.receive_data(bytes([e1381.ENQ]), 0.0)
    assert link.in_transfer
    for frame in e1381.build_frames(RECORDS):
        link.receive_data(frame, 0.0)
    assert link.holding and link.in_transfer
    link.accept_message(0.0)
    assert link.in_transfer  # the final ACK went, the EOT has not come yet
    link.receive_data(bytes([e1381.EOT]), 0.0)
    assert not link.in_transfer


def test_raw_is_in_transfer_until_the_l_record() -> None:
    link = RawLink()
    link.receive_data(b"H|\\^&\rP|1\rR|1|^^", 0.0)
    assert link.in_transfer
    link.receive_data(b"^GLU|5.4\rL|1|N\r", 0.0)
    assert link.in_transfer  # the message waits in the link for the shell
    while link.next_event() is not None:
        pass
    assert not link.in_transfer


def test_hl7_is_in_transfer_inside_a_block_and_while_a_message_is_held() -> None:
    receiver = Hl7Receiver()
    payload = b"MSH|^~\\&|AN|LAB|LB|LAB|20240101||ORU^R01|1|P|2.5\rOBX|1|NM|GLU||5.4\r"
    block = mllp.frame(payload)
    receiver.receive_data(block[:10], 0.0)
    assert receiver.in_transfer
    receiver.receive_data(block[10:], 0.0)
    assert receiver.next_event() is not None and receiver.in_transfer  # held until answered
    receiver.accept_message(0.0, Answer(Outcome.ACCEPTED, datetime.now(UTC)))
    assert not receiver.in_transfer
