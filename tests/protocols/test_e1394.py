from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labbridge.errors import RemoteProtocolError
from labbridge.protocols.e1394 import (
    DEFAULT_DELIMITERS,
    Delimiters,
    delimiters_from_header,
    encode_record,
    escape,
    parse_records,
    unescape,
)


def test_fields_components_and_repeats_use_standard_numbering() -> None:
    recs = parse_records([b"H|\\^&|||cobas^1.0", b"R|1|^^^GLU^1|5.4|mmol/L|3.9 to 6.1|H\\A||F||||20261123101500"])
    r = recs[1]
    assert r.type == "R"
    assert r.component(3, 4) == "GLU"
    assert r.field(4) == "5.4"
    assert r.repeats(7) == ["H", "A"]
    assert r.field(13) == "20261123101500"
    assert r.field(40) == ""  # absent trailing fields read as empty
    assert recs[0].component(5, 1) == "cobas"
    assert recs[0].repeats(2) == ["\\^&"]  # H-2 is the delimiter definition, never split


def test_delimiters_are_read_from_each_header() -> None:
    # GeneXpert uses H|@^\| (repeat @, component ^, escape \)
    recs = parse_records([b"H|@^\\|||GeneXpert", b"R|1|^^^MTB|POS@NEG|"])
    assert recs[1].delimiters == Delimiters("|", "@", "^", "\\")
    assert recs[1].repeats(4) == ["POS", "NEG"]


def test_record_type_is_case_insensitive() -> None:
    assert parse_records([b"r|1|^^^K|4.1"])[0].type == "R"


@pytest.mark.parametrize("bad", ["H|", "H||^&|", "Ha^&|", "X|\\^&"])
def test_bad_delimiter_definitions_are_a_remote_protocol_error(bad: str) -> None:
    with pytest.raises(RemoteProtocolError):
        delimiters_from_header(bad)


def test_escape_sequences() -> None:
    d = DEFAULT_DELIMITERS
    assert unescape("a&F&b&S&c&R&d&E&e", d) == "a|b^c\\d&e"
    assert unescape("line&X0A&break", d) == "line\nbreak"
    assert unescape("&H&bold&N&", d) == "bold"
    assert unescape("&Zvendor& kept", d) == "&Zvendor& kept"
    assert unescape("dangling & sign", d) == "dangling & sign"


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=60))
def test_escape_round_trip(text: str) -> None:
    d = DEFAULT_DELIMITERS
    encoded = escape(text, d)
    assert all(c not in encoded for c in "|\\^") or text == ""
    assert unescape(encoded, d) == text


def test_encode_record_builds_what_parse_reads() -> None:
    raw = encode_record("R", ["1", ["", "", "", "GLU"], "5|4", "mmol/L", "", [["H"], ["A"]]])
    rec = parse_records([b"H|\\^&", raw])[1]
    assert rec.component(3, 4) == "GLU"
    assert rec.field(4) == "5|4"
    assert rec.repeats(7) == ["H", "A"]
    assert encode_record("H", ["", "", ["Sim", "1"]]) == b"H|\\^&|||Sim^1"
