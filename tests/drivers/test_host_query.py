"""Host queries and order download on the generic ASTM driver: Q decode, reply and push encode."""

from __future__ import annotations

import zoneinfo
from datetime import datetime

import pytest
from labbridge_driver_astm import GenericAstmDriver

from labbridge.driver import DecodeContext, load_driver
from labbridge.errors import DecodeError
from labbridge.model import HostQuery, OrderLine
from labbridge.protocols.e1394 import parse_records

AT = datetime(2026, 11, 23, 10, 15, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Brussels"))


def context() -> DecodeContext:
    return DecodeContext(instrument="chem-1", timezone=zoneinfo.ZoneInfo("Europe/Brussels"),
                         test_map={"GLU": "GLUC", "CREA": "CREAT"})


def decode_query(q_record: bytes) -> HostQuery:
    decoded = GenericAstmDriver().decode([b"H|\\^&|||VITROS", q_record, b"L|1|N"], context())
    assert decoded.results == []
    assert len(decoded.queries) == 1
    return decoded.queries[0]


def test_vitros_query_vector() -> None:
    # PROTOCOLS.md R-B11: VITROS sends Q-5 as a bare ALL.
    q = decode_query(b"Q|1|^1068687||ALL||||||||O")
    assert q == HostQuery(instrument="chem-1", sample_ids=("1068687",), test_codes=(), request_status="O")
    assert not q.cancels


def test_indiko_query_vector() -> None:
    q = decode_query(b"Q|1|^2240801063^^||^^^ALL^||||||||O")
    assert q.sample_ids == ("2240801063",) and q.test_codes == () and q.request_status == "O"


def test_query_for_several_specimens_and_named_tests_maps_codes_to_lis() -> None:
    q = decode_query(b"Q|1|^S1\\^S2\\P9^S3||^^^GLU\\^^^K||||||||O")
    assert q.sample_ids == ("S1", "S2", "S3") and q.test_codes == ("GLUC", "K")


def test_query_for_all_specimens_and_cancel() -> None:
    assert decode_query(b"Q|1|ALL||||||||||O").all_samples
    assert decode_query(b"Q|1|^ALL||||||||||O").all_samples
    cancel = decode_query(b"Q|1|^S1||||||||||A")
    assert cancel.cancels and cancel.request_status == "A"


def test_query_without_specimen_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="Q-3"):
        GenericAstmDriver().decode([b"H|\\^&", b"Q|1|||ALL||||||||O", b"L|1|N"], context())


def test_query_reply_lists_orders_then_y_and_z() -> None:
    driver = load_driver("astm-generic")
    assert isinstance(driver, GenericAstmDriver) and driver.supports_orders
    lines = [OrderLine("S1", ("GLUC", "K"), priority="stat", patient_id="P1"),
             OrderLine("S1", ("TSH",), status="no_order", patient_id="P1"),
             OrderLine("S9", (), status="unknown_sample")]
    records = driver.encode_query_reply(HostQuery("chem-1", ("S1", "S9")), lines, context(), at=AT)
    assert records[0] == b"H|\\^&|||labbridge|||||chem-1||P|LIS2-A2|20261123101500"
    assert records[1:] == [
        b"P|1|P1",
        b"O|1|S1||^^^GLU\\^^^K|S|20261123101500|||||N||||||||||||||Q",
        b"O|2|S1||^^^TSH|||||||||||||||||||||Y",
        b"P|2",
        b"O|1|S9|||||||||||||||||||||||Z",
        b"L|1|N",
    ]
    # What the analyzer reads back: O-3, O-5 test codes, O-26 -- with labbridge's own parser.
    parsed = parse_records(records)
    assert [(r.field(3), r.field(26)) for r in parsed if r.type == "O"] == [("S1", "Q"), ("S1", "Y"), ("S9", "Z")]
    assert parsed[2].component(5, 4, repeat=1) == "K"


