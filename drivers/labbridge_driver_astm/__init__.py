"""Generic ASTM E1394 / LIS2-A2 driver: the standard's own field positions, no vendor quirks.

Where values sit (CLSI LIS2-A2, records P §8, O §9, R §10):

* P-3 practice-assigned patient ID (first component);
* O-3 specimen ID (first component), O-4 instrument specimen ID when O-3 is empty; O-12 action
  code ``Q`` marks a QC sample, as does H-12 processing ID ``Q``;
* R-3 universal test ID ``^^^code``: the 4th component is the manufacturer's test code, the 2nd the
  test's name (when sent);
* R-4 value, R-5 units, R-6 reference range, R-7 abnormal flags (repeats), R-9 status, R-11 operator
  (first component sent), R-13 time the test completed, R-14 instrument identification (first component);
* P-4..P-9 (patient fields) and C records (comments on the P, O or R before them): labbridge.astm_content.

M and S records are skipped here; vendor drivers read them.

Host queries (Q record, LIS2-A2 §11): Q-3 starting range ID, repeats of ``patient^specimen^...``
(the specimen ID is the 2nd component; ``ALL`` asks for every sample); Q-5 universal test ID
(``^^^code`` repeats, or ``ALL``); Q-13 request status (``O`` orders, ``A`` cancel the last request).
Q decoding and the host's answer are shared with the profile drivers (labbridge.astm_orders).
The host's answer and pushed orders are P + O records (O-3 specimen ID, O-5 tests, O-6 priority,
O-7 requested time, O-12 action code ``N``, O-26 report type ``Q``/``Y``/``Z`` or ``O``) between an H
naming labbridge as sender and an L whose L-3 is ``N``, or ``I`` when nothing was found.
"""

from __future__ import annotations

from collections.abc import Sequence

from labbridge.astm_content import Comments
from labbridge.astm_orders import PRIORITY_CODES, REPORT_TYPES, AstmOrders, decode_query
from labbridge.driver import AstmDriver, DecodeContext
from labbridge.errors import DecodeError, RemoteProtocolError
from labbridge.model import Decoded, Result, ResultStatus
from labbridge.protocols.e1394 import parse_records

# LIS2-A2 R-9 result status codes.
STATUS_CODES: dict[str, ResultStatus] = {
    "F": "final", "R": "final", "P": "preliminary", "C": "correction", "X": "cancelled",
    "I": "preliminary", "S": "preliminary", "M": "final", "V": "final", "Q": "final",
}


class GenericAstmDriver(AstmOrders, AstmDriver):
    name = "astm-generic"
    vendor = "generic"
    models = ("any LIS2-A2 analyzer",)
    version = "1.0"

    def decode(self, records: Sequence[bytes], context: DecodeContext) -> Decoded:
        try:
            parsed = parse_records(records, context.encoding)
        except RemoteProtocolError as exc:
            raise DecodeError(str(exc), record_index=0) from exc
        out = Decoded()
        qc_message = False
        patient_id = ""
        sample_id = ""
        qc_order = False
        have_order = False
        comments = Comments()
        for index, rec in enumerate(parsed):
            kind = rec.type
            if kind == "H":
                out.sender = rec.component(5, 1)
                qc_message = rec.field(12).upper().startswith("Q")
            elif kind == "P":
                patient_id = rec.component(3, 1)
                have_order = False
                comments.patient(rec)
            elif kind == "O":
                sample_id = rec.component(3, 1) or rec.component(4, 1)
                qc_order = rec.field(12).upper() == "Q"
                have_order = True
                comments.order()
            elif kind == "R":
                if not have_order:
                    raise DecodeError("result (R) record without a preceding order (O) record",
                                      record_index=index)
                comps = rec.components(3)
                code = comps[3] if len(comps) > 3 and comps[3] else next((c for c in comps if c), "")
                if not code:
                    raise DecodeError("result (R) record without a test code in R-3", record_index=index)
                if not sample_id:
                    raise DecodeError("order (O) record without a specimen ID", record_index=index)
                status = STATUS_CODES.get(rec.field(9).upper()[:1], "final")
                out.results.append(Result(
                    instrument=context.instrument,
                    sample_id=sample_id,
                    test_code=context.map_test(code),
                    instrument_test_code=code,
                    value=rec.component(4, 1),
                    units=rec.component(5, 1),
                    reference_range=rec.field(6),
                    flags=tuple(f for f in rec.repeats(7) if f and f != "N"),
                    status=status,
                    measured_at=context.timestamp(rec.field(13)),
                    kind="qc" if (qc_message or qc_order) else "patient",
                    patient_id=patient_id,
                    test_name=comps[1].strip() if len(comps) > 1 else "",
                    operator=next((c.strip() for c in rec.components(11) if c.strip()), ""),
                    equipment_id=rec.component(14, 1).strip(),
                ))
                comments.result(len(out.results) - 1)
            elif kind == "C":
                comments.comment(rec)
            elif kind == "Q":
                out.queries.append(decode_query(rec, context, index))
        out.results = comments.apply(out.results)
        return out


__all__ = ["PRIORITY_CODES", "REPORT_TYPES", "STATUS_CODES", "GenericAstmDriver"]
