"""Generic ASTM E1394 / LIS2-A2 driver: the standard's own field positions, no vendor quirks.

Where values sit (CLSI LIS2-A2, records P §8, O §9, R §10):

* P-3 practice-assigned patient ID (first component);
* O-3 specimen ID (first component), O-4 instrument specimen ID when O-3 is empty; O-12 action
  code ``Q`` marks a QC sample, as does H-12 processing ID ``Q``;
* R-3 universal test ID ``^^^code``: the 4th component is the manufacturer's test code;
* R-4 value, R-5 units, R-6 reference range, R-7 abnormal flags (repeats), R-9 status, R-13 time the
  test completed.

Records outside that hierarchy (C, M, S) are skipped here; vendor drivers read them.

Host queries (Q record, LIS2-A2 §11): Q-3 starting range ID, repeats of ``patient^specimen^...``
(the specimen ID is the 2nd component; ``ALL`` asks for every sample); Q-5 universal test ID
(``^^^code`` repeats, or ``ALL``); Q-13 request status (``O`` orders, ``A`` cancel the last request).
The host's answer and pushed orders are P + O records (O-3 specimen ID, O-5 tests, O-6 priority,
O-7 requested time, O-12 action code ``N``, O-26 report type ``Q``/``Y``/``Z`` or ``O``) between an H
naming labbridge as sender and an L whose L-3 is ``N``, or ``I`` when nothing was found.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from labbridge.driver import AstmDriver, DecodeContext
from labbridge.errors import DecodeError, RemoteProtocolError
from labbridge.model import Decoded, HostQuery, OrderLine, OrderPriority, Result, ResultStatus
from labbridge.protocols.e1394 import Field, Record, encode_record, parse_records

# LIS2-A2 R-9 result status codes.
STATUS_CODES: dict[str, ResultStatus] = {
    "F": "final", "R": "final", "P": "preliminary", "C": "correction", "X": "cancelled",
    "I": "preliminary", "S": "preliminary", "M": "final", "V": "final", "Q": "final",
}

# LIS2-A2 O-6 priority.
PRIORITY_CODES: dict[OrderPriority, str] = {"routine": "R", "asap": "A", "stat": "S"}
# LIS2-A2 O-26 report type of a host answer line.
REPORT_TYPES = {"ordered": "Q", "no_order": "Y", "unknown_sample": "Z"}


def _code_of(components: list[str]) -> str:
    """The test code in a universal test ID: the 4th component (manufacturer's code), else the first set."""
    if len(components) > 3 and components[3]:
        return components[3]
    return next((c for c in components if c), "")


class GenericAstmDriver(AstmDriver):
    name = "astm-generic"
    vendor = "generic"
    models = ("any LIS2-A2 analyzer",)
    version = "1.0"
    supports_orders = True

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
        for index, rec in enumerate(parsed):
            kind = rec.type
            if kind == "H":
                out.sender = rec.component(5, 1)
                qc_message = rec.field(12).upper().startswith("Q")
            elif kind == "P":
                patient_id = rec.component(3, 1)
                have_order = False
            elif kind == "O":
                sample_id = rec.component(3, 1) or rec.component(4, 1)
                qc_order = rec.field(12).upper() == "Q"
                have_order = True
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
                ))
            elif kind == "Q":
                out.queries.append(self._query(rec, context, index))
        return out

    def _query(self, rec: Record, context: DecodeContext, index: int) -> HostQuery:
        samples: list[str] = []
        everything = rec.field(3).strip().upper() == "ALL"
        for repeat in range(len(rec.repeats(3))):
            comps = rec.components(3, repeat)
            specimen = comps[1].strip() if len(comps) > 1 else ""
            if specimen.upper() == "ALL":
                everything = True
            elif specimen:
                samples.append(specimen)
        tests: list[str] = []
        for repeat in range(len(rec.repeats(5))):
            code = _code_of(rec.components(5, repeat)).strip()
            if code.upper() == "ALL":
                tests = []
                break
            if code:
                tests.append(context.map_test(code))
        status = rec.field(13).strip().upper()[:1] or "O"
        if not samples and not everything and status != "A":
            raise DecodeError("request (Q) record without a specimen ID in Q-3", record_index=index)
        return HostQuery(instrument=context.instrument, sample_ids=tuple(samples), test_codes=tuple(tests),
                         request_status=status, all_samples=everything)

    # ---- host side -----------------------------------------------------------------------------

    def encode_query_reply(self, query: HostQuery, lines: Sequence[OrderLine], context: DecodeContext, *,
                           at: datetime) -> list[bytes]:
        found = any(line.status == "ordered" for line in lines)
        return self._message(lines, context, at=at, terminator="N" if found else "I")

    def encode_orders(self, lines: Sequence[OrderLine], context: DecodeContext, *, at: datetime) -> list[bytes]:
        return self._message(lines, context, at=at, terminator="N", report_type="O")

    def _message(self, lines: Sequence[OrderLine], context: DecodeContext, *, at: datetime, terminator: str,
                 report_type: str | None = None) -> list[bytes]:
        ts = at.strftime("%Y%m%d%H%M%S")
        records = [encode_record("H", ["", "", [context.host_name], "", "", "", "", context.instrument, "", "P",
                                       "LIS2-A2", ts])]
        patients = 0
        orders = 0
        previous = None
        for line in lines:
            if line.sample_id != previous:
                patients += 1
                orders = 0
                records.append(encode_record("P", [str(patients), line.patient_id]))
                previous = line.sample_id
            orders += 1
            tests: Field = [["", "", "", context.instrument_test(c)] for c in line.test_codes]
            ordered = line.status == "ordered"
            fields: list[Field] = [""] * 25
            fields[0] = str(orders)  # O-2
            fields[1] = line.sample_id  # O-3 specimen ID
            fields[3] = tests  # O-5 universal test ID, one repeat per test
            fields[4] = PRIORITY_CODES[line.priority] if ordered else ""  # O-6
            fields[5] = ts if ordered else ""  # O-7 requested date/time
            fields[10] = "N" if ordered else ""  # O-12 action code: new order
            fields[24] = report_type or REPORT_TYPES[line.status]  # O-26 report type
            records.append(encode_record("O", fields))
        records.append(encode_record("L", ["1", terminator]))
        return records
