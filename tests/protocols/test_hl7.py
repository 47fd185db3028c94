"""What labbridge builds for the LIS is valid HL7 v2.5.1 (hl7apy strict) and reads back (python-hl7)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import hl7
from hl7apy.core import Message
from hl7apy.parser import parse_message
from hypothesis import given
from hypothesis import strategies as st

from labbridge.model import Result
from labbridge.protocols import mllp
from labbridge.protocols.hl7 import Party, build_oru_r01, build_oul_r22, escape, parse_ack
from labbridge.protocols.hl7_parse import parse_message as parse_message_ours
from labbridge.protocols.hl7_parse import unescape

RESULTS = [
    Result(instrument="arlon-chem-1", sample_id="S0001", test_code="GLUC", instrument_test_code="GLU",
           value="5.4", units="mmol/L", reference_range="3.9 to 6.1", flags=("H",),
           measured_at="2026-11-23T10:15:00+01:00", patient_id="PAT1"),
    Result(instrument="arlon-chem-1", sample_id="S0001", test_code="HIV", instrument_test_code="HIV",
           value="Non-reactive^x|y", measured_at="2026-11-23T10:15:00+01:00", patient_id="PAT1"),
]


def build() -> bytes:
    return build_oru_r01(RESULTS, control_id="LB0123456789ABCDEF0", created_at=datetime(2026, 11, 23, tzinfo=UTC),
                         sender=Party("LABBRIDGE", "ARLON"), receiver=Party("LIS", "LAB"))


def test_oru_r01_passes_hl7apy_strict_validation() -> None:
    text = build().decode("utf-8")
    msg: Message = parse_message(text, validation_level=1, find_groups=True)  # 1 = STRICT
    assert msg.validate() is True


def test_oru_r01_reads_back_with_python_hl7() -> None:
    msg = hl7.parse(build().decode("utf-8"))
    assert str(msg.segment("MSH")[10]) == "LB0123456789ABCDEF0"
    obx = msg.segments("OBX")
    assert str(obx[0][5]) == "5.4" and str(obx[0][2]) == "NM"
    assert msg.unescape(str(obx[1][5])) == "Non-reactive^x|y"
    assert str(obx[0][3][0][3]) == "GLU"


def test_escape() -> None:
    assert escape("a|b^c~d\\e&f") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"


def test_parse_ack_reads_code_control_id_and_reason() -> None:
    ack = parse_ack(b"MSH|^~\\&|LIS|LAB|LABBRIDGE||20261123||ACK^R01^ACK|1|P|2.5.1\rMSA|AE|LB1|unknown test\r"
                    b"ERR|||207^Application internal error^HL70357")
    assert ack is not None
    assert (ack.code, ack.control_id, ack.accepted) == ("AE", "LB1", False)
    assert "unknown test" in ack.text
    assert parse_ack(b"MSH|^~\\&|x\rPID|1") is None
    assert parse_ack(b"garbage") is None


def test_oru_r01_without_patient_is_valid_too() -> None:
    import dataclasses

    anonymous = [dataclasses.replace(r, patient_id="") for r in RESULTS]
    text = build_oru_r01(anonymous, control_id="LB1", created_at=datetime(2026, 11, 23, tzinfo=UTC),
                         sender=Party("LABBRIDGE"), receiver=Party("LIS")).decode("utf-8")
    assert "PID" not in text
    assert parse_message(text, validation_level=1, find_groups=True).validate() is True


def test_oul_r22_passes_hl7apy_strict_validation_and_reads_back() -> None:
    import dataclasses

    for kind in ("patient", "qc"):
        results = [dataclasses.replace(r, kind=kind) for r in RESULTS]
        text = build_oul_r22(results, control_id="LB7", created_at=datetime(2026, 11, 23, tzinfo=UTC),
                             sender=Party("LABBRIDGE", "ARLON"), receiver=Party("LIS", "LAB")).decode("utf-8")
        assert parse_message(text, validation_level=1, find_groups=True).validate() is True
        msg = hl7.parse(text)
        assert str(msg.segment("MSH")[9]) == "OUL^R22^OUL_R22"
        assert str(msg.segment("SPM")[2][0][0]).split("&")[0] == "S0001"
        assert str(msg.segment("SPM")[11][0][0]) == ("Q" if kind == "qc" else "P")
        assert msg.unescape(str(msg.segments("OBX")[1][5])) == "Non-reactive^x|y"


CONTROL_VALUES = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=30)


@given(CONTROL_VALUES)
def test_escaped_values_carry_no_control_character_and_read_back(value: str) -> None:
    out = escape(value)
    assert not any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in out)
    assert unescape(out) == value


def test_an_analyzers_fs_vt_and_nul_never_reach_the_lis_raw() -> None:
    """FS and VT are MLLP's block delimiters: one raw in a value would cut the LIS's message short."""
    hostile = [Result(instrument="arlon-chem-1", sample_id="S\x0b1", test_code="GLUC", instrument_test_code="GLU",
                      value="5.4\x1c\r\x0b\x00", units="mmol/L\x1c", measured_at="2026-11-23T10:15:00+01:00",
                      patient_id="P\x001")]
    payload = build_oru_r01(hostile, control_id="LB0123456789ABCDEF0", created_at=datetime(2026, 11, 23, tzinfo=UTC),
                            sender=Party("LABBRIDGE", "ARLON"), receiver=Party("LIS", "LAB"))
    assert not any(b < 0x20 and b != 0x0D for b in payload)  # only the segment separators
    [block] = [e for e in mllp.MllpDecoder().receive_data(mllp.frame(payload)) if isinstance(e, mllp.MllpMessage)]
    msg = hl7.parse(block.payload.decode("utf-8"))
    assert len(msg.segments("OBX")) == 1
    ours = parse_message_ours(block.payload)
    obx = next(s for s in ours.segments if s.name == "OBX")
    assert ours.value(obx, 5) == "5.4\x1c\r\x0b\x00"


# What labbridge sent for RESULTS before issue 20 (ORU^R01 and OUL^R22, byte for byte).
BEFORE_ISSUE_20_ORU = (
    b'MSH|^~\\&|LABBRIDGE|ARLON|LIS|LAB|20261123000000+0000||ORU^R01^ORU_R01|LB0123456789ABCDEF0|P|2.5.1'
    b'||||||UNICODE UTF-8\r'
    b'PID|1||PAT1^^^^PI||""\r'
    b'OBR|1|S0001|S0001|arlon-chem-1^arlon-chem-1 results^L|||20261123101500+0100||||||||||||||||||F\r'
    b'OBX|1|NM|GLUC^^L^GLU^^99INST||5.4|mmol/L|3.9 to 6.1|H|||F|||20261123101500+0100||||arlon-chem-1\r'
    b'OBX|2|ST|HIV^^L^HIV^^99INST||Non-reactive\\S\\x\\F\\y||||||F|||20261123101500+0100||||arlon-chem-1\r'
)
BEFORE_ISSUE_20_OUL = (
    b'MSH|^~\\&|LABBRIDGE|ARLON|LIS|LAB|20261123000000+0000||OUL^R22^OUL_R22|LB1|P|2.5.1'
    b'||||||UNICODE UTF-8|||LAB-29^IHE\r'
    b'PID|1||PAT1^^^^PI||""\r'
    b'SPM|1|S0001&LABBRIDGE||UNK^Unknown^HL70487|||||||P^Patient^HL70369\r'
    b'OBR|1|S0001|S0001|arlon-chem-1^arlon-chem-1 results^L|||20261123101500+0100||||||||||||||||||F\r'
    b'OBX|1|NM|GLUC^^L^GLU^^99INST||5.4|mmol/L|3.9 to 6.1|H|||F|||20261123101500+0100||||arlon-chem-1\r'
    b'OBX|2|ST|HIV^^L^HIV^^99INST||Non-reactive\\S\\x\\F\\y||||||F|||20261123101500+0100||||arlon-chem-1\r'
)


def test_results_stored_before_issue_20_render_for_the_lis_exactly_as_before() -> None:
    """A stored row (its JSON from before the comments, names and patient fields existed) reads back and, with
    a destination's default settings, renders byte for byte as labbridge sent it then."""
    stored = [Result.from_json(json.loads(json.dumps(r.to_json()))) for r in RESULTS]
    assert build_oru_r01(stored, control_id="LB0123456789ABCDEF0", created_at=datetime(2026, 11, 23, tzinfo=UTC),
                         sender=Party("LABBRIDGE", "ARLON"), receiver=Party("LIS", "LAB")) == BEFORE_ISSUE_20_ORU
    assert build_oul_r22(stored, control_id="LB1", created_at=datetime(2026, 11, 23, tzinfo=UTC),
                         sender=Party("LABBRIDGE", "ARLON"), receiver=Party("LIS", "LAB")) == BEFORE_ISSUE_20_OUL


