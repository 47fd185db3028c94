"""Mindray BC (hematology) and BS (chemistry) analyzers: HL7 v2.3.1 ORU^R01 over MLLP.

A subclass of the generic HL7 driver (``labbridge_driver_hl7``), which already reads the v2.3.1
positions these analyzers use; this driver adds the family's name, models and its QC marking.

Sources, and what each was used for:

* Mindray, *BS-series Chemistry Analyzer HL7 Interface Manual* (host interface appendix of the BS-200/
  BS-240/BS-480 operator's manuals, "LIS Communication Protocol", HL7 v2.3.1) and Mindray, *BC-series /
  BF-6900 Automatic Hematology Analyzer* user manual, Appendix B "Network Communication Interface
  Protocol V1.1" (§A.1: HL7 v2.3.1; §A.2: MSH, PID, OBR, OBX segments; MLLP block characters).
* From those: MSH-3 ``Mindray``, MSH-4 the analyzer model (sender), MSH-9 ``ORU^R01``, MSH-12 ``2.3.1``,
  MSH-18 ``UNICODE`` (UTF-8 bytes); **MSH-16 is reused for the result type: ``0`` patient sample,
  ``1`` calibration, ``2`` quality control** (the reason MSH-16 is not read as an acknowledgement
  condition); PID-3 patient ID; OBR-2 sample barcode, OBR-3 sample number, OBR-7 time of the test;
  OBX-3 test code (BS: the assay short name, e.g. ``GLU``; BC: parameter, e.g. ``WBC``), OBX-4 its
  name, OBX-5 value, OBX-6 units, OBX-7 reference range, OBX-8 abnormal flag (``N``/``H``/``L``),
  OBX-11 status ``F``, OBX-14 time of analysis.

BS-series quality control as the BS sends it (issue 20, part 7): the *BS-200/BS-220/BS-120/BS-130/BS-180
Host Interface Manual* v1.2 (2009), pages 24-28, as its examples are reproduced verbatim by three open LIS
projects, sends a QC result **in the OBR itself, with no OBX** (and no PID):
``OBR|1|1|test1|Mindray^BS-200E||20070720120143|||||||QUAL1|1111|20080720000000||H|5.000000|2.000000|0.11029|g/ml``:
OBR-2 the test number, OBR-3 the test name, OBR-6 the time of the QC test, OBR-13 the control name, OBR-14
its lot, OBR-15 the lot's expiry, OBR-17 the level (``H``/``M``/``L``), OBR-18 the target mean, OBR-19 the
SD, OBR-20 the measured value, OBR-21 the units. Read as a generic ORU^R01, such a message has no result and
its QC value would be lost; this driver reports it as one QC result: sample ID ``<control name>/<lot>``
(the control name alone without a lot), test code the test number (OBR-2, as the manual's patient example
puts the test number in OBX-3 and the name in OBX-4: ``OBX|1|NM|2|test2|5.000000|g/ml|-||||F``), value
OBR-20, units OBR-21, time OBR-7 else OBR-6 else MSH-7. The target mean and SD are not carried (an LIS's QC
module keeps its own targets). The public BS-800 manual (V1.0, 2010) was found but not read beyond its
title; it is assumed to send QC alike. No BS-series ASTM interface was found: the BS-200 and BS-800 host
interface manuals specify HL7 v2.3.1 over MLLP only, so no ASTM variant of this family is provided.

Not verified in the document text (say so to the site): the BC hematology manual's result-type code in
MSH-16 was read in the BS manual only; the BC series is assumed to use the same codes. Calibration
messages (MSH-16 ``1``) are reported as QC here rather than dropped, so that nothing is silently lost;
a site that wants them dropped adds the codes to ``drop`` in its test mapping.
"""

from __future__ import annotations

import dataclasses

from labbridge_driver_hl7 import GenericHl7Driver

from labbridge.driver import DecodeContext
from labbridge.model import Decoded, Result
from labbridge.protocols.hl7_parse import Hl7Message, Segment

# MSH-16 as Mindray uses it: the result type of the message.
RESULT_TYPE_QC = frozenset({"1", "2"})  # 1 calibration, 2 quality control


class MindrayDriver(GenericHl7Driver):
    name = "mindray-bc-bs"
    vendor = "Mindray"
    models = ("BS-200E", "BS-240", "BS-480", "BS-600M", "BS-800M", "BC-5380", "BC-6800", "BC-6900")
    version = "1.0"

    def decode(self, message: Hl7Message, context: DecodeContext) -> Decoded:
        out = super().decode(message, context)
        if message.value(message.header, 16).strip() in RESULT_TYPE_QC:
            out.results = [dataclasses.replace(r, kind="qc") for r in out.results]
            out.results += [self._obr_qc(message, seg, context) for seg in _obr_without_obx(message)
                            if message.value(seg, 20, 1).strip()]
        return out

    def _obr_qc(self, message: Hl7Message, obr: Segment, context: DecodeContext) -> Result:
        """A BS-series QC result sent in the OBR (no OBX): see the module docstring for the positions."""
        control = message.value(obr, 13, 1).strip()
        lot = message.value(obr, 14, 1).strip()
        code = message.value(obr, 2, 1).strip() or message.value(obr, 3, 1).strip()
        when = message.value(obr, 7, 1) or message.value(obr, 6, 1) or message.value(message.header, 7, 1)
        return Result(
            instrument=context.instrument,
            sample_id=f"{control}/{lot}" if lot else control or "QC",
            test_code=context.map_test(code),
            instrument_test_code=code,
            value=message.value(obr, 20, 1).strip(),
            units=message.value(obr, 21, 1),
            status="final",
            measured_at=context.hl7_timestamp(when),
            kind="qc",
        )


def _obr_without_obx(message: Hl7Message) -> list[Segment]:
    """The OBR segments that no OBX follows (before the next OBR or the end of the message)."""
    found: list[Segment] = []
    current: Segment | None = None
    for seg in message.segments:
        if seg.name == "OBR":
            if current is not None:
                found.append(current)
            current = seg
        elif seg.name == "OBX":
            current = None
    if current is not None:
        found.append(current)
    return found
