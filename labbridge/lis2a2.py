"""LIS2-A2's own reading of an ASTM message's results: the generic ASTM driver's decode.

Where each value sits, and how the test code's R-3 component is chosen, is the generic driver's documentation
(``labbridge_driver_astm``, "Where values sit"); this module is that reading, kept beside the protocol cores
so that it is compiled with them (pyproject.toml ``[tool.labbridge] compiled``; docs/performance.md): a
message's results are read record by record here, and every record's fields cost a call each. Pure (no I/O).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from labbridge.astm_content import Comments
from labbridge.astm_orders import decode_query
from labbridge.driver import DecodeContext
from labbridge.errors import DecodeError, RemoteProtocolError
from labbridge.model import Decoded, Result, ResultStatus
from labbridge.protocols.e1394 import parse_records

# LIS2-A2 R-9 result status codes.
STATUS_CODES: dict[str, ResultStatus] = {
    "F": "final", "R": "final", "P": "preliminary", "C": "correction", "X": "cancelled",
    "I": "preliminary", "S": "preliminary", "M": "final", "V": "final", "Q": "final",
}


LIS2A2_CODE_COMPONENT = 4  # ^^^code


def _test_name(comps: Sequence[str], configured: int | None, code_at: int | None) -> str:
    """The test's name from R-3's components: the configured one (counted from 1), else the 2nd; never the
    component the code was read from."""
    at = configured or 2
    if at == code_at or at > len(comps):
        return ""
    return comps[at - 1].strip()


def code_component(test_ids: Sequence[Sequence[str]], configured: int | None) -> int | None:
    """The R-3 component (1-based) holding the test code in a message whose results have these R-3
    components: ``configured`` if set, else the one whose values vary most across the results (a tie: the
    4th, then the first), else None (nothing varies: each result falls back on :func:`result_code`)."""
    if configured is not None:
        return configured
    width = max((len(c) for c in test_ids), default=0)
    values = {i + 1: {c[i] if i < len(c) else "" for c in test_ids} for i in range(width)}
    varying = [i for i, v in values.items() if len(v) > 1]
    if not varying:
        return None
    # An empty value is no code: "A" or nothing in the 4th varies less than GLU, K in the 1st.
    return max(varying, key=lambda i: (len(values[i] - {""}), i == LIS2A2_CODE_COMPONENT, -i))


def result_code(comps: Sequence[str]) -> str:
    """LIS2-A2's rule for one R-3: the 4th component when set, else the first non-empty one."""
    if len(comps) >= LIS2A2_CODE_COMPONENT and comps[LIS2A2_CODE_COMPONENT - 1]:
        return comps[LIS2A2_CODE_COMPONENT - 1]
    return next((c for c in comps if c), "")


_NOTHING_MORE: tuple[None, tuple[str, ...], tuple[str, ...]] = (None, (), ())  # no patient, no comments


def _first_set(components: Sequence[str]) -> str:
    """The first component that says anything, stripped ('' if none)."""
    for c in components:
        text = c.strip()
        if text:
            return text
    return ""


def decode(records: Sequence[bytes], context: DecodeContext, driver_component: int | None) -> Decoded:
    """The results, comments and host queries of one message's records, read by LIS2-A2's positions.

    ``driver_component`` is the driver's R-3 component for the test code (None: chosen per message); the
    instrument's ``test_code_component`` wins over it. Raises :class:`DecodeError` for a message that cannot
    be read (naming the record).
    """
    try:
        parsed = parse_records(records, context.encoding)
    except RemoteProtocolError as exc:
        raise DecodeError(str(exc), record_index=0) from exc
    configured = context.test_code_component or driver_component
    component = code_component([rec.components(3) for rec in parsed if rec.type == "R"], configured)
    out = Decoded()
    qc_message = False
    patient_id = ""
    sample_id = ""
    qc_order = False
    have_order = False
    comments = Comments()
    # Each result's fields from its R record: sample, code, value, units, range, flags, status, time,
    # kind, patient ID, test name, operator, equipment ID.
    pending: list[tuple[Any, ...]] = []
    last_when: str | None = None
    measured_at: str | None = None
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
            code = (comps[component - 1] if 0 < component <= len(comps) else "") if component is not None \
                else result_code(comps)
            if not code and component is not None and component == configured:
                raise DecodeError(f"result (R) record without a test code in R-3 component {component} "
                                  "(test_code_component)", record_index=index)
            code = code or result_code(comps)
            if not code:
                raise DecodeError("result (R) record without a test code in R-3", record_index=index)
            if not sample_id:
                raise DecodeError("order (O) record without a specimen ID", record_index=index)
            when = rec.field(13)
            if when != last_when:  # every result of a message tends to carry the same R-13
                last_when, measured_at = when, context.timestamp(when)
            # Built once every record is read (below): the C records after it may still add comments.
            pending.append((
                sample_id, code, rec.component(4, 1), rec.component(5, 1), rec.field(6),
                tuple([f for f in rec.repeats(7) if f and f != "N"]),
                STATUS_CODES.get(rec.field(9).upper()[:1], "final"), measured_at,
                "qc" if (qc_message or qc_order) else "patient", patient_id,
                _test_name(comps, context.test_name_component, component), _first_set(rec.components(11)),
                rec.component(14, 1).strip(),
            ))
            comments.result(len(pending) - 1)
        elif kind == "C":
            comments.comment(rec)
        elif kind == "Q":
            out.queries.append(decode_query(rec, context, index))
    test_map = context.test_map  # context.map_test's lookup, without a call into Python per result
    for i, (sample, code, value, units, reference_range, flags, status, measured_at, result_kind, patient,
            test_name, operator, equipment_id) in enumerate(pending):
        person, order_comments, notes = comments.about(i, patient) or _NOTHING_MORE
        out.results.append(Result(
            instrument=context.instrument, sample_id=sample, test_code=test_map.get(code, code),
            instrument_test_code=code, value=value, units=units, reference_range=reference_range, flags=flags,
            status=status, measured_at=measured_at, kind=result_kind, patient_id=patient, test_name=test_name,
            operator=operator, equipment_id=equipment_id, patient=person, order_comments=order_comments,
            comments=notes,
        ))
    return out


