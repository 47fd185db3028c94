from __future__ import annotations

import zoneinfo

import pytest

from labbridge.driver import AstmDriver, DecodeContext, available_drivers, load_driver
from labbridge.errors import DecodeError, DriverNotFoundError

CAPTURE = [
    b"H|\\^&|||cobas c311^1.0^SN123|||||||P|LIS2-A2|20261123101500",
    b"P|1|PAT42||||DOE^JANE",
    b"O|1|S0001||^^^GLU\\^^^K|R||||||N",
    b"R|1|^^^GLU|7.2|mmol/L|3.9 to 6.1|H||F||||20261123101200",
    b"C|1|I|hemolysis index 12",
    b"R|2|^^^K|4.1|mmol/L|3.5 to 5.1|N||F||||20261123101205",
    b"O|2|QC-L1||^^^GLU|R||||||Q",
    b"R|1|^^^GLU|5.0|mmol/L||||F||||20261123101300",
    b"L|1|N",
]


def context() -> DecodeContext:
    return DecodeContext(instrument="chem-1", timezone=zoneinfo.ZoneInfo("Europe/Brussels"),
                         test_map={"GLU": "GLUC"})


def test_generic_driver_is_registered_through_the_entry_point() -> None:
    info = available_drivers()["astm-generic"]
    assert info.target == "labbridge_driver_astm:GenericAstmDriver"
    assert isinstance(load_driver("astm-generic"), AstmDriver)
    with pytest.raises(DriverNotFoundError):
        load_driver("no-such-driver")


def test_decodes_results_with_mapping_flags_time_zone_and_qc() -> None:
    driver = load_driver("astm-generic")
    assert isinstance(driver, AstmDriver)
    decoded = driver.decode(CAPTURE, context())
    assert decoded.sender == "cobas c311"
    assert [(r.sample_id, r.test_code, r.instrument_test_code, r.value, r.kind) for r in decoded.results] == [
        ("S0001", "GLUC", "GLU", "7.2", "patient"),
        ("S0001", "K", "K", "4.1", "patient"),
        ("QC-L1", "GLUC", "GLU", "5.0", "qc"),
    ]
    first = decoded.results[0]
    assert first.flags == ("H",) and first.units == "mmol/L" and first.reference_range == "3.9 to 6.1"
    assert first.measured_at == "2026-11-23T10:12:00+01:00"  # Brussels in winter
    assert first.patient_id == "PAT42"
    assert decoded.results[1].flags == ()  # "N" (normal) is not a flag


def test_result_without_order_is_a_decode_error() -> None:
    driver = load_driver("astm-generic")
    assert isinstance(driver, AstmDriver)
    with pytest.raises(DecodeError, match="without a preceding order"):
        driver.decode([b"H|\\^&", b"P|1", b"R|1|^^^GLU|1", b"L|1"], context())
