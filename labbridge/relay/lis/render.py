"""What a LIS destination receives for one outbox item, in each format: HL7 v2.5.1 ORU^R01, ASTM E1394
records, or labbridge's canonical JSON. Pure functions of the item, so a resend is byte-identical.

``test``: results of an instrument still being validated, sent to a destination with ``validating =
"send-test"``: HL7 MSH-11 processing ID ``T`` (HL7 table 0103, "training"), ASTM H-12 ``T``, JSON
``"test": true``; a LIS keeps such messages out of patient records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from labbridge.model import Result
from labbridge.protocols.e1394 import encode_record
from labbridge.protocols.hl7 import Party, build_oru_r01, build_oul_r22

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
               receiver: Party, message_type: str = "ORU^R01", test: bool = False) -> bytes:
    """HL7 v2.5.1 ORU^R01 (the default) or OUL^R22 (IHE LAW shape)."""
    build = build_oul_r22 if message_type == "OUL^R22" else build_oru_r01
    return build(results, control_id=control_id, created_at=datetime.fromtimestamp(created_at, UTC),
                 sender=sender, receiver=receiver, processing_id="T" if test else "P")


def render_astm(results: Sequence[Result], *, control_id: str, created_at: float, sender: str,
                test: bool = False) -> bytes:
    """One E1394 message (H, P, O, R..., L), records separated by CR, no low-level framing."""
    first = results[0]
    stamp = datetime.fromtimestamp(created_at, UTC).strftime("%Y%m%d%H%M%S")
    records = [
        encode_record("H", ["", control_id, "", sender, "", "", "", "", "", "", "T" if test else "P", "LIS2-A2",
                            stamp]),
        encode_record("P", ["1", "", first.patient_id]),
        encode_record("O", ["2", first.sample_id, "", [["", "", "", r.test_code] for r in results],
                            "", "", "", "", "", "", "Q" if first.kind == "qc" else ""]),
    ]
    for i, r in enumerate(results, start=1):
        records.append(encode_record("R", [str(i), ["", "", "", r.test_code], r.value, r.units,
                                           r.reference_range, [[f] for f in r.flags], "",
                                           _ASTM_STATUS.get(r.status, "F"), "", "", "", _astm_time(r.measured_at)]))
    records.append(encode_record("L", ["1", "N"]))
    return b"\r".join(records) + b"\r"


def canonical_json(results: Sequence[Result], *, control_id: str, created_at: float, backlog: bool,
                   test: bool = False) -> dict[str, Any]:
    first = results[0]
    flagged = {"test": True} if test else {}  # absent for patient results: their JSON is as before
    return {
        **flagged,
        "control_id": control_id,
        "instrument": first.instrument,
        "sample_id": first.sample_id,
        "received_at": datetime.fromtimestamp(created_at, UTC).isoformat(),
        "backlog": backlog,
        "results": [r.to_json() for r in results],
    }


def render_json(results: Sequence[Result], *, control_id: str, created_at: float, backlog: bool,
                test: bool = False) -> bytes:
    data = canonical_json(results, control_id=control_id, created_at=created_at, backlog=backlog, test=test)
    return (json.dumps(data, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
