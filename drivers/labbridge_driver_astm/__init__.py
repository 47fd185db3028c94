"""Generic ASTM E1394 / LIS2-A2 driver: the standard's own field positions, no vendor quirks.

Where values sit (CLSI LIS2-A2, records P §8, O §9, R §10):

* P-3 practice-assigned patient ID (first component);
* O-3 specimen ID (first component), O-4 instrument specimen ID when O-3 is empty; O-12 action
  code ``Q`` marks a QC sample, as does H-12 processing ID ``Q``;
* R-3 universal test ID ``^^^code``: the 4th component is the manufacturer's test code. Many analyzers
  put the code in the 1st component and a letter or nothing in the 4th, so the component is chosen per
  message (:func:`code_component`): the instrument's ``test_code_component``, else the driver's
  (:attr:`GenericAstmDriver.test_code_component`, for a subclass), else the component whose values vary
  across the message's results (the most distinct non-empty values; a tie goes to the 4th, then the
  first), else (one result, or all alike) the 4th when set, else the first non-empty one; the test's name
  is the instrument's ``test_name_component``, else the 2nd component (when sent, and not the code's);
* R-4 value, R-5 units, R-6 reference range, R-7 abnormal flags (repeats), R-9 status, R-11 operator
  (first component sent), R-13 time the test completed, R-14 instrument identification (first component);
* P-4..P-9 (patient fields) and C records (comments on the P, O or R before them): labbridge.astm_content.

M and S records are skipped here; vendor drivers read them.

Host queries (Q record, LIS2-A2 §11): Q-3 starting range ID, repeats of ``patient^specimen^...``
(the specimen ID is the 2nd component; ``ALL`` asks for every sample); Q-5 universal test ID
(``^^^code`` repeats, or ``ALL``); Q-13 request status (``O`` orders, ``A`` cancel the last request).
Q decoding and the host's answer are shared with the profile drivers (labbridge.astm_orders).
The reading is labbridge.lis2a2, compiled with the protocol cores (docs/performance.md).
The host's answer and pushed orders are P + O records (O-3 specimen ID, O-5 tests, O-6 priority,
O-7 requested time, O-12 action code ``N``, O-26 report type ``Q``/``Y``/``Z`` or ``O``) between an H
naming labbridge as sender and an L whose L-3 is ``N``, or ``I`` when nothing was found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from labbridge import lis2a2
from labbridge.astm_orders import PRIORITY_CODES, REPORT_TYPES, AstmOrders
from labbridge.driver import AstmDriver, DecodeContext
from labbridge.lis2a2 import STATUS_CODES, code_component, result_code
from labbridge.model import Decoded


class GenericAstmDriver(AstmOrders, AstmDriver):
    name = "astm-generic"
    vendor = "generic"
    models = ("any LIS2-A2 analyzer",)
    version = "1.0"
    #: The R-3 component holding the test code for every instrument of this driver (a subclass for a family
    #: sets it); None: chosen per message (:func:`code_component`). An instrument's test_code_component wins.
    test_code_component: ClassVar[int | None] = None

    def decode(self, records: Sequence[bytes], context: DecodeContext) -> Decoded:
        return lis2a2.decode(records, context, self.test_code_component)


__all__ = ["PRIORITY_CODES", "REPORT_TYPES", "STATUS_CODES", "GenericAstmDriver", "code_component", "result_code"]
