"""HL7 v2 helpers for the hot path: build ORU^R01 v2.5.1, read an ACK (PROTOCOLS.md part c).

Plain string work on purpose: python-hl7's parser is about 40x slower than a split. Tests check what
this module builds against hl7apy's strict v2.5.1 validation and parse it back with python-hl7.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from labbridge.model import Result

ENCODING_CHARS = "^~\\&"
_STATUS = {"final": "F", "preliminary": "P", "correction": "C", "cancelled": "X"}


def escape(value: str) -> str:
    """HL7 escaping with the default delimiters (R-C9): the escape character first."""
    if not value:
        return value
    out = value.replace("\\", "\\E\\")
    out = out.replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\").replace("~", "\\R\\")
    return out.replace("\r", "\\X0D\\").replace("\n", "\\X0A\\")


def hl7_timestamp(iso: str | None) -> str:
    """ISO 8601 to HL7 TS (``YYYYMMDDHHMMSS+ZZZZ``); '' when absent or unreadable."""
    if not iso:
        return ""
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    return dt.strftime("%Y%m%d%H%M%S%z")


@dataclass(frozen=True, slots=True)
class Party:
    application: str
    facility: str = ""


def build_oru_r01(results: Sequence[Result], *, control_id: str, created_at: datetime, sender: Party,
                  receiver: Party, processing_id: str = "P") -> bytes:
    """One ORU^R01 (v2.5.1) for the results of one sample from one instrument.

    MSH-10 is the caller's stable control ID, so a resend is recognisable by the LIS (R-C7).
    """
    if not results:
        raise ValueError("an ORU^R01 needs at least one result")
    first = results[0]
    segments = [
        "|".join(["MSH", ENCODING_CHARS, escape(sender.application), escape(sender.facility),
                  escape(receiver.application), escape(receiver.facility),
                  created_at.strftime("%Y%m%d%H%M%S%z"), "", "ORU^R01^ORU_R01", control_id,
                  processing_id, "2.5.1", "", "", "", "", "", "UNICODE UTF-8"]),
    ]
    if first.patient_id:
        # PID-5 (name) is required in v2.5.1; results are matched by specimen, so it is sent as null.
        segments.append(f"PID|1||{escape(first.patient_id)}^^^^PI||\"\"")
    observed = hl7_timestamp(first.measured_at)
    sample = escape(first.sample_id)
    instrument = escape(first.instrument)
    segments.append("|".join(["OBR", "1", sample, sample, f"{instrument}^{instrument} results^L", "", "",
                              observed, "", "", "", "", "", "", "", "", "", "", "", "", "", "",
                              "", "", "", _STATUS.get(first.status, "F")]))
    for i, r in enumerate(results, start=1):
        value_type = "NM" if r.numeric_value is not None else "ST"
        code = f"{escape(r.test_code)}^^L^{escape(r.instrument_test_code)}^^99INST"
        flags = "~".join(escape(f) for f in r.flags)
        segments.append("|".join(["OBX", str(i), value_type, code, "", escape(r.value), escape(r.units),
                                  escape(r.reference_range), flags, "", "", _STATUS.get(r.status, "F"),
                                  "", "", hl7_timestamp(r.measured_at), "", "", "", instrument]))
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
