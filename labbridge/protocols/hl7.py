"""HL7 v2 for the hot path: parse what analyzers send, build what the LIS gets (PROTOCOLS.md part c).

Plain string work on purpose: python-hl7's parser is about 40x slower than a split. Receiving, a message
is read as bytes, MSH is decoded with an ASCII-compatible codec to find the encoding characters (MSH-2,
R-C8) and the character set (MSH-18), the rest is decoded with that character set, split on CR and the
field separator, and escapes are decoded only after splitting, field by field, when a value is read
(R-C9). Sending, values are escaped with the escape character first. Tests check what this module builds
against hl7apy's strict v2.5.1 validation and parse it back with python-hl7.

What each canonical field becomes in ORU^R01 and OUL^R22 is listed in docs/lis-output.md; the choices a
destination makes (coding system, PID fields the analyzer did not send) are :class:`Hl7Options`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from labbridge.model import Result, order_comments
from labbridge.protocols.hl7_parse import DEFAULT_SEPARATORS, escape, plain

__all__ = ["DEFAULT_OPTIONS", "ENCODING_CHARS", "AckInfo", "Hl7Options", "Party", "build_oru_r01", "build_oul_r22",
           "escape", "hl7_timestamp", "parse_ack"]

ENCODING_CHARS = DEFAULT_SEPARATORS.encoding_characters
_STATUS = {"final": "F", "preliminary": "P", "correction": "C", "cancelled": "X"}


def hl7_timestamp(iso: str | None) -> str:
    """ISO 8601 to HL7 TS (``YYYYMMDDHHMMSS+ZZZZ``); '' when absent or unreadable."""
    if not iso:
        return ""
    return _hl7_timestamp(iso)


@functools.lru_cache(maxsize=1024)  # the results of one message share their time: parse it once
def _hl7_timestamp(iso: str) -> str:
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    return dt.strftime("%Y%m%d%H%M%S%z")


@dataclass(frozen=True, slots=True)
class Party:
    application: str
    facility: str = ""


@dataclass(frozen=True, slots=True)
class Hl7Options:
    """A destination's choices for the HL7 it receives (one object per destination, not per message).

    ``coding_system``: OBX-3.3, the coding system of the LIS test code (HL7 table 0396: ``L`` local, ``LN``
    LOINC, or a site's ``99xxx``). ``missing``: a required PID field (PID-3, PID-5) the analyzer did not
    send is ``""`` (``null``: HL7's "no value", strictly valid; a LIS that updates patients from results
    may read it as "delete the stored value") or left empty (``empty``: "nothing said"; not strictly
    valid v2.5.1, PID-3 and PID-5 being required). ``pid``: with ``omit``, no PID when the analyzer sent
    no patient at all (the patient group is optional in ORU^R01 and OUL^R22); ``send``: a PID always.
    """

    coding_system: str = "L"
    missing: Literal["null", "empty"] = "null"
    pid: Literal["omit", "send"] = "omit"


DEFAULT_OPTIONS = Hl7Options()
_HL7_DATE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2})?)?)?)?)?$")
_SEX = frozenset({"F", "M", "O", "U", "A", "N"})  # HL7 table 0001
# What says "not diluted": not worth a note on every result (a Sysmex sends "1" with each parameter).
_NO_DILUTION = frozenset({"", "1", "1:1", "1/1", "UNDILUTED", "NONE"})
NTE_SOURCE = "L"  # HL7 table 0105: ancillary (filler) department, i.e. the analyzer's side of the lab


def _msh(message_type: str, *, control_id: str, created_at: datetime, sender: Party, receiver: Party,
         processing_id: str, profile: str = "") -> str:
    return "|".join(["MSH", ENCODING_CHARS, escape(sender.application), escape(sender.facility),
                     escape(receiver.application), escape(receiver.facility),
                     created_at.strftime("%Y%m%d%H%M%S%z"), "", message_type, control_id,
                     processing_id, "2.5.1", "", "", "", "", "", "UNICODE UTF-8", "", "", profile])\
        .rstrip("|")


def _nte(comments: Sequence[str]) -> list[str]:
    """NTE segments (set ID from 1 under their parent), one per comment, after the segment they are about."""
    return [f"NTE|{i}|{NTE_SOURCE}|{escape(text)}" for i, text in enumerate(comments, start=1)]


def _pid(first: Result, opts: Hl7Options) -> list[str]:
    """PID and the patient's NTE; none when the analyzer sent no patient and ``opts.pid`` is ``omit``."""
    p = first.patient
    if not first.patient_id and p is None and opts.pid == "omit":
        return []
    missing = '""' if opts.missing == "null" else ""
    pid3 = f"{escape(first.patient_id)}^^^^PI" if first.patient_id else missing
    if p is None:
        return ["|".join(["PID", "1", "", pid3, "", missing]).rstrip("|")]
    name = "^".join(escape(c) for c in p.name) if any(p.name) else missing
    born = p.birth_date if _HL7_DATE.match(p.birth_date) else ""  # as sent, when it is an HL7 date
    sex = p.sex.upper() if p.sex.upper() in _SEX else ""
    fields = ["PID", "1", escape(p.lab_id), pid3, escape(p.alt_id), name, escape(p.mothers_maiden_name), born, sex]
    return ["|".join(fields).rstrip("|"), *_nte(p.comments)]


def _obr(first: Result) -> str:
    sample = escape(first.sample_id)
    instrument = escape(first.instrument)
    return "|".join(["OBR", "1", sample, sample, f"{instrument}^{instrument} results^L", "", "",
                     hl7_timestamp(first.measured_at), "", "", "", "", "", "", "", "", "", "", "", "", "", "",
                     "", "", "", _STATUS.get(first.status, "F")])


def _obx(results: Sequence[Result], opts: Hl7Options) -> list[str]:
    """Each result's OBX, then its NTE: the analyzer's comments, and its dilution when it is one."""
    out = []
    for i, r in enumerate(results, start=1):
        test_code, test_name, instrument_code, value, units = (r.test_code, r.test_name, r.instrument_test_code,
                                                               r.value, r.units)
        reference_range, operator, instrument, equipment_id, flags = (r.reference_range, r.operator, r.instrument,
                                                                      r.equipment_id, r.flags)
        # Most results have nothing to escape: one scan of them all, and then their values as they are (no call
        # per value); the others have each value escaped.
        if not plain("".join((test_code, test_name, instrument_code, instrument, equipment_id, value, units,
                              reference_range, operator, *flags))):
            test_code, test_name, instrument_code = escape(test_code), escape(test_name), escape(instrument_code)
            value, units, reference_range = escape(value), escape(units), escape(reference_range)
            operator, instrument, equipment_id = escape(operator), escape(instrument), escape(equipment_id)
            flags = tuple([escape(f) for f in flags])
        value_type = "NM" if r.numeric_value is not None else "ST"
        code = f"{test_code}^{test_name}^{opts.coding_system}^{instrument_code}^^99INST"
        equipment = instrument + (f"~{equipment_id}" if equipment_id else "")
        out.append("|".join(["OBX", str(i), value_type, code, "", value, units, reference_range, "~".join(flags),
                             "", "", _STATUS.get(r.status, "F"), "", "", hl7_timestamp(r.measured_at), "", operator,
                             "", equipment]))
        if r.comments:
            out += _nte(r.comments)
        if r.dilution.strip().upper() not in _NO_DILUTION:
            out.append(f"NTE|{len(r.comments) + 1}|{NTE_SOURCE}|{escape('Dilution: ' + r.dilution)}|RE^Remark^HL70364")
    return out


def _qc_spm(first: Result) -> list[str]:
    """ORU^R01: a QC result's specimen, marked as a control (SPM-11 ``Q``), after its observations."""
    if first.kind != "qc":
        return []
    return ["|".join(["SPM", "1", f"{escape(first.sample_id)}&LABBRIDGE", "", "UNK^Unknown^HL70487",
                      "", "", "", "", "", "", "Q^Control specimen^HL70369"])]


def _order(results: Sequence[Result], opts: Hl7Options) -> list[str]:
    """OBR, the order's NTE, then each OBX with its NTE."""
    return [_obr(results[0]), *_nte(order_comments(results)), *_obx(results, opts)]


def build_oru_r01(results: Sequence[Result], *, control_id: str, created_at: datetime, sender: Party,
                  receiver: Party, processing_id: str = "P", options: Hl7Options = DEFAULT_OPTIONS) -> bytes:
    """One ORU^R01 (v2.5.1) for the results of one sample from one instrument.

    MSH-10 is the caller's stable control ID, so a resend is recognisable by the LIS (R-C7). A QC sample's
    order ends with an SPM whose SPM-11 (specimen role) is ``Q`` (v2.5.1 ORU_R01 SPECIMEN group).
    """
    if not results:
        raise ValueError("an ORU^R01 needs at least one result")
    first = results[0]
    segments = [_msh("ORU^R01^ORU_R01", control_id=control_id, created_at=created_at, sender=sender,
                     receiver=receiver, processing_id=processing_id),
                *_pid(first, options), *_order(results, options), *_qc_spm(first)]
    return "\r".join(segments).encode("utf-8") + b"\r"


def build_oul_r22(results: Sequence[Result], *, control_id: str, created_at: datetime, sender: Party,
                  receiver: Party, processing_id: str = "P", options: Hl7Options = DEFAULT_OPTIONS) -> bytes:
    """One OUL^R22 (v2.5.1, the IHE LAW LAB-29 shape) for the results of one sample from one instrument.

    Specimen group: SPM (SPM-2 the specimen ID, SPM-11 ``Q`` for a QC sample, ``P`` for a patient's),
    then the order (OBR, its NTE) and its results (OBX, their NTE). MSH-21 names the LAB-29 profile.
    """
    if not results:
        raise ValueError("an OUL^R22 needs at least one result")
    first = results[0]
    role = "Q^Control specimen^HL70369" if first.kind == "qc" else "P^Patient^HL70369"
    spm = "|".join(["SPM", "1", f"{escape(first.sample_id)}&LABBRIDGE", "", "UNK^Unknown^HL70487",
                    "", "", "", "", "", "", role])
    segments = [_msh("OUL^R22^OUL_R22", control_id=control_id, created_at=created_at, sender=sender,
                     receiver=receiver, processing_id=processing_id, profile="LAB-29^IHE"),
                *_pid(first, options), spm, *_order(results, options)]
    return "\r".join(segments).encode("utf-8") + b"\r"


@dataclass(frozen=True, slots=True)
class AckInfo:
    code: str  # MSA-1: AA, AE, AR (original mode) or CA, CE, CR (enhanced mode)
    control_id: str  # MSA-2: the MSH-10 of the acknowledged message
    text: str  # MSA-3 and ERR details, for an operator

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def parse_ack(payload: bytes) -> AckInfo | None:
    """Read MSA (and ERR) from an acknowledgement; None if it is not one."""
    text = payload.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    segments = [s for s in text.split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        return None
    sep = segments[0][3]
    code = control = ""
    details: list[str] = []
    found = False
    for seg in segments:
        fields = seg.split(sep)
        if fields[0] == "MSA":
            found = True
            code = fields[1] if len(fields) > 1 else ""
            control = fields[2] if len(fields) > 2 else ""
            if len(fields) > 3 and fields[3]:
                details.append(fields[3])
        elif fields[0] == "ERR":
            details.extend(f for f in fields[1:] if f)
    if not found:
        return None
    return AckInfo(code=code.upper(), control_id=control, text="; ".join(details))
