"""Cepheid GeneXpert (molecular) over HL7: ORU^R32 result upload, HL7 v2.5, over MLLP.

The ASTM form of the same analyzer is the ``cepheid-genexpert`` driver; a GeneXpert is set up for one or
the other in its host communication settings. This driver reads the result upload as the GeneXpert sends
it; it answers no queries (the GeneXpert's QBP^Z01 / QBP^Z03 order queries are refused AR, unsupported
message type, as any other HL7 message this driver does not take).

Sources, and what each was used for:

* Cepheid, *GeneXpert System Software LIS Interface Protocol Specification* (HL7 part), as transcribed field
  by field in OpenELIS Global's GeneXpert HL7 integration notes (sections 4.1 to 4.10 "HL7 Field Mapping -
  Result Upload") together with the specification's own example messages they reproduce (Xpert GBS,
  a quantitative assay with its LOG row, Xpert HemosIL FII & FV), and a second open LIS project that
  quotes the GBS example verbatim. From those:
  - message structure ``MSH {PID {ORC OBR [NTE] TQ1 {OBX [NTE]} SPM}}``: **SPM comes after the OBX of
    its order**, so results are held until their specimen is read;
  - MSH-3 ``<system name>^GeneXpert^<software version>`` (sender: its first component); MSH-9
    ``ORU^R32^ORU_R30`` (``ORU^R01`` is accepted too); MSH-12 ``2.5``; MSH-15 ``AL``, MSH-16 ``NE``
    (enhanced mode: a commit acknowledgement only, which labbridge sends once the message is stored);
  - PID-3 patient ID 1, PID-2 patient ID 2 (practice assigned);
  - TQ1-7 start, TQ1-8 end of the test (the time measured; else OBR-7, else MSH-7);
  - OBX-3 first component in **subcomponents**: ``<panel ID>&<test ID>&<test name>&<test version>``:
    the test code is the test ID (subcomponent 2: the host test code of a single-result assay, the result
    test code in a multi-result panel); only the *main* result has a test name (subcomponent 3); analyte
    and complementary rows (Ct, EndPt, Delta Ct), which have none, are not results (and are not sent in
    an upload, only in a reply to the LIS's QRY^R02, which labbridge does not send);
  - OBX-4 ``<analyte name>&<complementary name>``: a main row whose complementary name is ``LOG`` is the
    log value of a quantitative result, reported as ``<test ID>-LOG``;
  - OBX-5 ``<qualitative>^<quantitative>`` (``NEGATIVE^``, ``^20385215991.41``): the quantitative value
    when there is one, else the qualitative one (as the ASTM driver does); ``POS``/``NEG`` are written
    out as ``POSITIVE``/``NEGATIVE``;
  - OBX-6 units, OBX-7 reference range, OBX-8 abnormal flags (``N`` dropped), OBX-11 status ``F``
    final, ``X`` cannot be done, ``C`` correction; OBX-16 observer, OBX-18 equipment (not read);
  - NTE segments carry notes and errors: not results;
  - SPM-2 first component the specimen ID (second: the instrument specimen ID, when enabled); SPM-4
    ``ORH``; **SPM-11 specimen role ``P`` patient, ``Q`` quality control** (how QC is recognised).

The capture ``genexpert-hl7-gbs-viral-load-panel-and-control.mllp`` was composed for this driver after the
specification's examples (new specimen IDs, values and times; a control run with SPM-11 ``Q`` added); it
was not captured from an analyzer.

Not verified (say so to the site): Cepheid's own PDF was not read, only its transcription and examples;
one transcribed example puts the patient ID in PID-4, which this driver does not read (PID-3, else PID-2);
the qualitative word of a quantitative result sent with both parts is not reported (the number is), as in
the ASTM driver.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from labbridge_driver_hl7 import STATUS_CODES

from labbridge.driver import DecodeContext, Hl7Driver
from labbridge.errors import DecodeError
from labbridge.model import Decoded, Result, ResultKind
from labbridge.protocols.hl7_parse import Hl7Message, Segment

QUALITATIVE = {"POS": "POSITIVE", "NEG": "NEGATIVE"}
QC_ROLES = frozenset({"Q"})


class CepheidGenexpertHl7Driver(Hl7Driver):
    name = "cepheid-genexpert-hl7"
    vendor = "Cepheid"
    models = ("GeneXpert Dx", "GeneXpert Infinity", "GeneXpert Xpress")
    version = "1.0"
    message_types: ClassVar[frozenset[str]] = frozenset({"ORU^R32", "ORU^R30", "ORU^R01"})

    def decode(self, message: Hl7Message, context: DecodeContext) -> Decoded:
        out = Decoded(sender=message.value(message.header, 3, 1))
        sent_at = message.value(message.header, 7, 1)
        patient_id = ""
        order_time = ""
        pending: list[tuple[int, Result]] = []  # this order's results, waiting for its SPM
        orders = 0
        for index, seg in enumerate(message.segments):
            name = seg.name
            if name in ("PID", "ORC") and pending:
                raise DecodeError(f"results without their SPM segment before segment {index + 1}",
                                  record_index=index)
            if name == "PID":
                patient_id = message.value(seg, 3, 1) or message.value(seg, 2, 1)
            elif name == "OBR":
                orders += 1
                order_time = message.value(seg, 7, 1)
            elif name == "TQ1":
                order_time = message.value(seg, 8, 1) or message.value(seg, 7, 1) or order_time
            elif name == "OBX":
                if not orders:
                    raise DecodeError(f"OBX before any OBR (segment {index + 1})", record_index=index)
                result = self._result(message, seg, index, context, patient_id=patient_id,
                                      when=order_time or sent_at)
                if result is not None:
                    pending.append((index, result))
            elif name == "SPM":
                specimen = message.value(seg, 2, 1)
                if not specimen and pending:
                    raise DecodeError(f"no specimen ID in SPM-2 (segment {index + 1})", record_index=index)
                kind: ResultKind = "qc" if message.value(seg, 11, 1).strip().upper() in QC_ROLES else "patient"
                out.results += [dataclasses.replace(r, sample_id=specimen, kind=kind) for _, r in pending]
                pending = []
        if pending:
            raise DecodeError("results without their SPM segment (the specimen)", record_index=pending[0][0])
        if not orders:
            raise DecodeError("no OBR segment: a result upload needs an OBR before its OBX")
        return out

    def _result(self, message: Hl7Message, obx: Segment, index: int, context: DecodeContext, *, patient_id: str,
                when: str) -> Result | None:
        test_name = message.value(obx, 3, 1, subcomponent=3)
        if not test_name:
            return None  # analyte or complementary row (Ct, EndPt...): not a result
        code = message.value(obx, 3, 1, subcomponent=2)
        if not code:
            raise DecodeError(f"OBX without a test ID in OBX-3.1.2 (segment {index + 1})", record_index=index)
        if message.value(obx, 4, 1, subcomponent=2).strip().upper() == "LOG":
            code = f"{code}-LOG"
        qualitative = message.value(obx, 5, 1).strip()
        value = message.value(obx, 5, 2).strip() or QUALITATIVE.get(qualitative.upper(), qualitative)
        return Result(
            instrument=context.instrument,
            sample_id="",  # set from the order's SPM
            test_code=context.map_test(code),
            instrument_test_code=code,
            value=value,
            units=message.value(obx, 6, 1),
            reference_range=message.value(obx, 7, 0),
            flags=tuple(f for f in message.repeats(obx, 8) if f and f != "N"),
            status=STATUS_CODES.get(message.value(obx, 11).upper()[:1], "final"),
            measured_at=context.hl7_timestamp(when),
            kind="patient",
            patient_id=patient_id,
        )
