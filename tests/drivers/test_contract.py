"""One contract every registered driver passes (STYLE.md: python-can / zigpy style plugin contract)."""

from __future__ import annotations

import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labbridge.driver import AstmDriver, DecodeContext, Driver, available_drivers, load_driver_class
from labbridge.errors import DecodeError
from labbridge.model import Decoded

DRIVERS = sorted(available_drivers())
ASTM_DRIVERS = [n for n in DRIVERS if load_driver_class(n).protocol == "astm"]

record_bytes = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
record_type = st.sampled_from([b"H|\\^&|", b"P|", b"O|", b"R|", b"C|", b"Q|", b"M|", b"S|", b"L|", b"h|@^\\|", b""])
records = st.lists(st.tuples(record_type, record_bytes).map(lambda t: t[0] + t[1]), max_size=12)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drivers never do I/O: any socket use during a contract test fails it."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a driver opened a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", DRIVERS)
def test_metadata(name: str) -> None:
    cls = load_driver_class(name)
    assert issubclass(cls, Driver)
    assert cls.name == name
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", cls.name)
    assert cls.vendor and cls.version and cls.models
    assert cls.protocol in ("astm", "hl7")


@pytest.mark.parametrize("name", ASTM_DRIVERS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=records)
def test_any_records_give_results_or_a_decode_error(name: str, message: list[bytes]) -> None:
    driver = load_driver_class(name)()
    assert isinstance(driver, AstmDriver)
    context = DecodeContext(instrument="contract")
    try:
        decoded = driver.decode(message, context)
    except DecodeError:
        return
    assert isinstance(decoded, Decoded)
    for result in decoded.results:
        assert result.instrument == "contract"
        assert result.sample_id and result.instrument_test_code
    # Pure: the same input gives the same output.
    assert driver.decode(message, context) == decoded


HL7_DRIVERS = [n for n in DRIVERS if load_driver_class(n).protocol == "hl7"]
segment_names = st.sampled_from(["PID", "PV1", "SPM", "OBR", "ORC", "OBX", "NTE", "ZZZ"])
hl7_segment = st.tuples(segment_names, st.lists(st.text(alphabet="abc123^~&\\|.-<> ", max_size=12), max_size=20))


@pytest.mark.parametrize("name", HL7_DRIVERS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(hl7_segment, max_size=10), kind=st.sampled_from(["ORU^R01", "OUL^R22^OUL_R22"]))
def test_any_hl7_message_gives_results_or_a_decode_error(name: str, segments: list[tuple[str, list[str]]],
                                                          kind: str) -> None:
    from labbridge.driver import Hl7Driver
    from labbridge.protocols.hl7_parse import Hl7ParseError, parse_message

    driver = load_driver_class(name)()
    assert isinstance(driver, Hl7Driver)
    text = f"MSH|^~\\&|A|B|C|D|20261123||{kind}|1|P|2.5.1\r" + "".join(
        "|".join([seg, *fields]) + "\r" for seg, fields in segments)
    try:
        message = parse_message(text.encode())
    except Hl7ParseError:
        return  # the session answers those itself; the driver never sees them
    context = DecodeContext(instrument="contract")
    try:
        decoded = driver.decode(message, context)
    except DecodeError:
        return
    assert isinstance(decoded, Decoded)
    assert all(r.instrument == "contract" and r.sample_id and r.instrument_test_code for r in decoded.results)
    assert driver.decode(message, context) == decoded
