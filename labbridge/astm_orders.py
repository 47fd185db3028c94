"""ASTM host queries and order download, shared by every ASTM driver that answers them.

One implementation of the host side of CLSI LIS2-A2 for the generic driver
(``labbridge_driver_astm``) and for profile drivers whose profile turns host queries on
(``[driver] host_query = true``, :class:`labbridge.driver_profile.ProfileAstmDriver`):

* :func:`decode_query` reads a Q record (LIS2-A2 §11): Q-3 starting range ID, repeats of
  ``patient^specimen^...`` (the specimen ID is the 2nd component; ``ALL`` asks for every sample);
  Q-5 universal test ID (``^^^code`` repeats, or a bare ``ALL`` as VITROS sends it); Q-13 request
  status (``O`` orders, ``A`` cancel the last request).
* :func:`encode_query_reply` and :func:`encode_orders` build the host's answer and pushed orders:
  P + O records (O-3 specimen ID, O-5 tests, O-6 priority, O-7 requested time, O-12 action code
  ``N``, O-26 report type ``Q``/``Y``/``Z`` or ``O``) between an H naming labbridge as sender and an
  L whose L-3 is ``N``, or ``I`` when nothing was found (PROTOCOLS.md R-B11).

:class:`AstmOrders` is the mixin that gives a driver the two encoders of the
:class:`labbridge.driver.AstmDriver` contract. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from labbridge.driver import DecodeContext
from labbridge.errors import DecodeError
from labbridge.model import HostQuery, OrderLine, OrderPriority
from labbridge.protocols.e1394 import Field, Record, encode_record

# LIS2-A2 O-6 priority.
PRIORITY_CODES: dict[OrderPriority, str] = {"routine": "R", "asap": "A", "stat": "S"}
# LIS2-A2 O-26 report type of a host answer line.
REPORT_TYPES = {"ordered": "Q", "no_order": "Y", "unknown_sample": "Z"}


def universal_test_code(components: Sequence[str]) -> str:
    """The test code in a universal test ID: the 4th component (manufacturer's code), else the first set."""
    if len(components) > 3 and components[3]:
        return components[3]
    return next((c for c in components if c), "")


def decode_query(rec: Record, context: DecodeContext, index: int) -> HostQuery:
    """One Q record -> a :class:`HostQuery` (test codes mapped to LIS codes); ``index`` names the record
    in the :class:`DecodeError` raised for a query that names no specimen."""
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
        code = universal_test_code(rec.components(5, repeat)).strip()
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


def encode_query_reply(query: HostQuery, lines: Sequence[OrderLine], context: DecodeContext, *,
                       at: datetime) -> list[bytes]:
    """The host's answer to ``query``: L-3 ``N`` when any test is ordered, else ``I``."""
    found = any(line.status == "ordered" for line in lines)
    return _message(lines, context, at=at, terminator="N" if found else "I")


def encode_orders(lines: Sequence[OrderLine], context: DecodeContext, *, at: datetime) -> list[bytes]:
    """Orders downloaded unasked: O-26 ``O``, L-3 ``N``."""
    return _message(lines, context, at=at, terminator="N", report_type="O")


def _message(lines: Sequence[OrderLine], context: DecodeContext, *, at: datetime, terminator: str,
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


class AstmOrders:
    """Mixin for an :class:`~labbridge.driver.AstmDriver` that answers host queries and downloads orders
    with the LIS2-A2 records above. Put it before ``AstmDriver`` in the bases."""

    supports_orders: ClassVar[bool] = True

    def encode_query_reply(self, query: HostQuery, lines: Sequence[OrderLine], context: DecodeContext, *,
                           at: datetime) -> list[bytes]:
        return encode_query_reply(query, lines, context, at=at)

    def encode_orders(self, lines: Sequence[OrderLine], context: DecodeContext, *, at: datetime) -> list[bytes]:
        return encode_orders(lines, context, at=at)


__all__ = ["PRIORITY_CODES", "REPORT_TYPES", "AstmOrders", "decode_query", "encode_orders", "encode_query_reply",
           "universal_test_code"]
