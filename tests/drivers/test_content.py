"""Issue 20, part 1 on the decode side: every driver carries the analyzer's comments, patient fields, test
names, operator and equipment into the result model, attached to what they are about, never invented."""

from __future__ import annotations

import zoneinfo

from labbridge.driver import AstmDriver, DecodeContext, Hl7Driver, load_driver
from labbridge.model import Patient
from labbridge.protocols.hl7_parse import parse_message


def context() -> DecodeContext:
    return DecodeContext(instrument="an-1", timezone=zoneinfo.ZoneInfo("Europe/Brussels"))


def astm(name: str) -> AstmDriver:
    driver = load_driver(name)
    assert isinstance(driver, AstmDriver)
    return driver


def test_generic_astm_c_records_belong_to_the_record_before_them() -> None:
    records = [b"H|\\^&|||Chem^1",
               b"C|1|I|before any patient|G",  # about every order of the message
               b"P|1|PAT-1|LAB-1|ALT-1|DOE^JANE^^^DR|ROE|19700101|F",
               b"C|1|I|patient note^second part|G",
               b"O|1|S1||^^^GLU|R",
               b"C|1|I|order note\\another order note|G",  # C-4 repeats: two comments
               b"R|1|^Glucose^^GLU|7.2|mmol/L||H||C||OP1^OP2||20261203100000|MOD-2",
               b"C|1|I|result note|G",
               b"R|2|^^^K|4.1",
               b"P|2",
               b"O|1|S2||^^^NA|R",
               b"R|1|^^^NA|140",
               b"L|1|N"]
    glu, k, na = astm("astm-generic").decode(records, context()).results
    assert glu.patient == Patient(lab_id="LAB-1", alt_id="ALT-1", name=("DOE", "JANE", "", "", "DR"),
                                  mothers_maiden_name="ROE", birth_date="19700101", sex="F",
                                  comments=("patient note second part",))
    assert k.patient is glu.patient  # one object per patient, shared by its results
    assert glu.order_comments == k.order_comments == ("before any patient", "order note", "another order note")
    assert (glu.comments, k.comments) == (("result note",), ())
    assert (glu.test_name, glu.operator, glu.equipment_id, glu.status) == ("Glucose", "OP1", "MOD-2", "correction")
    assert (k.test_name, k.operator, k.equipment_id) == ("", "", "")
    # The second patient sent nothing but its record: nothing is made up for it.
    assert (na.patient, na.comments, na.order_comments) == (None, (), ("before any patient",))


def test_a_bad_birth_date_or_sex_is_carried_as_sent_not_corrected() -> None:
    records = [b"H|\\^&", b"P|1|PAT-1|||||1970-13-45|female", b"O|1|S1||^^^GLU", b"R|1|^^^GLU|1", b"L|1|N"]
    (result,) = astm("astm-generic").decode(records, context()).results
    assert result.patient is not None
    assert (result.patient.birth_date, result.patient.sex) == ("1970-13-45", "female")


def test_profile_driver_a_comment_on_a_left_out_result_goes_to_its_order_not_lost() -> None:
    """Siemens ADVIA: raw signal rows (RLU) are left out; a C after one is about the order."""
    records = [b"H|\\^&|||ADVIA Centaur XPT^1.0",
               b"P|1||PAT-9||PEETERS^AN||19720311|F",
               b"O|1|SC1||^^^TSH3UL|R",
               b"R|1|^^^TSH3UL^DOSE|6.2|uIU/mL||H||F||||20261123112640",
               b"R|2|^^^TSH3UL^RLU|48211|RLU||||F||||20261123112640",
               b"C|1|I|signal checked|G",
               b"L|1|N"]
    (tsh,) = astm("siemens-advia").decode(records, context()).results
    assert tsh.order_comments == ("signal checked",) and tsh.comments == ()
    assert tsh.patient is not None and tsh.patient.name == ("PEETERS", "AN")


def test_profile_driver_test_name_dilution_operator_and_equipment_where_its_profile_reads_them() -> None:
    records = [b"H|\\^&|||ARCHITECT^9.45",
               b"P|1",
               b"O|1|S1||^^^16^TSH^UNDILUTED^P|R",
               b"R|1|^^^16^TSH^1:10^P^^^^F|0.112|uIU/mL||||F||ADMIN^ADMIN||20261123070712|i1SR52842",
               b"C|1|I|Control within range|G",
               b"L|1|N"]
    (r,) = astm("abbott-architect").decode(records, context()).results
    assert (r.test_name, r.dilution, r.operator, r.equipment_id) == ("TSH", "1:10", "ADMIN", "i1SR52842")
    assert r.comments == ("Control within range",) and r.patient is None


def test_hl7_nte_belong_to_the_segment_before_them_and_a_null_is_no_value() -> None:
    text = ("MSH|^~\\&|BA400|LAB1|LIS|HOSP|20261203101500+0100||OUL^R22^OUL_R22|M1|P|2.5.1\r"
            "PID|1||PAT42^^^HOSP^PI|ALT7|Dupont^Zoé|\"\"|19810214|F\r"
            "NTE|1|L|patient note\r"
            "SPM|1|S1&BA400||SER|||||||P\r"
            "NTE|1|L|specimen note\r"
            "OBR|1|\"\"||GLU\r"
            "NTE|1|L|order note~\"\"\r"
            "OBX|1|NM|GLU^Glucose^99ROC||7.2|mmol/L|||||C|||||OP7||M2\r"
            "NTE|1|L|result note\r"
            "OBX|2|NM|K||4.1||||||P\r"
            "OBR|2|\"\"||NA\r"
            "OBX|1|NM|NA||140\r")
    driver = load_driver("hl7-generic")
    assert isinstance(driver, Hl7Driver)
    glu, k, na = driver.decode(parse_message(text.encode("utf-8"), default_charset="utf-8"), context()).results
    assert glu.patient == Patient(alt_id="ALT7", name=("Dupont", "Zoé"), birth_date="19810214", sex="F",
                                  comments=("patient note",))
    assert glu.order_comments == k.order_comments == ("specimen note", "order note")
    assert (glu.comments, k.comments) == (("result note",), ())
    assert (glu.test_name, glu.operator, glu.equipment_id) == ("Glucose", "OP7", "M2")
    assert (glu.status, k.status) == ("correction", "preliminary")
    assert na.order_comments == () and na.patient is glu.patient
