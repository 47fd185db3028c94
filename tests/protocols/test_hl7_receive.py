"""Reading what analyzers send (MSH-2, MSH-18, escapes after split) and acknowledging it (MSA, ERR)."""

from __future__ import annotations

import contextlib
import pickle
from datetime import UTC, datetime

import hl7
import pytest
from hl7apy.parser import parse_message as hl7apy_parse
from hypothesis import given
from hypothesis import strategies as st

from labbridge.errors import LocalProtocolError
from labbridge.protocols import mllp
from labbridge.protocols.hl7_ack import Hl7Received, Hl7Receiver, IncompleteBlock, Outcome, ack_codes, build_ack
from labbridge.protocols.hl7_parse import (
    Hl7Message,
    Hl7ParseError,
    Segment,
    Separators,
    escape,
    parse_message,
    unescape,
)
from labbridge.protocols.link import Answer

NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
LAW = ("MSH|^~\\&|BA400|LAB1|LIS|HOSP|20261123101500||OUL^R22^OUL_R22|MSG0001|P|2.5.1|||ER|AL||UNICODE UTF-8"
       "|||LAB-29^IHE\rPID|1||PAT1||Dupont^Zoé\rSPM|1|S0001&BA400||SER\rOBR|1|\"\"||GLU\r"
       "OBX|1|NM|GLU^Glucose^99ROC||5.4|mmol/L\r")

delimiters = st.lists(st.sampled_from("|^~\\&#!$%*@?"), min_size=5, max_size=5, unique=True).map(
    lambda c: Separators(c[0], c[1], c[2], c[3], c[4]))


@given(st.text(), delimiters)
def test_escape_round_trip_with_any_delimiters(value: str, seps: Separators) -> None:
    encoded = escape(value, seps)
    for c in (seps.field, seps.component, seps.repetition, seps.subcomponent, "\r", "\n"):
        assert c not in encoded
    assert unescape(encoded, seps) == value


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_escaped_value_survives_a_whole_message_round_trip(value: str) -> None:
    """Escapes decoded after splitting: a value holding every delimiter comes back from its field."""
    text = f"MSH|^~\\&|A|B|C|D|20261123||ORU^R01|1|P|2.5.1||||||UNICODE UTF-8\rOBX|1|ST|X||{escape(value)}|u\r"
    msg = parse_message(text.encode("utf-8"))
    obx = msg.segments[1]
    assert msg.value(obx, 5, 0) == value
    assert msg.value(obx, 6) == "u"


def test_escapes_decoded_as_python_hl7_decodes_them() -> None:
    raw = "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\\\.br\\g"
    assert unescape(raw) == "a|b^c&d~e\\fA\ng"
    assert hl7.parse(f"MSH|^~\\&|x\rOBX|1|ST|X||{raw}").unescape(raw).replace("\r", "\n") == unescape(raw)
    assert unescape("\\Zvendor\\ and \\unterminated") == "\\Zvendor\\ and \\unterminated"


def _value_by_split(msg: Hl7Message, seg: Segment, field: int, component: int, repeat: int, sub: int) -> str:
    """What ``Hl7Message.value`` means, by splitting everything (its first version)."""
    raw = seg.raw(field)
    if seg.name == "MSH" and field <= 2:
        return raw
    seps = msg.separators
    reps = raw.split(seps.repetition) if raw else []
    if repeat > len(reps):
        return ""
    text = reps[repeat - 1]
    if component:
        comps = text.split(seps.component)
        if component > len(comps):
            return ""
        text = comps[component - 1]
        if sub:
            subs = text.split(seps.subcomponent)
            if sub > len(subs):
                return ""
            text = subs[sub - 1]
    return unescape(text, seps, msg.charset)


@given(st.lists(st.text(alphabet="ab^~&\\FSX", max_size=12), min_size=1, max_size=6),
       st.integers(1, 7), st.integers(0, 4), st.integers(1, 4), st.integers(0, 3))
