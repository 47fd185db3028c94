from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labbridge.errors import RemoteProtocolError
from labbridge.protocols.e1394 import (
    DEFAULT_DELIMITERS,
    Delimiters,
    Record,
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


# Pieces of record text: the delimiters of the three headers below, escape sequences written with '&' and
# with '%', and plain text.
_RECORD_TEXT = st.lists(st.sampled_from(["|", "\\", "^", "&", "!", "~", "*", "%", "@", "&F&", "&S&", "&R&", "&E&",
                                         "&X41&", "&H&", "%F%", "%S%", "%X41%", "A", "1", " ", "N", "."]),
                        max_size=16).map("".join)


@given(body=_RECORD_TEXT, header=st.sampled_from(["H|\\^&", "H!~*%", "H|@^&"]))
def test_a_plain_record_reads_as_the_general_path_reads_it(body: str, header: str) -> None:
    """A record with no escape and no repeat delimiter is read without the component cache (a fast path,
    performance issue 15); every field, repeat and component must read as the general path reads it. The
    general path is the same record with the fast path turned off. Bodies with escapes, repeats, empty
    fields and foreign delimiters are generated, so both sides of the guard are exercised."""
    d = delimiters_from_header(header)
    text = "R" + d.field + body.replace("|", d.field)
    fast = Record(text, d)
    general = Record(text, d)
    general._plain = False
    for number in range(8):
        assert fast.field(number) == general.field(number)
        assert fast.repeats(number) == general.repeats(number)
        assert fast.components(number) == general.components(number)
        for repeat in range(3):
            assert fast.components(number, repeat) == general.components(number, repeat)
            for index in range(5):
                assert fast.component(number, index, repeat) == general.component(number, index, repeat)
