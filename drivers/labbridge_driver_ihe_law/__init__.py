"""IHE LAW analyzers (OUL^R22, HL7 v2.5.1): Roche cobas pure / cobas pro, Abbott Alinity ci, and others.

A subclass of the generic HL7 driver (``labbridge_driver_hl7``), which reads the LAW positions; this
driver names the family and accepts only what LAW analyzers send for results (OUL^R22).

Sources, and what each was used for:

* IHE, *Laboratory (LAB) Technical Framework*, Vol. 2, transaction LAB-29 "AWOS Status Change" (the
  Laboratory Analytical Workflow profile, LAW, rev. 1.4/2.x): message OUL^R22 v2.5.1; segments MSH,
  PID, SPM, SAC, OBR, ORC, OBX; MSH-15 ``ER`` and MSH-16 ``AL`` as the analyzer sends them; MSH-18
  character set (``UNICODE UTF-8``); MSH-21 profile ``LAB-29^IHE``; SPM-2 specimen ID (EIP: placer
  ``&`` filler); **SPM-11 specimen role: ``P`` patient, ``Q`` control specimen, ``C`` calibrator**
  (HL7 table 0369), which is how a QC result is recognised; OBR-2 ``""`` (the AWOS is identified by
  the specimen); OBX-3 the test code (``code^name^coding system``), OBX-5 value by OBX-2 type (NM, SN,
  CE/CWE, ST), OBX-6 units (UCUM), OBX-7 range, OBX-8 abnormal flags (repeats), OBX-11 status, OBX-18
  equipment, OBX-19 analysis time; OBX right after SPM describe the specimen (e.g. hemolysis index)
  and are not results.
* Roche, *cobas pure / cobas pro Host Interface Manual* (LAW-based HL7 interface) and Abbott,
  *Alinity ci-series LIS interface* (IHE LAW): both state LAB-29 OUL^R22 as the result message; their
  vendor codes sit in OBX-3.1 with the vendor coding system in OBX-3.3 (``99ROC`` for Roche).

Not verified in the document text: the vendor manuals' own examples were not readable in the copies
found; the positions above are the IHE framework's, which those manuals declare they follow.
"""

from __future__ import annotations

from typing import ClassVar

from labbridge_driver_hl7 import GenericHl7Driver


class IheLawDriver(GenericHl7Driver):
    name = "ihe-law"
    vendor = "IHE LAW (Roche, Abbott, ...)"
    models = ("Roche cobas pure", "Roche cobas pro", "Abbott Alinity ci", "any IHE LAW analyzer (OUL^R22)")
    version = "1.0"
    message_types: ClassVar[frozenset[str]] = frozenset({"OUL^R22"})
