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

Not verified in the document text (say so to the site): the BC hematology manual's result-type code in
MSH-16 was read in the BS manual only; the BC series is assumed to use the same codes. Calibration
messages (MSH-16 ``1``) are reported as QC here rather than dropped, so that nothing is silently lost;
a site that wants them dropped adds the codes to ``drop`` in its test mapping.
"""

from __future__ import annotations

import dataclasses

from labbridge_driver_hl7 import GenericHl7Driver

from labbridge.driver import DecodeContext
from labbridge.model import Decoded
from labbridge.protocols.hl7_parse import Hl7Message

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
        return out
