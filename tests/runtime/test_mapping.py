"""Per-instrument result mapping, applied to ASTM and HL7 drivers alike (labbridge.mapping via the intake)."""

from __future__ import annotations

from typing import Any

import pytest
from labbridge_driver_astm import GenericAstmDriver
from labbridge_driver_hl7 import GenericHl7Driver

from labbridge.config import InstrumentConfig, parse_config
from labbridge.driver import AstmDriver, Hl7Driver
from labbridge.errors import ConfigError
from labbridge.links.intake import InstrumentDecoder
from labbridge.protocols.hl7_parse import parse_message

ASTM = [b"H|\\^&|||SimImmuno^1.0", b"P|1|PAT1", b"O|1|S1||^^^HBSAG",
        b"R|1|^^^HBSAG|POS||", b"R|2|^^^HIV|Reactive||", b"R|3|^^^GLU|90|mg/dL", b"R|4|^^^INTQC|1.0|",
        b"R|5|^^^TSH|2.1|uIU/mL", b"L|1|N"]

HL7 = (b"MSH|^~\\&|BS-480|LAB1|||20261123101500||ORU^R01|12|P|2.3.1\r"
       b"PID|1||PAT7\rOBR|1|S2\r"
       b"OBX|1|ST|HBSAG||+||||||F\rOBX|2|ST|HIV||reactive ||||||F\rOBX|3|NM|GLU||90|mg/dL|||||F\r"
       b"OBX|4|NM|INTQC||1.0||||||F\rOBX|5|NM|TSH||2.1|uIU/mL|||||F\r")

MAPPING: dict[str, Any] = {
    "test_map": {"HBSAG": "HBSAG-LIS", "GLU": "GLUC", "TSH": "TSH3"},
    "unit_map": {"mg/dL": "mg/dl", "uIU/mL": "mU/L"},
    "value_map": {"POS": "Positive", "+": "Positive", "Reactive": "Positive"},
    "drop_tests": ["INTQC"],
    "tests": {"HIV": {"code": "HIV-COMBO", "action": "hold", "values": {"reactive": "Reactive, confirm"}},
              "GLU": {"units": {"mg/dL": "mg/dL (plasma)"}}},
}


def decoder(driver: AstmDriver | Hl7Driver, **settings: Any) -> InstrumentDecoder:
    cfg = InstrumentConfig.model_validate({"id": "imm-1", "site": "a", "driver": driver.name,
                                           "transport": {"kind": "tcp-server", "port": 0}, **settings})
    return InstrumentDecoder.from_config(cfg, driver)


def astm(**settings: Any) -> Any:
    return decoder(GenericAstmDriver(), **settings).decode_records(ASTM)


def hl7(**settings: Any) -> Any:
    return decoder(GenericHl7Driver(), **settings).decode_hl7(parse_message(HL7))


@pytest.mark.parametrize("decode", [astm, hl7], ids=["astm", "hl7"])
def test_codes_units_values_drop_and_hold_map_the_same_for_both_protocols(decode: Any) -> None:
    intake = decode(**MAPPING)
    sent = {r.instrument_test_code: (r.test_code, r.value, r.units) for r in intake.results}
    assert sent == {"HBSAG": ("HBSAG-LIS", "Positive", ""), "GLU": ("GLUC", "90", "mg/dL (plasma)"),
                    "TSH": ("TSH3", "2.1", "mU/L")}
    assert intake.dropped == 1  # INTQC: instrument-internal, never stored as a result
    assert [(r.test_code, r.value) for r in intake.held_results] == [("HIV-COMBO", "Reactive, confirm")]
    assert "HIV" in intake.hold_reason and "outbox retry" in intake.hold_reason
    assert intake.held == [] and intake.error is None


