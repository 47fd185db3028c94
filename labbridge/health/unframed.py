"""Why bytes never form a frame or message: the likely cause, read from what the bytes look like.

Pure (bytes in, words out): :class:`labbridge.health.instrument.InstrumentHealth` keeps the last bytes that
arrived and asks :func:`diagnose` when the link has received bytes for a while and decoded nothing, when its
frames never complete a message, or when it rejects many frames. The causes, checked in this order (the
first that fits is said):

* noise: more than a third of the bytes are neither printable nor a protocol control character (what a
  receiver at the wrong baud rate, parity or data bits reads) -> the line settings;
* another protocol than the link's: HL7 (``MSH|``, MLLP's VT) on an ASTM link, ASTM (STX, ENQ, records)
  on an HL7 link -> the driver and ``link.framing``;
* E1381 link: frames whose first byte after STX is a record type, not a frame number ->
  ``link.frame_numbers = false`` (and ``link.checksums = false`` when no frame carries two hex digits after
  its ETX); in a dialect without frame numbers, frames that carry them -> ``link.frame_numbers = true``;
  records separated by LF inside frames where CR is expected -> ``link.record_terminator = "lf"``; records
  with no STX at all -> ``link.framing = "raw"``;
* raw link: E1381 framing (ENQ, STX) -> ``link.framing = "e1381"``; records ended by LF where CR is
  expected -> ``link.record_terminator = "lf"``;
* MLLP link: HL7 segments without MLLP's VT -> the analyzer's MLLP setting.

None when the bytes fit none of these (the caller then says what to check in general).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STX, ETX, EOT, ENQ, ACK, NAK, ETB = 0x02, 0x03, 0x04, 0x05, 0x06, 0x15, 0x17
TAB, LF, VT, CR, FS = 0x09, 0x0A, 0x0B, 0x0D, 0x1C
_CONTROL = frozenset({STX, ETX, EOT, ENQ, ACK, NAK, ETB, TAB, LF, VT, CR, FS})
MIN_SAMPLE = 8  # fewer bytes say nothing
NOISE_SHARE = 1 / 3
SAMPLE_BYTES = 2048  # what the health keeps of the bytes since the last decode

_HL7 = re.compile(rb"MSH\|")
_RECORD = re.compile(rb"(?:^|[\r\n\x02])[1-7]?[HPOR]\|")
_FRAME_START = re.compile(rb"\x02(.)(.)", re.DOTALL)
_FRAME = re.compile(rb"\x02[^\x02\x03\x17]*[\x03\x17](..)?", re.DOTALL)
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")
_LF_RECORD = re.compile(rb"\n[A-Za-z]\|")


@dataclass(frozen=True, slots=True)
class Diagnosis:
    cause: str  # what the bytes look like, and the setting to try
    line_settings: bool = False  # the serial line settings are the likely cause (the caller names them)


def _noise(sample: bytes) -> float:
    return sum(1 for b in sample if not (0x20 <= b < 0x7F or b in _CONTROL)) / len(sample)


def _unnumbered_frames(sample: bytes) -> bool:
    starts = _FRAME_START.findall(sample)
    return bool(starts) and all(chr(a[0]).isalpha() and not chr(b[0]).isalnum() for a, b in starts)


def _numbered_frames(sample: bytes) -> bool:
    starts = _FRAME_START.findall(sample)
    return bool(starts) and all(0x30 <= a[0] <= 0x37 and chr(b[0]).isalpha() for a, b in starts)


def _lf_records_in_frames(sample: bytes) -> bool:
    texts = [m.group(0) for m in _FRAME.finditer(sample)]
    return any(_LF_RECORD.search(t) for t in texts) and not any(b"\r" in t[:-3] for t in texts)


def _frames_without_checksums(sample: bytes) -> bool:
    ends = [m.group(1) for m in _FRAME.finditer(sample)]
    return bool(ends) and not any(end is not None and _HEX2.fullmatch(end) for end in ends)


def diagnose(sample: bytes, *, framing: str, frame_numbers: bool = True, checksums: bool = True,
             record_terminator: str = "cr") -> Diagnosis | None:
    """The likely cause of ``sample`` (bytes that formed nothing) on a link of this framing and dialect."""
    if len(sample) < MIN_SAMPLE:
        return None
    if _noise(sample) > NOISE_SHARE:
        return Diagnosis("bytes look like the wrong baud rate or parity", line_settings=True)
    hl7 = VT in sample or _HL7.search(sample) is not None
    astm = STX in sample or ENQ in sample or _RECORD.search(sample) is not None
    if framing in ("e1381", "raw") and hl7:
        return Diagnosis("HL7 messages on an ASTM link: this analyzer speaks HL7; give it an HL7 driver "
                         '(link.framing = "mllp")')
    if framing == "mllp":
        if astm and not hl7:
            return Diagnosis("ASTM on an HL7 link: this analyzer speaks ASTM; give it an ASTM driver "
                             '(link.framing = "e1381" or "raw")')
        if hl7 and VT not in sample:
            return Diagnosis("HL7 segments without MLLP blocks (VT ... FS CR): switch MLLP on in the analyzer's "
                             "host settings")
        return None
    if framing == "e1381":
        if STX in sample:
            if not frame_numbers and _numbered_frames(sample):
                return Diagnosis("frames with frame numbers in a dialect without them: try link.frame_numbers = true")
            if record_terminator == "cr" and _lf_records_in_frames(sample):
                return Diagnosis('records separated by LF inside frames: try link.record_terminator = "lf"')
            unnumbered = frame_numbers and _unnumbered_frames(sample)
            unsummed = checksums and _frames_without_checksums(sample)
            if unnumbered and unsummed:
                return Diagnosis("frames without frame numbers or checksums: try link.frame_numbers = false and "
                                 "link.checksums = false")
            if unnumbered:
                return Diagnosis("frames without frame numbers: try link.frame_numbers = false")
            if unsummed:
                return Diagnosis("frames without checksums: try link.checksums = false")
            return None
        if _RECORD.search(sample) is not None:
            return Diagnosis('records without E1381 framing: try link.framing = "raw" (or switch the analyzer\'s '
                             "E1381 framing on)")
        return None
    if framing == "raw":
        if STX in sample or ENQ in sample:
            return Diagnosis('E1381 framing (ENQ, STX ... ETX) on a raw link: try link.framing = "e1381"')
        if record_terminator == "cr" and CR not in sample and LF in sample and _RECORD.search(sample):
            return Diagnosis('records ended by LF: try link.record_terminator = "lf"')
    return None