OBX_TEXT = st.text(alphabet="ab1 .|^~\\&", max_size=8)


@given(test_code=OBX_TEXT.filter(bool), test_name=OBX_TEXT, instrument_code=OBX_TEXT.filter(bool), value=OBX_TEXT,
       units=OBX_TEXT, reference_range=OBX_TEXT, operator=OBX_TEXT, equipment_id=OBX_TEXT,
       flags=st.lists(OBX_TEXT.filter(bool), max_size=3), plain_first=st.booleans())
def test_every_obx_field_reads_back_as_the_result_had_it(test_code: str, test_name: str, instrument_code: str,
                                                         value: str, units: str, reference_range: str,
                                                         operator: str, equipment_id: str, flags: list[str],
                                                         plain_first: bool) -> None:
    """Each value an OBX carries (code, name, instrument code, value, units, range, flags, operator, the
    instrument and its equipment ID) is escaped where it must be and reads back as it was, beside a result with
    nothing to escape (results are escaped one by one: a plain one must not change how the next is written)."""
    odd = Result(instrument="chem|1^a", sample_id="S1", test_code=test_code, test_name=test_name,
                 instrument_test_code=instrument_code, value=value, units=units, reference_range=reference_range,
                 flags=tuple(flags), operator=operator, equipment_id=equipment_id,
                 measured_at="2026-11-23T10:15:00+01:00")
    plain = Result(instrument="chem-1", sample_id="S1", test_code="GLU", instrument_test_code="GLU", value="5.4",
                   units="mmol/L", measured_at="2026-11-23T10:15:00+01:00")
    payload = build_oru_r01([plain, odd] if plain_first else [odd, plain], control_id="LB1",
                            created_at=datetime(2026, 11, 23, tzinfo=UTC), sender=Party("LABBRIDGE"),
                            receiver=Party("LIS"))
    msg = parse_message_ours(payload)
    obx = [s for s in msg.segments if s.name == "OBX"][1 if plain_first else 0]
    assert [msg.value(obx, 3, n) for n in (1, 2, 4)] == [test_code, test_name, instrument_code]
    assert [msg.value(obx, n, 0) for n in (5, 6, 7, 16)] == [value, units, reference_range, operator]
    assert (msg.repeats(obx, 8, 0) if flags else []) == flags
    assert msg.repeats(obx, 18, 0) == (["chem|1^a", equipment_id] if equipment_id else ["chem|1^a"])