def test_query_reply_with_nothing_found_ends_with_l3_i() -> None:
    records = GenericAstmDriver().encode_query_reply(
        HostQuery("chem-1", ("S9",)), [OrderLine("S9", (), status="unknown_sample")], context(), at=AT)
    assert records[-1] == b"L|1|I"
    records = GenericAstmDriver().encode_query_reply(HostQuery("chem-1", (), all_samples=True), [], context(),
                                                     at=AT)
    assert [r[:1] for r in records] == [b"H", b"L"] and records[-1] == b"L|1|I"


def test_pushed_orders_have_report_type_o_and_escaped_values() -> None:
    lines = [OrderLine("S|1", ("CREAT",), patient_id="P^1")]
    records = GenericAstmDriver().encode_orders(lines, context(), at=AT)
    assert records[1] == b"P|1|P&S&1"
    assert records[2] == b"O|1|S&F&1||^^^CREA|R|20261123101500|||||N||||||||||||||O"
    assert records[-1] == b"L|1|N"
    parsed = parse_records(records)
    assert parsed[2].field(3) == "S|1" and parsed[1].field(3) == "P^1"


# ---- profile drivers: the same Q decoding and encoders, turned on by the profile ----------------------


def test_vitros_profile_driver_decodes_the_vitros_query_like_the_generic_driver() -> None:
    vitros = load_driver("ortho-vitros")
    assert vitros.supports_orders
    records = [b"H|\\^&|||VITROS5600^3.7.2^J56001234", b"Q|1|^1068687||ALL||||||||O", b"L|1|N"]
    decoded = vitros.decode(records, context())
    assert decoded.results == []
    assert decoded.queries == GenericAstmDriver().decode(records, context()).queries == [
        HostQuery(instrument="chem-1", sample_ids=("1068687",), test_codes=(), request_status="O")]
    named = vitros.decode([b"H|\\^&", b"Q|1|^S1||^^^GLU\\^^^K||||||||O", b"L|1|N"], context()).queries
    assert named[0].test_codes == ("GLUC", "K")
    with pytest.raises(DecodeError, match="Q-3"):
        vitros.decode([b"H|\\^&", b"Q|1|||ALL||||||||O", b"L|1|N"], context())


def test_vitros_profile_driver_answers_and_pushes_with_the_shared_encoders() -> None:
    vitros, generic = load_driver("ortho-vitros"), load_driver("astm-generic")
    lines = [OrderLine("S1", ("GLUC", "K"), priority="stat", patient_id="P1"),
             OrderLine("S9", (), status="unknown_sample")]
    query = HostQuery("chem-1", ("S1", "S9"))
    reply = vitros.encode_query_reply(query, lines, context(), at=AT)
    assert reply == generic.encode_query_reply(query, lines, context(), at=AT)
    assert reply[2] == b"O|1|S1||^^^GLU\\^^^K|S|20261123101500|||||N||||||||||||||Q"
    assert vitros.encode_orders(lines[:1], context(), at=AT) == generic.encode_orders(lines[:1], context(), at=AT)
    nothing = vitros.encode_query_reply(query, [OrderLine("S9", (), status="unknown_sample")], context(), at=AT)
    assert nothing[-1] == b"L|1|I"


def test_profile_without_host_query_leaves_q_records_alone_and_refuses_to_encode() -> None:
    maglumi = load_driver("snibe-maglumi")
    assert not maglumi.supports_orders
    decoded = maglumi.decode([b"H|\\^&|||MAGLUMI", b"Q|1|^S1||ALL||||||||O", b"L|1|N"], context())
    assert decoded.queries == [] and decoded.results == []
    with pytest.raises(NotImplementedError, match="snibe-maglumi"):
        maglumi.encode_query_reply(HostQuery("chem-1", ("S1",)), [], context(), at=AT)
    with pytest.raises(NotImplementedError, match="snibe-maglumi"):
        maglumi.encode_orders([], context(), at=AT)
