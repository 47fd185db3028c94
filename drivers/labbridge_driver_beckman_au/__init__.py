"""Beckman Coulter AU chemistry (AU480, AU680, AU5800; the Olympus AU400/AU640/AU2700/AU5400 before them):
the AU "online" result texts, over the AU link framing (``framing = "au"``, :mod:`labbridge.protocols.au_online`).

The AU does not send ASTM records. Each message the link hands over is one *text*: the blocks of one
sample's results (``records``, control characters removed), each block starting with the same head.

Sources, and what each was used for:

* Olympus, *AU2700 & AU5400 On-line Specifications* (public copies at manualsdump.com / manualsonline.com,
  excerpts of pages 4-8, 30-33, 38, 42 and 57-65 read) and *AU400 & AU640 Online Specifications* (1999-2001; table of
  contents and pages 3-5 read). From those: the text classifications (``DB`` start of the result transfer;
  ``D `` normal sample, ``DH`` rerun, ``d `` / ``dH`` STAT (fast) result and its rerun, ``DQ`` QC sample,
  ``DA`` calibration, ``DR`` reagent blank; ``DE`` end; ``RB``/``R ``/``RH``/``RE`` the T.R.I. (sample
  information) inquiry); the framing (start code, text, end code ETX or ETB, optional BCC = XOR of the text
  through the end code); blocking of long result texts with a block identification number ``0``, ``1``,
  ... and ``E`` on the last block; class A (no answers) and class B (ACK/NAK per block, retries 0-3) transmission;
  the sample types (blank serum, ``U`` urine, ``X`` other) and the emergency/STAT sample numbering of the alarm list.
  Beckman Coulter's *AU680/AU480 Online Specifications* and *AU5800 Online Specification* (D-160845) are the
  current documents (not read here); Beckman's *DxC 700 AU Online Specification* (2016, table of contents read)
  keeps the same message kinds (sample information request and response, analysis data messages).
* The field widths: the AU's result text layout is **set on the analyzer** ([PARAMETER] [ONLINE]: unit
  number on/off, digits of the rack number, the sample ID, the test number, the result, the flags). The
  layout below is the one an open-source LIS driver for an AU5800 site reads (C#, ``DeviceLink.Devices.AU5800``:
  head of 30 characters, then per test a 3-digit online test number, a 9-character result and 8 characters
  of data flags); a second open-source decoder for AU480/AU680/AU5800 (TypeScript) confirms the order of
  the head (rack, cup, sample number, sample type) with narrower, site-specific widths. Neither is a
  Beckman document.

The layout this driver reads (:data:`LAYOUT`; character positions from 0)::

    0-1   text classification ("D ", "DH", "d ", "dH", "DQ", "DA", "DR"; "R ", "RH" inquiries)
    2-3   unit (analyzer) number
    4-7   rack number            8-9   cup position        10  sample type (blank serum, U urine, X other)
    11-14 sample number          15-24 sample ID (barcode; blank: the sample number is used)
    25-28 (DQ: the control number; other texts: not read)   29  block identification number (0-9, E last)
    30-   per test: 3 online test number, 9 result (right aligned), 8 data flags (four 2-character flags)

How it is mapped: one :class:`~labbridge.model.Result` per test with a result; the test code is the AU's
online test number as sent (``"012"``: the keys of the instrument's ``test_map``), the value the result
stripped, the flags the non-blank data flags as sent; the message's sender (for ``expected_sender``) is the
unit number. ``DQ`` results are QC (``kind = "qc"``, sample ID
the control's ID, else ``CONTROL-<control number>``); ``DH``/``dH`` reruns are sent as ``correction``
(they replace the first run's value); ``DA``/``DR`` (calibration, reagent blank) carry no patient result:
the text is kept in the store and nothing is relayed; an ``R``/``RH`` inquiry is reported as a host query
(counted and kept; labbridge does not answer the AU's inquiry, so set the AU not to ask, or it waits out
its own T.R.I. timeout). A text whose blocks do not fit the layout is refused with the reason (kept raw,
dead-lettered) rather than read at the wrong offsets.

The capture ``au680-results-qc-rerun.au`` was composed for this driver from the specifications above and
this layout (DB, a two-block patient text, a STAT text, a rerun, a QC text, a calibration text, DE, with
BCCs); it was **not recorded from an analyzer**.

Not verified (say so to the site, and compare one real text with the layout before going live): the field
widths (they depend on the AU's own settings; a different layout needs a driver subclass with another
:class:`AuLayout`); the meaning of each data flag (passed through as sent; the AU's flag list was not read);
whether blank results or the ``d``/``dH`` fast texts occur on the AU480/AU680 (the AU2700 sends them);
units (the AU's online texts carry none: the LIS knows each test's unit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from labbridge.driver import AstmDriver, DecodeContext
from labbridge.errors import DecodeError
from labbridge.model import Decoded, HostQuery, Result, ResultStatus


@dataclass(frozen=True, slots=True)
class AuLayout:
    """Where the fields of a result text are (the AU's online format settings)."""

    unit_no: tuple[int, int] = (2, 4)
    rack: tuple[int, int] = (4, 8)
    cup: tuple[int, int] = (8, 10)
    sample_type: tuple[int, int] = (10, 11)
    sample_no: tuple[int, int] = (11, 15)
    sample_id: tuple[int, int] = (15, 25)
    control_no: tuple[int, int] = (25, 29)  # DQ texts only
    block_no: int = 29
    head: int = 30  # the results start here
    test_no: int = 3
    result: int = 9
    flags: int = 8
    flag_width: int = 2

    @property
    def group(self) -> int:
        return self.test_no + self.result + self.flags


LAYOUT = AuLayout()

PATIENT_TEXTS = frozenset({"D ", "d "})
RERUN_TEXTS = frozenset({"DH", "dH"})
QC_TEXTS = frozenset({"DQ"})
NO_RESULT_TEXTS = frozenset({"DA", "DR"})  # calibration, reagent blank: kept, not relayed
INQUIRY_TEXTS = frozenset({"R ", "RH"})


class BeckmanAuDriver(AstmDriver):
    name = "beckman-au"
    vendor = "Beckman Coulter"
    models = ("AU480", "AU680", "AU5800")
    version = "1.0"
    link_defaults = {"framing": "au"}
    layout: ClassVar[AuLayout] = LAYOUT

    def decode(self, records: Sequence[bytes], context: DecodeContext) -> Decoded:
        if not records:
            raise DecodeError("no text")
        texts = [r.decode(context.encoding, errors="replace") for r in records]
        kind = texts[0][:2]
        if kind in NO_RESULT_TEXTS:
            return Decoded(warnings=[f"{kind} text (calibration or reagent blank): no patient result"])
        if kind in INQUIRY_TEXTS:
            return self._inquiry(texts, context)
        if not (kind in PATIENT_TEXTS or kind in RERUN_TEXTS or kind in QC_TEXTS):
            raise DecodeError(f"text classification {kind!r} is not an AU result text", record_index=0)
        self._check_blocks(texts)
        lay = self.layout
        head = texts[0]
        sample = _field(head, lay.sample_id) or _field(head, lay.sample_no)
        qc = kind in QC_TEXTS
        if qc:
            control = _field(head, lay.control_no)
            sample = _field(head, lay.sample_id) or (f"CONTROL-{control}" if control else "")
        if not sample:
            raise DecodeError("the text carries neither a sample ID nor a sample number", record_index=0)
        status: ResultStatus = "correction" if kind in RERUN_TEXTS else "final"
        results: list[Result] = []
        for index, text in enumerate(texts):
            for code, value, flags in self._groups(text, index):
                results.append(Result(instrument=context.instrument, sample_id=sample, test_code=context.map_test(code),
                                      instrument_test_code=code, value=value, flags=flags, status=status,
                                      kind="qc" if qc else "patient"))
        return Decoded(results=results, sender=_field(head, lay.unit_no))

    def _inquiry(self, texts: list[str], context: DecodeContext) -> Decoded:
        lay = self.layout
        sample = _field(texts[0], lay.sample_id) or _field(texts[0], lay.sample_no)
        if not sample:
            raise DecodeError("sample-information inquiry without a sample ID or number", record_index=0)
        return Decoded(queries=[HostQuery(instrument=context.instrument, sample_ids=(sample,))],
                       sender=_field(texts[0], lay.unit_no))

    def _check_blocks(self, texts: list[str]) -> None:
        """Every block carries the same head and its number: 0, 1, ... then E on the last (a text of one
        block: E, or blank when the AU does not number blocks)."""
        lay = self.layout
        same = slice(0, lay.block_no)
        for index, text in enumerate(texts):
            if len(text) < lay.head:
                raise DecodeError(f"block shorter than the {lay.head}-character head of the layout: check the AU's "
                                  "online format settings against the beckman-au driver's layout",
                                  record_index=index)
            if text[same] != texts[0][same]:
                raise DecodeError("a block of the text belongs to another sample", record_index=index)
            number = text[lay.block_no]
            last = index == len(texts) - 1
            expected = ("E", " ") if last and index == 0 else ("E",) if last else (str(index % 10),)
            if number not in expected:
                raise DecodeError(f"block number {number!r} where {' or '.join(map(repr, expected))} was expected",
                                  record_index=index)

    def _groups(self, text: str, index: int) -> list[tuple[str, str, tuple[str, ...]]]:
        lay = self.layout
        body = text[lay.head:]
        size = lay.group
        whole = len(body) - len(body) % size
        if body[whole:].strip():
            raise DecodeError(f"{len(body)} characters of results are not a whole number of {size}-character "
                              "test groups: check the AU's online format settings against the beckman-au "
                              "driver's layout", record_index=index)
        out: list[tuple[str, str, tuple[str, ...]]] = []
        for start in range(0, whole, size):
            group = body[start:start + size]
            code = group[:lay.test_no].strip()
            value = group[lay.test_no:lay.test_no + lay.result].strip()
            if not code and not value:
                continue  # padding
            if not code:
                raise DecodeError("a result without its online test number", record_index=index)
            if not value:
                continue  # the test has no result in this text
            marks = group[lay.test_no + lay.result:]
            flags = tuple(f for f in (marks[i:i + lay.flag_width].strip()
                                      for i in range(0, len(marks), lay.flag_width)) if f)
            out.append((code, value, flags))
        return out


def _field(text: str, where: tuple[int, int]) -> str:
    return text[where[0]:where[1]].strip()
