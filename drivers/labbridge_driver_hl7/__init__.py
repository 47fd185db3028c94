"""Generic HL7 v2 results driver: ORU^R01 (v2.3.1 and v2.5.1) and OUL^R22 (IHE LAW LAB-29).

Where values sit (HL7 v2.5.1 chapter 7, IHE LAW LAB-29; v2.3.1 dialects such as Mindray BS/BC/CL):

* specimen ID: SPM-2 (first component of the placer part, else the filler part) when there is an SPM
  (LAW, v2.5.1), else OBR-2 placer order number unless empty or ``""`` (Mindray puts the barcode
  there), else OBR-3 filler order number; QC when SPM-11 (specimen role) is ``Q`` or ``C``;
* patient ID: PID-3 (first repetition, first component), else PID-2 (v2.3.1 external ID);
* results: every OBX after an OBR (OBX right after SPM describe the specimen and are skipped):
  OBX-3.1 the analyzer's test code, OBX-5 the value (CE/CWE: the identifier; SN: comparator and
  number joined, e.g. ``<0.5``), OBX-6.1 units, OBX-7 reference range, OBX-8 abnormal flags (repeats,
  ``N`` dropped), OBX-11 status, OBX-19 (analysis time, v2.5) else OBX-14 else OBR-7 the time measured;
  OBX-3.2 the test's name, OBX-16 the operator (first component sent), OBX-18 the equipment (EI, first);
* patient fields: PID-4 alternate ID, PID-5 name (``family^given^middle^suffix^prefix``), PID-6 mother's
  maiden name (family name), PID-7 birth date, PID-8 sex, as sent;
* comments: every repetition of NTE-3 is one comment; an NTE is about the segment before it (after the
  PID: the patient; after the OBR, or an SPM: the order; after an OBX: that result; before any of them:
  every order of the message). An HL7 ``""`` (null) is no comment.

Escapes are decoded after splitting (``Hl7Message.value``). Vendor drivers subclass this and change
what they need.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from labbridge.driver import DecodeContext, Hl7Driver
from labbridge.errors import DecodeError
from labbridge.model import Decoded, Patient, Result, ResultStatus
from labbridge.protocols.hl7_parse import Hl7Message, Segment

# HL7 table 0085 (observation result status).
STATUS_CODES: dict[str, ResultStatus] = {
    "F": "final", "C": "correction", "P": "preliminary", "R": "preliminary", "S": "preliminary",
    "I": "preliminary", "X": "cancelled", "D": "cancelled", "W": "cancelled", "U": "final",
}
NULL = '""'


class GenericHl7Driver(Hl7Driver):
    name = "hl7-generic"
    vendor = "generic"
    models: ClassVar[tuple[str, ...]] = ("any HL7 v2.3.1/v2.5.1 analyzer sending ORU^R01",
                                         "IHE LAW analyzers (OUL^R22)")
    version = "1.0"
    supports_orders = True  # IHE LAW LAB-27/LAB-28 (QBP^Q11, OML^O33, ORL^O34)

    def value(self, message: Hl7Message, obx: Segment) -> str:
        kind = message.value(obx, 2).upper()
        if kind == "SN":
            parts = [message.value(obx, 5, c) for c in (1, 2, 3, 4)]
            return "".join(parts).strip()
        if kind in ("CE", "CWE", "CNE"):
            return message.value(obx, 5, 1) or message.value(obx, 5, 2)
        return message.value(obx, 5, 1) if kind == "NM" else message.value(obx, 5, 0)

    def patient(self, message: Hl7Message, pid: Segment) -> Patient | None:
        """PID-4..PID-8 as sent (PID-3, the patient ID, is ``Result.patient_id``); None when none is sent."""
        name = tuple(message.value(pid, 5, c).strip() for c in range(1, 6))
        while name and not name[-1]:
            name = name[:-1]
        fields = [message.value(pid, 4, 1), message.value(pid, 6, 1), message.value(pid, 7, 1), message.value(pid, 8)]
        alt, maiden, born, sex = ("" if v.strip() == NULL else v.strip() for v in fields)
        found = Patient(alt_id=alt, name=() if name == (NULL,) else name, mothers_maiden_name=maiden,
                        birth_date=born, sex=sex)
        return found if found else None

    def comments(self, message: Hl7Message, nte: Segment) -> list[str]:
        """NTE-3, one comment per repetition that says anything."""
        return [c.strip() for c in message.repeats(nte, 3, 0) if c.strip() and c.strip() != NULL]

    def decode(self, message: Hl7Message, context: DecodeContext) -> Decoded:
        out = Decoded(sender=message.value(message.header, 3))
        out.results = self.results(message, context)
        if not any(seg.name == "OBR" for seg in message.segments):
            raise DecodeError("no OBR segment: a results message needs an OBR before its OBX")
        return out

    def results(self, message: Hl7Message, context: DecodeContext) -> list[Result]:
        """Every result of the message, with its comments and patient (see the module's docstring)."""
        results: list[dict[str, Any]] = []  # each result's fields from its OBX
        patient: Patient | None = None
        patient_notes: list[str] = []
        message_notes: list[str] = []
        order_notes: list[str] = []
        orders: list[list[str]] = []  # per result: its order's comment list (filled as NTE come)
        patients: list[tuple[Patient | None, list[str]]] = []  # per result
        result_notes: dict[int, list[str]] = {}
        last = ""  # the segment an NTE is about: PID, OBR, OBX (or "" before any)
        patient_id = ""
        sample_id = ""
        spm_sample = ""
        qc = False
        order_time = ""
        in_order = False
        for index, seg in enumerate(message.segments):
            name = seg.name
            if name == "PID":
                patient_id = message.value(seg, 3, 1) or message.value(seg, 2, 1)
                patient, patient_notes = self.patient(message, seg), []
                in_order = False
                last = "PID"
            elif name == "SPM":
                spm_sample = (message.value(seg, 2, 1, subcomponent=1)
                              or message.value(seg, 2, 2, subcomponent=1))
                qc = message.value(seg, 11, 1).upper() in ("Q", "C")
                in_order = False
                order_notes, last = [], "SPM"  # a specimen's comments are its (first) order's
            elif name == "OBR":
                placer = message.value(seg, 2, 1)
                sample_id = spm_sample or (placer if placer and placer != NULL else "") or message.value(seg, 3, 1)
                order_time = message.value(seg, 7, 1)
                in_order = True
                if last != "SPM":
                    order_notes = []
                last = "OBR"
            elif name == "NTE":
                notes = self.comments(message, seg)
                if last == "OBX" and results:
                    result_notes.setdefault(len(results) - 1, []).extend(notes)
                elif last in ("OBR", "SPM"):
                    order_notes.extend(notes)
                elif last == "PID":
                    patient_notes.extend(notes)
                else:
                    message_notes.extend(notes)
            elif name == "OBX" and in_order:
                code = message.value(seg, 3, 1) or message.value(seg, 3, 2)
                if not code:
                    raise DecodeError(f"OBX without a test code in OBX-3 (segment {index + 1})", record_index=index)
                if not sample_id:
                    raise DecodeError(f"no specimen ID (SPM-2, OBR-2 or OBR-3) for the OBX in segment {index + 1}",
                                      record_index=index)
                status = STATUS_CODES.get(message.value(seg, 11).upper()[:1], "final")
                when = message.value(seg, 19, 1) or message.value(seg, 14, 1) or order_time
                # Built in _with_notes, once the NTE after it are read: each result is built once.
                results.append({
                    "instrument": context.instrument,
                    "sample_id": sample_id,
                    "test_code": context.map_test(code),
                    "instrument_test_code": code,
                    "value": self.value(message, seg),
                    "units": message.value(seg, 6, 1),
                    "reference_range": message.value(seg, 7, 0),
                    "flags": tuple(f for f in message.repeats(seg, 8) if f and f != "N"),
                    "status": status,
                    "measured_at": context.hl7_timestamp(when),
                    "kind": "qc" if qc else "patient",
                    "patient_id": patient_id,
                    "test_name": message.value(seg, 3, 2).strip(),
                    "operator": next((v.strip() for v in (message.value(seg, 16, c) for c in (1, 2)) if v.strip()), ""),
                    "equipment_id": message.value(seg, 18, 1).strip(),
                })
                orders.append(order_notes)
                patients.append((patient, patient_notes))
                last = "OBX"
            elif name == "OBX":  # about the specimen (after SPM, before its OBR): its comments are the order's
                last = "SPM"
        return _with_notes(results, orders, patients, result_notes, message_notes)


def _with_notes(results: list[dict[str, Any]], orders: list[list[str]],
                patients: list[tuple[Patient | None, list[str]]], result_notes: dict[int, list[str]],
                message_notes: list[str]) -> list[Result]:
    """The results, built from their OBX fields with their comments and patient."""
    shared: dict[int, Patient | None] = {}  # one object per patient, one tuple per order: shared, not copied
    order_tuples: dict[int, tuple[str, ...]] = {}
    out = []
    for i, fields in enumerate(results):
        patient, notes = patients[i]
        key = id(notes)
        if key not in shared:
            shared[key] = dataclasses.replace(patient or Patient(), comments=tuple(notes)) if notes else patient
        order = order_tuples.get(id(orders[i]))
        if order is None:
            order = order_tuples[id(orders[i])] = tuple(message_notes + orders[i])
        out.append(Result(**fields, patient=shared[key], order_comments=order,
                          comments=tuple(result_notes.get(i, ()))))
    return out
