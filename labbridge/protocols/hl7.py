"""HL7 v2 for the hot path: parse what analyzers send, build what the LIS gets (PROTOCOLS.md part c).

Plain string work on purpose: python-hl7's parser is about 40x slower than a split. Receiving, a message
is read as bytes, MSH is decoded with an ASCII-compatible codec to find the encoding characters (MSH-2,
R-C8) and the character set (MSH-18), the rest is decoded with that character set, split on CR and the
field separator, and escapes are decoded only after splitting, field by field, when a value is read
(R-C9). Sending, values are escaped with the escape character first. Tests check what this module builds
against hl7apy's strict v2.5.1 validation and parse it back with python-hl7.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from labbridge.model import Result
from labbridge.protocols.hl7_parse import DEFAULT_SEPARATORS, escape

__all__ = ["ENCODING_CHARS", "AckInfo", "Party", "build_oru_r01", "build_oul_r22", "escape", "hl7_timestamp",
           "parse_ack"]

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


def _msh(message_type: str, *, control_id: str, created_at: datetime, sender: Party, receiver: Party,
         processing_id: str, profile: str = "") -> str:
    return "|".join(["MSH", ENCODING_CHARS, escape(sender.application), escape(sender.facility),
                     escape(receiver.application), escape(receiver.facility),
                     created_at.strftime("%Y%m%d%H%M%S%z"), "", message_type, control_id,
                     processing_id, "2.5.1", "", "", "", "", "", "UNICODE UTF-8", "", "", profile])\
        .rstrip("|")


def _pid(first: Result) -> list[str]:
    # PID-5 (name) is required in v2.5.1; results are matched by specimen, so it is sent as null.
    return [f"PID|1||{escape(first.patient_id)}^^^^PI||\"\""] if first.patient_id else []


def _obr(first: Result) -> str:
    sample = escape(first.sample_id)
    instrument = escape(first.instrument)
    return "|".join(["OBR", "1", sample, sample, f"{instrument}^{instrument} results^L", "", "",
                     hl7_timestamp(first.measured_at), "", "", "", "", "", "", "", "", "", "", "", "", "", "",
                     "", "", "", _STATUS.get(first.status, "F")])


def _obx(results: Sequence[Result]) -> list[str]:
    out = []
    for i, r in enumerate(results, start=1):
        value_type = "NM" if r.numeric_value is not None else "ST"
        code = f"{escape(r.test_code)}^^L^{escape(r.instrument_test_code)}^^99INST"
        flags = "~".join(escape(f) for f in r.flags)
        out.append("|".join(["OBX", str(i), value_type, code, "", escape(r.value), escape(r.units),
                             escape(r.reference_range), flags, "", "", _STATUS.get(r.status, "F"),
                             "", "", hl7_timestamp(r.measured_at), "", "", "", escape(r.instrument)]))
    return out


def build_oru_r01(results: Sequence[Result], *, control_id: str, created_at: datetime, sender: Party,
                  receiver: Party, processing_id: str = "P") -> bytes:
    """One ORU^R01 (v2.5.1) for the results of one sample from one instrument.

    MSH-10 is the caller's stable control ID, so a resend is recognisable by the LIS (R-C7).
    """
    if not results:
        raise ValueError("an ORU^R01 needs at least one result")
    first = results[0]
    segments = [_msh("ORU^R01^ORU_R01", control_id=control_id, created_at=created_at, sender=sender,
                     receiver=receiver, processing_id=processing_id),
                *_pid(first), _obr(first), *_obx(results)]
    return "\r".join(segments).encode("utf-8") + b"\r"


def build_oul_r22(results: Sequence[Result], *, control_id: str, created_at: datetime, sender: Party,
                  receiver: Party, processing_id: str = "P") -> bytes:
    """One OUL^R22 (v2.5.1, the IHE LAW LAB-29 shape) for the results of one sample from one instrument.

    Specimen group: SPM (SPM-2 the specimen ID, SPM-11 ``Q`` for a QC sample, ``P`` for a patient's),
    then the order (OBR) and its results (OBX). MSH-21 names the LAB-29 profile.
    """
    if not results:
        raise ValueError("an OUL^R22 needs at least one result")
    first = results[0]
    role = "Q^Control specimen^HL70369" if first.kind == "qc" else "P^Patient^HL70369"
    spm = "|".join(["SPM", "1", f"{escape(first.sample_id)}&LABBRIDGE", "", "UNK^Unknown^HL70487",
                    "", "", "", "", "", "", role])
    segments = [_msh("OUL^R22^OUL_R22", control_id=control_id, created_at=created_at, sender=sender,
                     receiver=receiver, processing_id=processing_id, profile="LAB-29^IHE"),
                *_pid(first), spm, _obr(first), *_obx(results)]
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
