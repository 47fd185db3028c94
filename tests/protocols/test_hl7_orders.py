"""LAW LAB-27/28 and LIS orders, sans-I/O: what labbridge builds passes hl7apy strict v2.5.1 validation and
reads back with python-hl7; what analyzers and LIS send is read right, and refused with a reason when wrong."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest
from hl7apy.parser import parse_message as hl7apy_parse

from labbridge.protocols.hl7 import Party
from labbridge.protocols.hl7_orders import (
    Awos,
    Hl7OrderError,
    awos_id,
    build_oml_o33,
    build_rsp_k11,
    order_of_awos,
    read_lis_orders,
    read_orl,
    read_wos_query,
)
from labbridge.protocols.hl7_parse import parse_message

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
ME = Party("LABBRIDGE", "ARLON")
ANALYZER = Party("BA400", "LAB")


def _msg(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


QBP = _msg("MSH|^~\\&|BA400|LAB|LABBRIDGE|ARLON|20261123100000||QBP^Q11^QBP_Q11|Q42|P|2.5.1||||||UNICODE UTF-8"
           "|||LAB-27^IHE",
           "QPD|WOS^Work Order Step^IHE_LABTF|QT1|S0001",
           "RCP|I||R")


def strict(payload: bytes) -> None:
    text = payload.decode("utf-8")
    assert hl7apy_parse(text, validation_level=1, find_groups=True).validate() is True


def test_wos_query_is_read_and_its_rsp_k11_is_strictly_valid() -> None:
    query = read_wos_query(parse_message(QBP))
    assert (query.kind, query.query_tag, query.specimen_ids) == ("WOS", "QT1", ("S0001",))
    rsp = build_rsp_k11(query, query_control_id="Q42", control_id="LBQ1", now=NOW, sender=ME, receiver=ANALYZER,
                        found=True)
    strict(rsp)
    back = hl7.parse(rsp.decode("utf-8"))
    assert str(back.segment("MSA")[2]) == "Q42"
    assert str(back.segment("QAK")[1]) == "QT1" and str(back.segment("QAK")[2]) == "OK"
    assert str(back.segment("QPD")[3]) == "S0001"


def test_wos_all_and_rack_queries_are_read() -> None:
    all_query = read_wos_query(parse_message(QBP.replace(b"WOS^", b"WOS_ALL^").replace(b"|S0001", b"|")))
    assert all_query.all_samples and all_query.specimen_ids == ()
    rack = read_wos_query(parse_message(QBP.replace(b"WOS^", b"WOS_BY_RACK^").replace(b"|S0001", b"||R12|3")))
    assert (rack.kind, rack.rack, rack.rack_position) == ("WOS_BY_RACK", "R12", "3")
    # The RSP^K11 echoes the QPD as the analyzer sent it (LAW); hl7apy's base QPD knows only QPD-1..3 (the
    # rest are the profile's "varies" parameters), so the strict check is on a query that uses only those.
    strict(build_rsp_k11(all_query, query_control_id="Q42", control_id="LBQ2", now=NOW, sender=ME,
                         receiver=ANALYZER, found=False))
    rsp = hl7.parse(build_rsp_k11(rack, query_control_id="Q42", control_id="LBQ3", now=NOW, sender=ME,
                                  receiver=ANALYZER, found=False).decode("utf-8"))
    assert str(rsp.segment("QPD")[4]) == "R12" and str(rsp.segment("QAK")[2]) == "NF"


@pytest.mark.parametrize(("qpd", "reason"), [
    ("QPD|XYZ^Other^L|QT1|S1", "not supported"),
    ("QPD|WOS^Work Order Step^IHE_LABTF||S1", "query tag"),
    ("QPD|WOS^Work Order Step^IHE_LABTF|QT1", "specimen ID"),
])
def test_bad_queries_are_refused_with_a_reason(qpd: str, reason: str) -> None:
    raw = _msg("MSH|^~\\&|BA400|LAB|LB||20261123||QBP^Q11^QBP_Q11|Q1|P|2.5.1", qpd)
    with pytest.raises(Hl7OrderError, match=reason):
        read_wos_query(parse_message(raw))


def test_oml_o33_with_work_and_with_none_is_strictly_valid() -> None:
    steps = [Awos(awos_id(7, 1), "GLU", "stat"), Awos(awos_id(7, 2), "CHO^L|x")]
    work = build_oml_o33("S0001", steps, control_id="LBO1", now=NOW, sender=ME, receiver=ANALYZER,
                         patient_id="PAT1")
    strict(work)
    parsed = hl7.parse(work.decode("utf-8"))
    orcs = parsed.segments("ORC")
    assert [str(o[1]) for o in orcs] == ["NW", "NW"]
    assert [str(o[2]) for o in orcs] == ["LB7-1", "LB7-2"]
    assert parsed.unescape(str(parsed.segments("OBR")[1][4][0][0])) == "CHO^L|x"
    assert str(parsed.segment("TQ1")[9][0][0]) == "S"
    none = build_oml_o33("S0002", [], control_id="LBO2", now=NOW, sender=ME, receiver=ANALYZER)
    strict(none)
    assert str(hl7.parse(none.decode("utf-8")).segment("ORC")[1]) == "DC"
    nothing = build_oml_o33("", [], control_id="LBO3", now=NOW, sender=ME, receiver=ANALYZER)  # WOS_ALL, no work
    strict(nothing)
    assert str(hl7.parse(nothing.decode("utf-8")).segment("SPM")[2]) == ""
    assert order_of_awos("LB7-2") == 7 and order_of_awos("X7-2") is None


def test_orl_o34_accepted_refused_and_duplicate() -> None:
    head = "MSH|^~\\&|BA400|LAB|LABBRIDGE|ARLON|20261123||ORL^O34^ORL_O34|A1|P|2.5.1"
    ok = read_orl(parse_message(_msg(head, "MSA|AA|LBO1", "SPM|1|S1", "ORC|OK|LB7-1", "ORC|UA|LB7-2",
                                     "ERR|||207^Application internal error^HL70357|E||||test CHO not on board")))
    assert ok.control_id == "LBO1" and ok.accepted == ("LB7-1",)
    assert ok.refused == {"LB7-2": "test CHO not on board"}
    dup = read_orl(parse_message(_msg(head, "MSA|AE|LBO1", "ORC|UA|LB7-1",
                                      "ERR|||205^Duplicate key identifier^HL70357|E||||AWOS ID already used")))
    assert dup.duplicates == ("LB7-1",) and not dup.refused
    ack = read_orl(parse_message(_msg(head.replace("ORL^O34^ORL_O34", "ACK^O33^ACK"), "MSA|AA|LBO1")))
    assert ack.code == "AA" and not ack.has_orders


def test_lis_orders_oml_o21_orm_o01_oml_o33() -> None:
    o21 = _msg("MSH|^~\\&|LIS|H|LABBRIDGE|an-0|20261123||OML^O21^OML_O21|M1|P|2.5.1",
               "PID|1||PAT9^^^^PI||Doe^John", "ORC|NW|P100", "TQ1|1||||||||S", "OBR|1|S9001||GLUC^Glucose^L",
               "ORC|NW|P101", "OBR|2|S9001||CHOL", "ORC|NW|P102", "OBR|3|S9002||GLUC")
    orders = read_lis_orders(parse_message(o21))
    assert [(o.sample_id, o.test_codes, o.priority, o.patient_id) for o in orders] == [
        ("S9001", ("GLUC", "CHOL"), "stat", "PAT9"), ("S9002", ("GLUC",), "routine", "PAT9")]
    orm = _msg("MSH|^~\\&|LIS|H|LABBRIDGE||20261123||ORM^O01|M2|P|2.3.1", "PID|1|PAT8", "ORC|NW|P200",
               "OBR|1|S8001||K|||||||||||||||||||||||^^^^^A")
    [o] = read_lis_orders(parse_message(orm))
    assert (o.sample_id, o.test_codes, o.priority, o.patient_id) == ("S8001", ("K",), "asap", "PAT8")
    o33 = _msg("MSH|^~\\&|LIS|H|LABBRIDGE||20261123||OML^O33^OML_O33|M3|P|2.5.1", "SPM|1|S7001&LIS",
               "ORC|NW|P300", "OBR|1|P300||NA")
    assert read_lis_orders(parse_message(o33))[0].sample_id == "S7001"


@pytest.mark.parametrize(("segments", "reason"), [
    (("ORC|CA|P1", "OBR|1|S1||GLU"), "order control CA"),
    (("ORC|NW|P1", "OBR|1|S1||"), "OBR-4"),
    (("PID|1||X",), "nothing to order"),
])
def test_lis_orders_refused_with_a_reason(segments: tuple[str, ...], reason: str) -> None:
    raw = _msg("MSH|^~\\&|LIS|H|LB||20261123||OML^O21^OML_O21|M1|P|2.5.1", *segments)
    with pytest.raises(Hl7OrderError, match=reason):
        read_lis_orders(parse_message(raw))
