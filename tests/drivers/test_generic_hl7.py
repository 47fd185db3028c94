from __future__ import annotations

import zoneinfo

import pytest
from labbridge_simulators.hl7_analyzer import Hl7MessageFactory

from labbridge.driver import DecodeContext, Hl7Driver, available_drivers, load_driver
from labbridge.errors import DecodeError
from labbridge.protocols.hl7_parse import parse_message

# IHE LAW LAB-29 (as a BA400 / cobas sends it): OBR-2 "", the specimen in SPM-2, a specimen-level OBX
# before the OBR that is not a result, a QC specimen group (SPM-11 Q).
LAW = (
    "MSH|^~\\&|BA400|LAB1|LIS|HOSP|20261123101500+0100||OUL^R22^OUL_R22|MSG0001|P|2.5.1|||ER|AL||UNICODE UTF-8"
    "|||LAB-29^IHE\r"
    "PID|1||PAT42^^^HOSP^PI||Dupont^Zoé\r"
    "SPM|1|S0001&BA400||SER^Serum^HL70487|||||||P\r"
    "OBX|1|NM|HEMI^Hemolysis index^99ROC||12\r"
    "OBR|1|\"\"||GLU^Glucose^99ROC|||20261123100000\r"
    "ORC|SC\r"
    "OBX|1|NM|GLU^Glucose^99ROC||7.2|mmol/L^mmol/L^UCUM|3.9-6.1|H~A|||F|||||||BA400|20261123101200\r"
    "OBX|2|SN|CRP^CRP^99ROC||<^0.5|mg/L|0-5|N|||C\r"
    "OBX|3|ST|COM^Comment^99ROC||lipemic \\T\\ icteric\\F\\x||||||X\r"
    "SPM|2|QC-L1&BA400||SER|||||||Q\r"
    "OBR|1|\"\"||GLU\r"
    "OBX|1|NM|GLU^Glucose^99ROC||5.0|mmol/L|||||F|||20261123101300+0000\r"
)

# Mindray BS-series v2.3.1: MSH-18 UNICODE with UTF-8 bytes, barcode in OBR-2, sample number in OBR-3,
# OBX-3 the code and OBX-4 its name, OBX-14 the time, MSH-16 "0" (result type).
MINDRAY = (
    "MSH|^~\\&|Mindray|BS-480|||20261123101500||ORU^R01|12|P|2.3.1||||0||UNICODE|||\r"
    "PID|1||PAT7^^^^MR||Müller^Zoé|||F\r"
    "OBR|1|BC12345|7|^|N||20261123101000||||||||Serum\r"
    "OBX|1|NM|GLU|Glucose|5.4|mmol/L|3.9-6.1|N|||F||5.4|20261123101200||Admin|0|\r"
    "OBX|2|NM|ALT|ALT|80|U/L|7-56|H|||F||80|20261123101205||Admin|0|\r"
)


def context() -> DecodeContext:
    return DecodeContext(instrument="chem-1", timezone=zoneinfo.ZoneInfo("Europe/Brussels"),
                         test_map={"GLU": "GLUC"})


def decode(text: str) -> list[dict[str, object]]:
    driver = load_driver("hl7-generic")
    assert isinstance(driver, Hl7Driver)
    return [r.to_json() for r in driver.decode(parse_message(text.encode("utf-8")), context()).results]


def test_generic_hl7_driver_is_registered_through_the_entry_point() -> None:
    assert available_drivers()["hl7-generic"].target == "labbridge_driver_hl7:GenericHl7Driver"
    assert load_driver("hl7-generic").protocol == "hl7"


def test_law_oul_r22() -> None:
    results = decode(LAW)
    assert [(r["sample_id"], r["instrument_test_code"], r["value"], r["kind"]) for r in results] == [
        ("S0001", "GLU", "7.2", "patient"), ("S0001", "CRP", "<0.5", "patient"),
        ("S0001", "COM", "lipemic & icteric|x", "patient"), ("QC-L1", "GLU", "5.0", "qc")]
    glu = results[0]
    assert glu["test_code"] == "GLUC" and glu["units"] == "mmol/L" and glu["flags"] == ["H", "A"]
    assert glu["patient_id"] == "PAT42" and glu["reference_range"] == "3.9-6.1"
    assert glu["measured_at"] == "2026-11-23T10:12:00+01:00"  # OBX-19 in the instrument's zone
    assert results[1]["status"] == "correction" and results[2]["status"] == "cancelled"
    assert results[3]["measured_at"] == "2026-11-23T10:13:00+00:00"  # OBX-14 with its own offset


def test_mindray_v231_oru_r01() -> None:
    results = decode(MINDRAY)
    assert [(r["sample_id"], r["instrument_test_code"], r["value"], r["flags"]) for r in results] == [
        ("BC12345", "GLU", "5.4", []), ("BC12345", "ALT", "80", ["H"])]
    assert results[0]["patient_id"] == "PAT7"
    assert results[0]["measured_at"] == "2026-11-23T10:12:00+01:00"


@pytest.mark.parametrize("dialect", ["law", "mindray"])
def test_simulated_analyzers_decode_to_what_they_sent(dialect: str) -> None:
    factory = Hl7MessageFactory("chem-1", dialect=dialect, sample_prefix="S", panel_size=8, seed=3)  # type: ignore[arg-type]
    for _ in range(3):
        sim = factory.next()
        results = decode(sim.payload.decode("utf-8"))
        assert tuple((r["instrument"], r["sample_id"], r["instrument_test_code"], r["value"])
                     for r in results) == sim.results


@pytest.mark.parametrize(("text", "words"), [
    ("MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.5.1\rOBR|1|S1\rOBX|1|NM|||5\r", "OBX-3"),
    ("MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.5.1\rOBR|1|\"\"\rOBX|1|NM|GLU||5\r", "specimen ID"),
    ("MSH|^~\\&|A||B||20261123||ORU^R01|1|P|2.5.1\rPID|1||P1\r", "no OBR"),
])
def test_undecodable_messages_raise_decode_error_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(text)
    assert words in err.value.reason