def test_a_value_read_is_the_piece_a_full_split_gives(fields: list[str], field: int, component: int, repeat: int,
                                                      sub: int) -> None:
    """``value`` finds the first repetition and component and splits no more than the piece asked: the same
    piece as splitting every delimiter, escapes decoded, absent pieces empty."""
    msg = parse_message(("MSH|^~\\&|A|B|C|D|20261123||ORU^R01|1|P|2.5\rOBX|" + "|".join(fields) + "\r").encode())
    obx = msg.segments[1]
    assert msg.value(obx, field, component, repeat, sub) == _value_by_split(msg, obx, field, component, repeat, sub)


ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def test_the_separators_and_names_remembered_are_bounded() -> None:
    """What the parser remembers of the messages it read (separators as declared, segment names found valid)
    stays small whatever arrives: a few hundred entries of a few characters each."""
    from labbridge.protocols import hl7_parse

    for i in range(400):
        enc = "^~\\&" + "#" * (i % 3) + "x" * (i // 3 % 40) * 100
        with contextlib.suppress(Hl7ParseError):
            name = "Z" + ALNUM[i // 36 % 36] + ALNUM[i % 36]  # 400 names, all valid
            parse_message(f"MSH|{enc}|A|B|C|D|1||ORU^R01|{i}|P|2.5\r{name}|x\r".encode())
    assert len(hl7_parse._SEPARATORS_SEEN) <= 256 and all(len(k) <= 8 for k in hl7_parse._SEPARATORS_SEEN)
    assert len(hl7_parse._NAMES_SEEN) <= 256
    msg = parse_message(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|9|P|2.5\rOBX|1|NM|GLU||5.4\r")
    assert msg.separators == Separators() and msg.value(msg.segments[1], 5) == "5.4"


def test_parsed_segments_and_messages_are_read_only_values() -> None:
    """A parsed message is shared by the driver, the acknowledgement and the capture: nothing may change it, on
    the compiled build (native read-only attributes) and the pure-Python one (labbridge.readonly) alike."""
    msg = parse_message(LAW.encode())
    seg = msg.segments[1]
    for obj, name, value in ((seg, "fields", ("ZZZ",)), (seg, "name", "ZZZ"), (msg, "charset", "ascii"),
                             (msg, "segments", ())):
        with pytest.raises(AttributeError):
            setattr(obj, name, value)
        with pytest.raises(AttributeError):
            delattr(obj, name)
    assert seg.name == "PID" and seg.fields[3] == "PAT1" and msg.charset == "utf-8"
    again = parse_message(LAW.encode())
    assert again == msg and hash(again) == hash(msg)
    assert again.segments[1] == seg and hash(again.segments[1]) == hash(seg)
    assert pickle.loads(pickle.dumps(seg)) == seg
    assert seg != again.segments[2] and "PAT1" in repr(seg)


def test_unicode_is_utf8_never_utf16_and_latin1_is_read_as_declared() -> None:
    name = "Zoé Müller"
    for declared in ("UNICODE", "UNICODE UTF-8"):
        text = f"MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.3.1||||||{declared}\rPID|1||P1||{name}\r"
        msg = parse_message(text.encode("utf-8"))
        assert msg.charset == "utf-8"
        assert msg.value(msg.segments[1], 5, 0) == name
    text = f"MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.3.1||||||8859/1\rPID|1||P1||{name}\r"
    msg = parse_message(text.encode("latin-1"))
    assert msg.value(msg.segments[1], 5, 0) == name
    with pytest.raises(Hl7ParseError) as err:
        parse_message(b"MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.5.1||||||UNICODE UTF-16\r")
    assert err.value.ack_code == "AR" and "MLLP" in err.value.reason


def test_delimiters_are_read_from_each_message_and_lf_is_accepted() -> None:
    msg = parse_message(b"MSH#$%*!#A##B##20261123##ORU$R01#7#P#2.5.1\nOBX#1#ST#X##a*F*b$c\n")
    assert msg.separators == Separators("#", "$", "%", "*", "!")
    assert (msg.message_type, msg.control_id, msg.version) == ("ORU^R01", "7", "2.5.1")
    assert msg.value(msg.segments[1], 5, 1) == "a#b"


@pytest.mark.parametrize(("payload", "code", "words"), [
    (b"PID|1||P1\rOBX|1|NM|GLU||5", "AE", "does not start with an MSH"),
    (b"", "AE", "does not start with an MSH"),
    (b"MSH|^^\\&|A||B||20261123||ORU^R01|1|P|2.5.1", "AE", "encoding characters"),
    (b"MSHA^~\\&|A", "AE", "encoding characters"),
    (b"MSH|^~\\&|A||B||2026", "AR", "MSH-9, MSH-10, MSH-12"),
    (b"MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.5.1\rOB", "AE", "segment 2"),
    (b"MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.5.1||||||UNICODE UTF-8\rPID|\xff\xfe", "AE", "not valid utf-8"),
    (b"MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.5.1||||||KLINGON\r", "AR", "unknown character set"),
])
def test_malformed_messages_raise_only_the_documented_error_with_a_reason(payload: bytes, code: str,
                                                                         words: str) -> None:
    with pytest.raises(Hl7ParseError) as err:
        parse_message(payload)
    assert err.value.ack_code == code
    assert words in err.value.reason


@given(st.binary(max_size=300))
def test_any_bytes_give_a_message_or_the_documented_error(data: bytes) -> None:
    """Any other exception (IndexError, UnicodeError...) would be a bug and fails this test."""
    with contextlib.suppress(Hl7ParseError):
        parse_message(b"MSH|^~\\&|" + data)
    with contextlib.suppress(Hl7ParseError):
        parse_message(data)


@pytest.mark.parametrize(("msh15", "msh16", "outcome", "stored", "expected"), [
    ("", "", Outcome.ACCEPTED, True, ["AA"]),
    ("", "", Outcome.ERROR, True, ["AE"]),
    ("", "", Outcome.REJECTED, False, ["AR"]),
    ("AL", "AL", Outcome.ACCEPTED, True, ["CA", "AA"]),
    ("AL", "NE", Outcome.ACCEPTED, True, ["CA"]),
    ("ER", "AL", Outcome.ACCEPTED, True, ["AA"]),  # BA400: no commit ACK unless an error
    ("ER", "AL", Outcome.ACCEPTED, False, ["CR"]),  # not stored: commit reject, no application ACK
    ("AL", "ER", Outcome.ACCEPTED, True, ["CA"]),
    ("AL", "ER", Outcome.ERROR, True, ["CA", "AE"]),
    ("AL", "SU", Outcome.ERROR, True, ["CA"]),
    ("NE", "NE", Outcome.ACCEPTED, True, []),
    ("", "0", Outcome.ACCEPTED, True, ["AA"]),  # Mindray: MSH-16 holds the result type, not a condition
])
def test_acknowledgement_modes(msh15: str, msh16: str, outcome: Outcome, stored: bool,
                               expected: list[str]) -> None:
    assert ack_codes(msh15, msh16, outcome=outcome, stored=stored) == expected


def test_enhanced_mode_unreadable_message_gets_commit_error() -> None:
    assert ack_codes("AL", "AL", outcome=Outcome.ERROR, stored=True, readable=False) == ["CE"]


def _acks(data: bytes) -> list[bytes]:
    return [e.payload for e in mllp.MllpDecoder().receive_data(data) if isinstance(e, mllp.MllpMessage)]


def _ack_for(payload: bytes, outcome: Outcome, *, stored: bool = True, text: str = "", code: str = "") -> list[bytes]:
    receiver = Hl7Receiver()
    receiver.receive_data(mllp.frame(payload), 0.0)
    event = receiver.next_event()
    assert isinstance(event, Hl7Received)
    assert receiver.holding and receiver.data_to_send() == b""  # nothing before the shell's answer
    answer = Answer(outcome, NOW, text, code)
    if stored:
        receiver.accept_message(0.0, answer)
    else:
        receiver.reject_message(0.0, answer)
    assert not receiver.holding
    return _acks(receiver.data_to_send())


def test_receiver_holds_each_message_until_it_is_answered_and_keeps_the_rest_in_order() -> None:
    """The Link contract: one message at a time; input behind a held message is kept and taken after it."""
    receiver = Hl7Receiver()
    first = LAW.replace("MSG0001", "M1").encode()
    second = LAW.replace("MSG0001", "M2").encode()
    receiver.receive_data(mllp.frame(first) + mllp.frame(second)[:20], 0.0)
    event = receiver.next_event()
    assert isinstance(event, Hl7Received) and event.raw == first
    receiver.receive_data(mllp.frame(second)[20:] + b"junk", 0.0)
    assert receiver.next_event() is None  # held: the second waits for the first's answer
    receiver.accept_message(0.0, Answer(Outcome.ACCEPTED, NOW))
    [ack] = _acks(receiver.data_to_send())
    assert b"MSA|AA|M1" in ack
    event = receiver.next_event()
    assert isinstance(event, Hl7Received) and event.raw == second
    receiver.release()  # answered by a message of the shell's own: no ACK queued
    assert receiver.data_to_send() == b""
    assert receiver.next_event() == mllp.MllpJunk(4)
    receiver.receive_data(mllp.frame(first), 0.0)
    assert receiver.next_event() is not None
    with pytest.raises(LocalProtocolError):  # an HL7 answer needs its outcome and time
        receiver.accept_message(0.0)


def test_receiver_bounds_input_held_behind_a_message_and_reports_a_cut_off_block() -> None:
    receiver = Hl7Receiver(max_message=1000)
    receiver.receive_data(mllp.frame(LAW.encode()), 0.0)
    assert isinstance(receiver.next_event(), Hl7Received)
    receiver.receive_data(b"\x0b" + b"x" * 5000, 0.0)  # a flood while the message is being stored
    receiver.reject_message(0.0, Answer(Outcome.REJECTED, NOW, "could not store"))
    assert b"MSA|CR|MSG0001" in _acks(receiver.data_to_send())[0]  # enhanced mode: commit reject
    assert receiver.next_event() == mllp.MllpJunk(4001)  # beyond one message's bound: dropped, reported
    assert receiver.next_event() is None
    receiver.connection_lost()
    event = receiver.next_event()
    assert isinstance(event, IncompleteBlock) and event.raw == b"x" * 999


def test_ack_swaps_parties_echoes_msh10_and_version_and_passes_hl7apy_strict() -> None:
    [ack] = _ack_for(LAW.encode("utf-8"), Outcome.ACCEPTED)
    text = ack.decode("utf-8")
    parsed = hl7.parse(text)
    msh = parsed.segment("MSH")
    assert (str(msh[3]), str(msh[4]), str(msh[5]), str(msh[6])) == ("LIS", "HOSP", "BA400", "LAB1")
    assert str(msh[9]) == "ACK^R22^ACK" and str(msh[12]) == "2.5.1"
    assert str(parsed.segment("MSA")[1]) == "AA" and str(parsed.segment("MSA")[2]) == "MSG0001"
    assert hl7apy_parse(text, validation_level=1, find_groups=True).validate() is True


def test_error_ack_carries_the_reason_in_msa_and_err_and_passes_hl7apy_strict() -> None:
    [ack] = _ack_for(LAW.replace("ER|AL", "|").encode("utf-8"), Outcome.ERROR,
                     text="OBX without a test code | segment 5", code="207")
    text = ack.decode("utf-8")
    parsed = hl7.parse(text)
    assert str(parsed.segment("MSA")[1]) == "AE"
    assert parsed.unescape(str(parsed.segment("MSA")[3])) == "OBX without a test code | segment 5"
    err = parsed.segment("ERR")
    assert str(err[3]).startswith("207^") and str(err[4]) == "E"
    assert hl7apy_parse(text, validation_level=1, find_groups=True).validate() is True


def test_message_without_msh_still_gets_an_ae_with_the_reason() -> None:
    [ack] = _ack_for(b"PID|1||P1\rOBX|1|NM|GLU||5", Outcome.ERROR)
    parsed = hl7.parse(ack.decode())
    assert str(parsed.segment("MSA")[1]) == "AE"
    assert "MSH" in str(parsed.segment("MSA")[3])


def test_v231_error_ack_uses_err_1() -> None:
    msg = b"MSH|^~\\&|Mindray|BS|||20261123||ORU^R01|9|P|2.3.1||||0||UNICODE\rOBR|1|S1\r"
    [ack] = _ack_for(msg, Outcome.REJECTED, stored=False, text="could not store", code="207")
    parsed = hl7.parse(ack.decode())
    assert str(parsed.segment("MSH")[9]) == "ACK^R01^ACK"
    assert str(parsed.segment("MSA")[1]) == "AR" and str(parsed.segment("MSA")[2]) == "9"
    assert "207" in str(parsed.segment("ERR")[1])


def test_build_ack_without_header() -> None:
    ack = build_ack("AE", header=None, control_id="X1", now=NOW, text="no MSH")
    assert ack.startswith(b"MSH|^~\\&|") and b"MSA|AE||no MSH" in ack