@pytest.mark.parametrize("decode", [astm, hl7], ids=["astm", "hl7"])
def test_unmapped_codes_go_to_dead_letters_named_for_both_protocols(decode: Any) -> None:
    intake = decode(test_map={"GLU": "GLUC"}, tests={"HIV": {"code": "HIV-COMBO"}}, drop_tests=["INTQC"],
                    unmapped_tests="dead-letter")
    assert sorted(r.test_code for r in intake.results) == ["GLUC", "HIV-COMBO"]
    assert [h.kind for h in intake.held] == ["unmapped"]
    assert "HBSAG, TSH" in intake.held[0].reason  # named; the dropped INTQC is not "unmapped"
    passing = decode(test_map={"GLU": "GLUC"})  # the default policy: unmapped codes pass as sent
    assert len(passing.results) == 5 and not passing.held


def test_hl7_sender_policy_uses_msh3() -> None:
    assert hl7(expected_sender="BS-480").results
    held = hl7(expected_sender="XN-1000")
    assert held.results == [] and held.held[0].kind == "unknown-sender"


def test_conflicting_mapping_is_refused_with_key_paths() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"sites": [{"id": "a", "name": "A"}], "instruments": [
            {"id": "imm-1", "site": "a", "driver": "astm-generic", "transport": {"kind": "tcp-server", "port": 0},
             "test_map": {"HIV": "HIV1"}, "tests": {"HIV": {"code": "HIV2"}},
             "drop_tests": ["TSH"], "hold_tests": ["TSH"]}]})
    text = str(err.value)
    assert "instruments[0].tests.HIV.code" in text and "instruments[0].hold_tests" in text


def test_stored_hl7_messages_are_re_decoded_with_the_current_mapping() -> None:
    """An operator's retry of an HL7 dead letter replays the stored payload through the same policies."""
    before = decoder(GenericHl7Driver(), test_map={"GLU": "GLUC"}, unmapped_tests="dead-letter").decode_raw("hl7", HL7)
    assert [h.kind for h in before.held] == ["unmapped"]
    after = decoder(GenericHl7Driver(), **MAPPING).decode_raw("hl7", HL7)
    assert not after.held and len(after.results) == 3 and len(after.held_results) == 1
    broken = decoder(GenericHl7Driver()).decode_raw("hl7", b"not hl7")
    assert broken.error is not None and broken.log_reason == "raw bytes not HL7"


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, ("GLU", "mg/dL", "90")),
    ({"test_map": {"GLU": "GLUC"}}, ("GLUC", "mg/dL", "90")),
    ({"unit_map": {"mg/dL": "mg/dl"}}, ("GLU", "mg/dl", "90")),
    ({"value_map": {"90": "ninety"}}, ("GLU", "mg/dL", "ninety")),
    ({"tests": {"GLU": {"units": {"mg/dL": "mg/dL (plasma)"}}}}, ("GLU", "mg/dL (plasma)", "90")),
    ({"tests": {"GLU": {"values": {"90": "ninety"}}}}, ("GLU", "mg/dL", "ninety")),
    ({"tests": {"GLU": {"code": "GLUC"}}}, ("GLUC", "mg/dL", "90")),
    ({"drop_tests": ["TSH"]}, ("GLU", "mg/dL", "90")),
    ({"hold_tests": ["TSH"]}, ("GLU", "mg/dL", "90")),
    ({"unmapped_tests": "dead-letter"}, None),
], ids=["none", "test_map", "unit_map", "value_map", "test-units", "test-values", "test-code", "drop", "hold",
        "dead-letter"])
def test_each_kind_of_mapping_alone_applies_and_none_passes_results_as_decoded(
        settings: dict[str, Any], expected: tuple[str, str, str] | None) -> None:
    """With nothing configured that changes a code, unit or value, or drops, holds or refuses a result, results
    pass untouched; any one of those alone is enough to apply it."""
    plain = GenericAstmDriver().decode(ASTM, decoder(GenericAstmDriver()).context).results
    intake = astm(**settings)
    sent = {r.instrument_test_code: (r.test_code, r.units, r.value) for r in intake.results}
    assert sent.get("GLU") == expected
    assert ("TSH" in sent) == (expected is not None and not settings.get("drop_tests") and not settings.get(
        "hold_tests"))
    assert [r.instrument_test_code for r in intake.held_results] == (["TSH"] if settings.get("hold_tests") else [])
    assert [h.kind for h in intake.held] == (["unmapped"] if expected is None else [])
    if not settings:
        assert intake.results == plain  # the driver's results as it decoded them
