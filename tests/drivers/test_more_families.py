"""The families of issue 20, part 7, beyond their golden captures: what each driver must refuse, and the
differences that made them families of their own (cobas c 111 against roche-cobas, Mindray BS QC in the OBR,
GeneXpert's SPM after its results)."""

from __future__ import annotations

import zoneinfo

import pytest

from labbridge.driver import AstmDriver, DecodeContext, Hl7Driver, load_driver
from labbridge.errors import DecodeError
from labbridge.protocols.hl7_parse import parse_message


def context() -> DecodeContext:
    return DecodeContext(instrument="an-1", timezone=zoneinfo.ZoneInfo("Europe/Brussels"))


def astm(name: str) -> AstmDriver:
    driver = load_driver(name)
    assert isinstance(driver, AstmDriver)
    return driver


def hl7(name: str) -> Hl7Driver:
    driver = load_driver(name)
    assert isinstance(driver, Hl7Driver)
    return driver


# ---- Roche cobas c 111 -------------------------------------------------------------------------------

C111 = [b"H|\\^&|||C111^Roche^c111^4.2.2.1730^1^14022|||||host|RSUPL^REAL|P|1|20261123130512", b"P|1||",
        b"O|1||S0042^^4||R||||||N|||||||||||20261123130512|||F",
        b"R|1|^^^687|61.4|U/L||H||F||$SYS$||20261123130447", b"C|1|I||I",
        b"M|1|RR^BM^c111^1|212|212\\209\\588|0.004217", b"L|1|N"]


def test_roche_cobas_cannot_read_a_c111_message_and_roche_cobas_c111_can() -> None:
    with pytest.raises(DecodeError, match="specimen ID"):
        astm("roche-cobas").decode(C111, context())
    out = astm("roche-cobas-c111").decode(C111, context())
    assert [(r.sample_id, r.instrument_test_code, r.value, r.flags, r.kind) for r in out.results] == [
        ("S0042", "687", "61.4", ("H",), "patient")]


def test_a_c111_control_is_qc_by_its_control_type_or_action_code() -> None:
    by_type = [C111[0], C111[1], b"O|1||PCCC1^^2^^^1||S||||||N|||||||||||20261123130512|||F", *C111[3:]]
    by_action = [C111[0], C111[1], b"O|1||PCCC1^^2||S||||||Q|||||||||||20261123130512|||F", *C111[3:]]
    for records in (by_type, by_action):
        assert [r.kind for r in astm("roche-cobas-c111").decode(records, context()).results] == ["qc"]


# ---- Mindray BS: QC in the OBR -----------------------------------------------------------------------

BS_QC = ("MSH|^~\\&|Mindray|BS-200E|||20261123073512||ORU^R01|1|P|2.3.1||||2||ASCII|||\r"
         "OBR|1|1|GLU|Mindray^BS-200E||20261123073204|||||||QUAL1|1111|20270720000000||H|5.000000|2.000000"
         "|5.21|mmol/L|||\r")


def test_a_bs_qc_result_sent_in_the_obr_is_one_qc_result() -> None:
    out = hl7("mindray-bc-bs").decode(parse_message(BS_QC.encode()), context())
    assert [(r.sample_id, r.instrument_test_code, r.value, r.units, r.kind, r.measured_at) for r in out.results] == [
        ("QUAL1/1111", "1", "5.21", "mmol/L", "qc", "2026-11-23T07:32:04+01:00")]


def test_an_obr_without_obx_in_a_patient_message_is_not_made_a_result() -> None:
    patient = BS_QC.replace("||||2||ASCII", "||||0||ASCII")
    assert hl7("mindray-bc-bs").decode(parse_message(patient.encode()), context()).results == []


def test_a_bs_qc_message_with_obx_keeps_its_obx_results_and_adds_none() -> None:
    with_obx = BS_QC.replace("|5.21|mmol/L|||\r", "||mmol/L|||\r") + "OBX|1|NM|1|GLU|5.3|mmol/L|-||||F|||||||\r"
    out = hl7("mindray-bc-bs").decode(parse_message(with_obx.encode()), context())
    assert [(r.instrument_test_code, r.value, r.kind) for r in out.results] == [("1", "5.3", "qc")]


# ---- Cepheid GeneXpert over HL7 ----------------------------------------------------------------------

GX_HEAD = ("MSH|^~\\&|GX1^GeneXpert^6.5||LIS||20261123141502||ORU^R32^ORU_R30|M1|P|2.5|||AL|NE\r"
           "PID|1||PAT1||\rORC|RE|1\rOBR|1|||MTB-RIF|||||||||||||||||||||F\r"
           "TQ1|||||||20261123123205|20261123134412|R\r")
GX_MAIN = "OBX|1|ST|MTB-RIF&MTB&Xpert MTB-RIF Ultra&4|MTB|DETECTED LOW^||||||F\r"
GX_ROWS = "OBX|2|ST||Probe A&Ct||^18.7||||||F\rOBX|3|ST||Probe A||POS^||||||F\r"


def test_genexpert_hl7_reports_main_rows_only_with_the_specimen_that_follows_them() -> None:
    message = GX_HEAD + GX_MAIN + GX_ROWS + "SPM|1|GX7^||ORH|||||||P\r"
    out = hl7("cepheid-genexpert-hl7").decode(parse_message(message.encode()), context())
    assert [(r.sample_id, r.instrument_test_code, r.value, r.patient_id, r.kind) for r in out.results] == [
        ("GX7", "MTB", "DETECTED LOW", "PAT1", "patient")]
    assert out.sender == "GX1"


@pytest.mark.parametrize("tail", ["", "PID|2||PAT2||\rORC|RE|1\rOBR|1|||X\rSPM|1|GX8^||ORH|||||||P\r",
                                  "SPM|1|^||ORH|||||||P\r"], ids=["no SPM", "next patient first", "empty SPM-2"])
def test_genexpert_hl7_results_without_their_specimen_are_refused(tail: str) -> None:
    with pytest.raises(DecodeError) as info:
        hl7("cepheid-genexpert-hl7").decode(parse_message((GX_HEAD + GX_MAIN + tail).encode()), context())
    assert info.value.record_index is not None


def test_genexpert_hl7_accepts_only_result_uploads() -> None:
    assert hl7("cepheid-genexpert-hl7").message_types == frozenset({"ORU^R32", "ORU^R30", "ORU^R01"})
