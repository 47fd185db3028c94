"""What a LIS destination receives for one outbox item, in each format: HL7 v2.5.1 ORU^R01, ASTM E1394
records, or labbridge's canonical JSON. Pure functions of the item, so a resend is byte-identical.

``test``: results of an instrument still being validated, sent to a destination with ``validating =
"send-test"``: HL7 MSH-11 processing ID ``T`` (HL7 table 0103, "training"), ASTM H-12 ``T``, JSON
``"test": true``; a LIS keeps such messages out of patient records.

What each canonical field becomes in each format (comments, patient fields, test names, QC marks): see
docs/lis-output.md."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from labbridge.model import Result, order_comments
from labbridge.protocols.e1394 import Field, encode_record
from labbridge.protocols.hl7 import DEFAULT_OPTIONS, Hl7Options, Party, build_oru_r01, build_oul_r22

# LIS2-A2 R-9 result status for each canonical status.
_ASTM_STATUS = {"final": "F", "preliminary": "P", "correction": "C", "cancelled": "X"}


def _astm_time(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso).strftime("%Y%m%d%H%M%S")
    except ValueError:
        return ""


def render_hl7(results: Sequence[Result], *, control_id: str, created_at: float, sender: Party,
               receiver: Party, message_type: str = "ORU^R01", test: bool = False,
               options: Hl7Options = DEFAULT_OPTIONS) -> bytes:
    """HL7 v2.5.1 ORU^R01 (the default) or OUL^R22 (IHE LAW shape)."""
    build = build_oul_r22 if message_type == "OUL^R22" else build_oru_r01
    return build(results, control_id=control_id, created_at=datetime.fromtimestamp(created_at, UTC),
                 sender=sender, receiver=receiver, processing_id="T" if test else "P", options=options)


def _comments(texts: Sequence[str]) -> list[bytes]:
    """ASTM C records (C-3 ``I``: from the instrument; C-5 ``G``: generic), after the record they are about."""
    return [encode_record("C", [str(i), "I", text, "G"]) for i, text in enumerate(texts, start=1)]


def render_astm(results: Sequence[Result], *, control_id: str, created_at: float, sender: str,
                test: bool = False) -> bytes:
    """One E1394 message (H, P, O, R..., L), records separated by CR, no low-level framing."""
    first = results[0]
    p = first.patient
    stamp = datetime.fromtimestamp(created_at, UTC).strftime("%Y%m%d%H%M%S")
    # P-3 the patient ID (practice-assigned, where the drivers read it; labbridge wrote it in P-4 before
    # issue 20, LIS2-A2's laboratory-assigned ID, where the analyzer's own P-4 now goes).
    patient: list[Field] = ["1", first.patient_id]
    if p is not None:
        patient += [p.lab_id, p.alt_id, [list(p.name)], p.mothers_maiden_name, p.birth_date, p.sex]
    records = [
        encode_record("H", ["", control_id, "", sender, "", "", "", "", "", "", "T" if test else "P", "LIS2-A2",
                            stamp]),
        encode_record("P", patient),
        *_comments(p.comments if p is not None else ()),
        encode_record("O", ["2", first.sample_id, "", [["", "", "", r.test_code] for r in results],
                            "", "", "", "", "", "", "Q" if first.kind == "qc" else ""]),
        *_comments(order_comments(results)),
    ]
    for i, r in enumerate(results, start=1):
        records.append(encode_record("R", [str(i), ["", r.test_name, "", r.test_code], r.value, r.units,
                                           r.reference_range, [[f] for f in r.flags], "",
                                           _ASTM_STATUS.get(r.status, "F"), "", r.operator, "",
                                           _astm_time(r.measured_at), r.equipment_id]))
        records += _comments(r.comments)
    records.append(encode_record("L", ["1", "N"]))
    return b"\r".join(records) + b"\r"


def _result_json(r: Result) -> dict[str, Any]:
    data = r.to_json()
    data.pop("order_comments", None)  # the order's, once, beside the results
    data.pop("patient", None)  # the same
    data.setdefault("comments", [])  # always there for a LIS to read, empty when none was sent
    return data


def canonical_json(results: Sequence[Result], *, control_id: str, created_at: float, backlog: bool,
                   test: bool = False) -> dict[str, Any]:
    """The item as JSON: the sample's ``comments`` (the order's) and ``patient`` (what the analyzer sent
    besides the ID, or null) once, each result with its own ``comments`` and the analyzer's fields."""
    first = results[0]
    flagged = {"test": True} if test else {}  # absent for patient results: their JSON is as before
    return {
        **flagged,
        "control_id": control_id,
        "instrument": first.instrument,
        "sample_id": first.sample_id,
        "received_at": datetime.fromtimestamp(created_at, UTC).isoformat(),
        "backlog": backlog,
        "comments": list(order_comments(results)),
        "patient": None if first.patient is None else first.patient.to_json(),
        "results": [_result_json(r) for r in results],
    }


def render_json(results: Sequence[Result], *, control_id: str, created_at: float, backlog: bool,
                test: bool = False) -> bytes:
    data = canonical_json(results, control_id=control_id, created_at=created_at, backlog=backlog, test=test)
    return (json.dumps(data, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
