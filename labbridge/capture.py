"""Captures as they come from the field, read into the bytes the protocol cores take (pure: bytes in, bytes out).

A capture is what someone saved of an analyzer's traffic: rarely the exact byte stream. This module reads
the forms seen in the field and says, for every deviation, what it did (:class:`Deviation`). It decodes
nothing itself: :mod:`labbridge.replay` feeds what it returns to the daemon's own cores (E1381 receiver,
raw-records link, MLLP decoder, HL7 parser) and driver.

Reading (:func:`read_capture`) turns the file into one or more byte *streams*:

* a binary capture (control bytes as bytes, no log decoration) is one stream, as it is;
* otherwise the file is read line by line: a leading timestamp (``2026-11-23 10:00:01.123``,
  ``[10:00:01]``, ``23/11/2026 10:00:01``) and a direction (``->``, ``<-``, ``-->``, ``<--``, ``>>``, ``<<``,
  ``RX:``, ``TX:``, ``IN:``, ``OUT:``) are taken off; a direction starts a stream of its own (a line without
  one continues the previous line's); printable control tokens become their bytes (``<STX>``, ``[ETX]``,
  ``{ACK}``, ``<0x02>``; ``\\x02``, ``\\r`` and ``\\n`` only in a capture that writes a control
  character as ``\\x..``, since elsewhere a backslash is ASTM's repeat delimiter); a hex dump
  (``hexdump -C``, ``xxd``, or bare byte pairs ``02 31 48``) becomes its bytes. When the file spells out
  CR or LF as tokens, or is a hex dump, its line breaks are presentation and dropped; otherwise each line
  break stands for the terminator the log no longer shows (read as LF, which every reader below accepts).
* a stream holding nothing but the receiving side's replies (ACK, NAK, EOT) is set aside as such.

ASTM E1381 streams (:func:`frame_astm`) are checked frame by frame and written again for the receiver:
ENQ and EOT where the log dropped them (a session also ends where frame numbers restart at an H record),
the CR LF after a frame's checksum where it was lost or became CR or LF, frame numbers where the capture
has none (in capture order; a frame byte-identical to the one before it is dropped as a retransmission,
the daemon's own rule for frames without numbers), records separated by LF inside a frame, record
terminators the log dropped or wrote as LF when the checksum confirms them, and a checksum that does not
match or is missing. A checksum is repaired only when the frame is otherwise intact (its number in
sequence, its text free of control bytes, a record where one must start) and the analyzer did not send the
frame again (a frame followed by another with the same number was NAKed and retransmitted:
the bad copy is dropped, not repaired); the repair says whether a known variant of the sum (STX included,
frame number left out, ETX left out) explains the mismatch, else that the content is unverified. With
``repair=False`` (``labbridge replay --strict``) a frame that needs a repair is rejected instead. What is
not a frame (text between frames, a frame cut short, a checksum that is not two hex digits) is reported
with where it is. After a rejected frame, the frames up to the next H record are dropped too: the message
cannot be whole, and the receiver gets it as an unfinished transfer (an incomplete transmission).

Bare ASTM records (no STX in the stream) are kept one per line when they look like records (a letter and
the field delimiter); other lines are ignored, with their line. HL7 streams (:func:`hl7_messages`) are
MLLP blocks (through :class:`labbridge.protocols.mllp.MllpDecoder`) or bare segments, a message starting at
each MSH; segments separated by LF or CR LF are joined with CR (HL7 2.x §2.7), reported.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from labbridge.protocols import e1381, mllp

# repaired: changed so that it decodes; rejected: not decoded; ignored: not part of any message; accepted: read
# as it is, although the daemon's link, as configured, would refuse it (the detail names the setting).
Action = Literal["repaired", "rejected", "ignored", "accepted"]


@dataclass(frozen=True, slots=True)
class Deviation:
    """One way the capture differs from the protocol, and what was done about it."""

    action: Action
    kind: str  # a short label, the same for every deviation of its kind ("checksum mismatch")
    detail: str  # what exactly (no field values: captures hold patient data)
    where: str  # "line 12", "byte 340", "stream '<-'"
    count: int = 1  # bytes, for an ignored span; else 1


@dataclass(slots=True)
class Stream:
    """Bytes of one direction of the capture, and where each stretch came from in the file."""

    label: str  # "" for a capture with one direction
    data: bytearray = field(default_factory=bytearray)
    unit: Literal["line", "byte"] = "line"
    _starts: list[int] = field(default_factory=list)
    _origins: list[int] = field(default_factory=list)

    def mark(self, origin: int) -> None:
        """What is appended from now on comes from ``origin`` (a line number, or a byte offset)."""
        if self._starts and self._starts[-1] == len(self.data):
            self._origins[-1] = origin
            return
        self._starts.append(len(self.data))
        self._origins.append(origin)

    def where(self, offset: int) -> str:
        if self.unit == "byte":
            return f"byte {offset}"
        i = bisect.bisect_right(self._starts, offset) - 1
        return f"line {self._origins[max(i, 0)]}" if self._origins else "line 1"


@dataclass(slots=True)
class Capture:
    streams: list[Stream]
    form: list[str]  # what the reader recognised, in words ("timestamps", "hex dump", ...)
    deviations: list[Deviation] = field(default_factory=list)


# ---- reading the file -----------------------------------------------------------------------------------------

# The control characters of ASTM and MLLP, by the names logs print them with. Only these: a short name in
# brackets ("[SI]", "<US>") may well be text in a record.
CONTROL_NAMES = {"SOH": 1, "STX": 2, "ETX": 3, "EOT": 4, "ENQ": 5, "ACK": 6, "HT": 9, "TAB": 9, "LF": 10,
                 "VT": 11, "CR": 13, "NAK": 21, "SYN": 22, "ETB": 23, "FS": 28}
_NAMES = "|".join(sorted(CONTROL_NAMES, key=len, reverse=True)).encode()
_TOKEN = re.compile(rb"(?i:<(" + _NAMES + rb")>|\[(" + _NAMES + rb")\]|\{(" + _NAMES + rb")\}|<0x([0-9a-f]{2})>)")
# Backslash escapes ("\x02", "\r", "\n") are read only in a capture that spells a control character so
# (a backslash escape of a byte below 0x20): elsewhere a backslash is ASTM's repeat delimiter, and "\r" may
# be the start of a repeat.
_ESCAPED_CONTROL = re.compile(rb"\\x[01][0-9A-Fa-f]")
_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})|\\(r)|\\(n)")
_STAMP = (rb"\[?(?:\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
          rb"|\d{2}/\d{2}/\d{4}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?|\d{2}:\d{2}:\d{2}(?:[.,]\d+)?)\]?")
_DIRECTION = rb"-->|<--|->|<-|>>|<<|(?i:RX|TX|IN|OUT)\s*:"
_PREFIX = re.compile(rb"^[ \t]*(?:(?P<stamp>" + _STAMP + rb")[ \t]*)?(?:(?P<dir>" + _DIRECTION + rb")[ \t]*)?")
_DIRECTION_NAMES = {b"-->": "->", b"<--": "<-", b">>": "->", b"<<": "<-"}
_HEX_PAIR = re.compile(rb"^[0-9A-Fa-f]{2}$")
_HEX_QUAD = re.compile(rb"^[0-9A-Fa-f]{4}$")
_OFFSET = re.compile(rb"^[0-9A-Fa-f]{4,8}(:?)[ \t]")
_REPLIES = frozenset({e1381.ACK, e1381.NAK, e1381.EOT, e1381.CR, e1381.LF})
_RAW_CONTROL = frozenset({e1381.STX, e1381.ENQ, mllp.SB})


def _hex_line(payload: bytes) -> bytes | None:
    """The bytes of one hex dump line (``hexdump -C``, ``xxd``, or bare pairs), or None."""
    text = payload.strip()
    if not text:
        return None
    if re.fullmatch(rb"[0-9A-Fa-f]{7,8}:?", text):
        return b""  # hexdump's closing line: the offset alone
    m = _OFFSET.match(text)
    if m is not None:
        text = text[m.end():]
        # xxd ("00000010: 0502 3148  ..1H"): the text column follows two spaces; hexdump -C
        # ("00000010  05 02 31 48  |..1H|"): it is between bars
        text = text.strip().split(b"  ", 1)[0] if m.group(1) else text.split(b"|", 1)[0]
    tokens = text.split()
    if not tokens:
        return None
    out = bytearray()
    for token in tokens:
        if _HEX_PAIR.match(token) or (m is not None and m.group(1) and _HEX_QUAD.match(token)):
            out += bytes.fromhex(token.decode())
        else:
            return None
    return bytes(out)


def _token_byte(m: re.Match[bytes]) -> bytes:
    name = m.group(1) or m.group(2) or m.group(3)
    if name:
        return bytes((CONTROL_NAMES[name.decode().upper()],))
    return bytes.fromhex(m.group(4).decode())


def _escape_byte(m: re.Match[bytes]) -> bytes:
    if m.group(1):
        return bytes.fromhex(m.group(1).decode())
    return b"\r" if m.group(2) else b"\n"


def read_capture(data: bytes) -> Capture:
    """The streams of a capture file (see the module docstring), and what was ignored on the way."""
    lines = data.split(b"\n") if b"\n" in data else data.split(b"\r")
    prefixed = [_PREFIX.match(line) for line in lines]
    has_prefix = any(m is not None and m.end() and (m.group("stamp") or m.group("dir")) for m in prefixed)
    escapes = _ESCAPED_CONTROL.search(data) is not None
    has_tokens = escapes or _TOKEN.search(data) is not None
    payloads = [line[m.end():] if m is not None else line for line, m in zip(lines, prefixed, strict=True)]
    nonblank = [p for p in payloads if p.strip()]
    hex_lines = sum(1 for p in nonblank if _hex_line(p.rstrip(b"\r")) is not None)
    is_hex = bool(nonblank) and hex_lines * 10 >= len(nonblank) * 6
    if not (has_prefix or has_tokens or is_hex) and (any(b in data for b in _RAW_CONTROL) or b"\n" not in data):
        stream = Stream("", bytearray(data), unit="byte")
        stream.mark(0)
        return Capture([stream], ["bytes as received"])
    form = [w for w, on in (("hex dump", is_hex), ("printable control tokens", has_tokens),
                            ("log lines with timestamps or directions", has_prefix)) if on]
    spelled = re.search(rb"(?i:<(CR|LF)>|\[(CR|LF)\]|\{(CR|LF)\}|<0x0[ad]>)", data) is not None
    tokens_spell_breaks = is_hex or spelled or (escapes and re.search(rb"\\x0[aAdD]|\\r|\\n", data) is not None)
    capture = Capture([], form or ["text, one record or segment per line"])
    streams: dict[str, Stream] = {}
    current = ""
    for number, (line, m) in enumerate(zip(lines, prefixed, strict=True), start=1):
        if m is not None and m.group("dir"):
            token = m.group("dir").rstrip(b": \t").upper()
            current = _DIRECTION_NAMES.get(token, token.decode())
        payload = line[m.end():] if m is not None else line
        if b"\n" in data:
            payload = payload.removesuffix(b"\r")
        if is_hex:
            chunk = _hex_line(payload)
            if chunk is None:
                if payload.strip():
                    capture.deviations.append(Deviation("ignored", "not a hex dump line", "text in a hex dump",
                                                        f"line {number}", len(payload)))
                continue
        else:
            chunk = _TOKEN.sub(_token_byte, payload)
            if escapes:
                chunk = _ESCAPE.sub(_escape_byte, chunk)
            if not tokens_spell_breaks and number < len(lines):
                chunk += b"\n"
        stream = streams.setdefault(current, Stream(current))
        stream.mark(number)
        stream.data += chunk
    for stream in streams.values():
        if stream.data.strip() and all(b in _REPLIES for b in stream.data):
            capture.deviations.append(Deviation("ignored", "replies of the receiving side",
                                                "ACK, NAK and EOT sent to the analyzer", f"stream '{stream.label}'",
                                                len(stream.data)))
        elif stream.data.strip():
            capture.streams.append(stream)
    return capture


# ---- E1381 frames ---------------------------------------------------------------------------------------------

_STOPS = (e1381.ETX, e1381.ETB, e1381.STX, e1381.ENQ, e1381.EOT)
_STOP_RE = re.compile(rb"[\x02\x03\x04\x05\x17]")  # what ends a frame's text (or cuts it short)
_CONTROL_RE = re.compile(rb"[\x02\x04\x05\x06\x15]")  # what ends text between frames
_HEX = frozenset(b"0123456789abcdefABCDEF")
_WS_BYTES = b"\r\n \t"
_WS = frozenset(_WS_BYTES)


@dataclass(slots=True)
class _Frame:
    start: int  # offset of STX in the stream
    end: int  # offset after the frame (and its line ending)
    fn: int | None
    text: bytes
    term: int  # ETX or ETB
    sent_sum: bytes | None
    ending: bytes  # what followed the checksum: b"\r\n", b"\r", b"\n" or b""


@dataclass(slots=True)
class AstmCapture:
    """One stream made ready for a receiver: ``framing`` "e1381" (sessions ENQ..EOT) or "raw" (records)."""

    framing: Literal["e1381", "raw"]
    data: bytes
    deviations: list[Deviation]


def _record_start(text: bytes) -> bool:
    """Text that starts a record: a record type letter, then a delimiter (not a letter or digit)."""
    return len(text) >= 2 and chr(text[0]).isalpha() and not chr(text[1]).isalnum()


def _same_frame(frame: _Frame, earlier: _Frame) -> bool:
    """``frame`` is ``earlier`` sent again: the same number, or without numbers the same record and length."""
    if frame.fn is not None or earlier.fn is not None:
        return frame.fn == earlier.fn
    return len(frame.text) == len(earlier.text) and frame.text[:2] == earlier.text[:2]


def _clean_text(text: bytes) -> bool:
    return all(b >= 0x20 or b in (0x09, 0x0A, 0x0D) for b in text) and 0x7F not in text


def _as_summed(fn: bytes, text: bytes, term: int, sent: bytes) -> tuple[bytes, str] | None:
    """The frame text as the analyzer summed it, when the capture changed only its record terminators (a log
    that dropped the CR before ETX, or wrote CR as LF), and what changed; None when that does not explain it."""
    candidates = []
    if not text.endswith((b"\r", b"\n")):
        candidates.append((text + b"\r", "the CR ending the record before ETX is missing from the capture"))
    if b"\n" in text:
        fixed = text.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        candidates.append((fixed, "record terminators written as LF in the capture"))
        if not fixed.endswith(b"\r"):
            candidates.append((fixed + b"\r", "record terminators written as LF, the last one missing"))
    for candidate, what in candidates:
        if e1381.checksum(fn + candidate + bytes((term,))) == sent.upper():
            return candidate, what
    return None


def _sum_variants(fn: bytes, text: bytes, term: int, sent: bytes) -> str:
    """Which known miscomputation of the checksum gives what the analyzer sent, in words."""
    variants = (("STX included", bytes((e1381.STX,)) + fn + text + bytes((term,))),
                ("frame number left out", text + bytes((term,))),
                ("ETX/ETB left out", fn + text))
    for words, body in variants:
        if e1381.checksum(body) == sent.upper():
            return f"the analyzer's sum has the {words}: the content is verified"
    return "no known variant of the sum explains it: the content is unverified, compare with the analyzer's screen"


class _FrameReader:
    """The frame-by-frame pass over one E1381 stream (see the module docstring)."""

    def __init__(self, stream: Stream, profile: e1381.LinkProfile, repair: bool) -> None:
        self.stream = stream
        self.profile = profile
        self.repair = repair
        self.out = bytearray()
        self.deviations: list[Deviation] = []
        self.in_session = False
        self.numbered: bool | None = None  # does this session's capture carry frame numbers
        self.last_fn: int | None = None  # the last frame number emitted in this session
        self.record_open = False  # the last frame ended with ETB: the next one continues a record
        self.previous_text: bytes | None = None  # unnumbered capture: to spot a retransmission
        self.pending: _Frame | None = None  # a frame with a bad checksum, until we know it was not sent again
        self.from_enq = False  # the session began with an ENQ in the capture (not one added)
        self.broken = False  # a frame was rejected: frames are dropped up to the next H record

    def note(self, action: Action, kind: str, detail: str, offset: int, count: int = 1) -> None:
        self.deviations.append(Deviation(action, kind, detail, self.stream.where(offset), count))

    def fail(self, kind: str, detail: str, offset: int, count: int = 1) -> None:
        """A frame that is not decoded: the message it belongs to cannot be whole (the analyzer, NAKed, would
        have sent it again; the capture does not have that), so the frames after it are dropped up to the
        next header record."""
        self.note("rejected", kind, detail, offset, count)
        self.broken = True

    def run(self) -> AstmCapture:
        data = bytes(self.stream.data)
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if b == e1381.ENQ:
                self.flush_pending()
                if self.in_session:
                    self.end_session(i, "a new ENQ before the EOT of the previous session")
                self.start_session()
                self.from_enq = True
                self.broken = False
                i += 1
            elif b == e1381.EOT:
                self.flush_pending()
                if self.in_session:
                    self.out.append(e1381.EOT)
                    self.in_session = False
                    self.numbered = None
                self.broken = False
                i += 1
            elif b == e1381.STX:
                i = self.frame(data, i)
            elif b in (e1381.ACK, e1381.NAK) or b in _WS:
                i += 1  # the receiving side's replies in a one-stream dump, whitespace between frames
            else:
                m = _CONTROL_RE.search(data, i)
                j = n if m is None else m.start()
                junk = len(data[i:j].translate(None, _WS_BYTES))
                if junk:
                    self.note("ignored", "bytes outside any frame", "text between frames", i, junk)
                i = j
        self.flush_pending()
        if self.in_session:
            self.end_session(n, "the capture ends without EOT")
        return AstmCapture("e1381", bytes(self.out), self.deviations)

    def start_session(self) -> None:
        self.out.append(e1381.ENQ)
        self.in_session = True
        self.from_enq = False
        self.numbered = None
        self.last_fn = None
        self.record_open = False
        self.previous_text = None

    def end_session(self, offset: int, why: str) -> None:
        self.out.append(e1381.EOT)
        self.in_session = False
        self.numbered = None
        self.note("repaired", "EOT missing", f"{why}: EOT added", offset)

    def frame(self, data: bytes, i: int) -> int:
        n = len(data)
        m = _STOP_RE.search(data, i + 1)
        j = n if m is None else m.start()
        if j >= n:
            self.fail("frame cut short", "the capture ends inside a frame", i, n - i)
            return n
        if data[j] not in (e1381.ETX, e1381.ETB):
            self.fail("frame cut short", "STX, ENQ or EOT before the frame's ETX/ETB", i, j - i)
            return j
        body = data[i + 1:j]
        k = j + 1
        sent_sum: bytes | None = None
        if len(data[k:k + 2]) == 2 and all(c in _HEX for c in data[k:k + 2]):
            sent_sum, k = data[k:k + 2], k + 2
        elif k < n and data[k] not in _WS and data[k] not in _STOPS and data[k] not in (e1381.ACK, e1381.NAK):
            self.fail("checksum unreadable", "the two characters after ETX/ETB are not hex digits", i)
            k += 2
            return k + (2 if data.startswith(b"\r\n", k) else 1 if data[k:k + 1] in (b"\r", b"\n") else 0)
        ending = b""
        for candidate in (b"\r\n", b"\r", b"\n"):
            if data.startswith(candidate, k):
                ending, k = candidate, k + len(candidate)
                break
        fn: int | None = None
        starts_record = not self.record_open or self.broken
        if self.numbered is None or self.numbered:
            if body and 0x30 <= body[0] <= 0x37 and (not starts_record or _record_start(body[1:])):
                fn, text = body[0] - 0x30, body[1:]
            else:
                text = body
        else:
            text = body
        frame = _Frame(i, k, fn, text, data[j], sent_sum, ending)
        self.take(frame)
        return k

    def take(self, frame: _Frame) -> None:
        if not self.in_session:
            self.flush_pending()
            self.start_session()
            self.note("repaired", "ENQ missing", "frames without an ENQ before them: ENQ added", frame.start)
        pending = self.pending
        if pending is not None:
            if _same_frame(frame, pending):
                self.pending = None
                self.note("rejected", "checksum mismatch", "the analyzer sent the frame again: the bad copy "
                          "is dropped", pending.start)
            else:
                self.flush_pending()
        if self.broken:
            if not (_record_start(frame.text) and frame.text[:1] in (b"H", b"h")):
                self.note("rejected", "frame of an incomplete message", "after a rejected frame of the same "
                          "message: not decoded", frame.start)
                return
            self.broken = False  # a new message: a transfer of its own for the receiver (the broken one ends)
            self.out.append(e1381.EOT)
            self.start_session()
        if self.numbered is None:
            self.numbered = frame.fn is not None
        if (frame.fn is not None and frame.fn != 1 and self.last_fn is None and self.from_enq
                and self.profile.strict_frame_numbers):
            said = f"the first frame of a transfer is numbered {frame.fn}; LIS1-A and this link expect 1"
            if not self.repair:
                self.fail("first frame number", f"{said} (--strict)", frame.start)
                return
            self.note("accepted", "first frame number", f"{said}: read as is; the daemon refuses it unless "
                      "[instruments.link] strict_frame_numbers = false", frame.start)
        if frame.fn is not None and self.last_fn is not None and frame.fn != (self.last_fn + 1) % 8:
            if frame.fn == self.last_fn:  # sent again (the receiver's ACK was lost): the receiver discards it
                if frame.text != self.previous_text:
                    self.note("rejected", "frame number repeated", "a frame with the number of the one before "
                              "but other content: dropped as the receiver drops a retransmission", frame.start)
                return
            if _record_start(frame.text) and frame.text[:1] in (b"H", b"h") and not self.record_open:
                self.end_session(frame.start, "frame numbers restart at a header record")
                self.start_session()
                self.numbered = True
            else:
                self.fail("frame out of sequence",
                          f"frame number {frame.fn}, expected {(self.last_fn + 1) % 8}", frame.start)
                return
        if frame.fn is None and self.numbered:
            self.fail("frame number missing", "a frame without a number among numbered frames",
                      frame.start)
            return
        if frame.fn is None and self.previous_text is not None and frame.text == self.previous_text:
            self.note("repaired", "retransmission", "a frame without a number byte-identical to the one before: "
                      "dropped as a retransmission", frame.start)
            return
        repaired: tuple[str, str] | None = None
        if frame.sent_sum is not None:
            fn_byte = b"" if frame.fn is None else b"%d" % frame.fn
            if e1381.checksum(fn_byte + frame.text + bytes((frame.term,))) != frame.sent_sum.upper():
                restored = _as_summed(fn_byte, frame.text, frame.term, frame.sent_sum)
                if restored is None:
                    self.pending = frame  # repaired or dropped once we see whether it comes again
                    return
                text, what = restored
                frame = dataclasses.replace(frame, text=text)
                repaired = ("record terminator", f"{what}: restored (the checksum confirms it)")
        self.accept(frame, repaired)

    def flush_pending(self) -> None:
        frame, self.pending = self.pending, None
        if frame is not None:
            self.checksum_repair(frame)

    def intact(self, frame: _Frame) -> bool:
        return _clean_text(frame.text) and (self.record_open or _record_start(frame.text))

    def checksum_repair(self, frame: _Frame) -> None:
        assert frame.sent_sum is not None
        fn_byte = b"" if frame.fn is None else b"%d" % frame.fn
        computed = e1381.checksum(fn_byte + frame.text + bytes((frame.term,))).decode()
        said = f"frame says {frame.sent_sum.decode()!r}, computed {computed!r}"
        if not self.repair:
            self.fail("checksum mismatch", f"{said} (--strict: not repaired)", frame.start)
            return
        if not self.intact(frame):
            self.fail("checksum mismatch", f"{said}, and the frame is damaged (control bytes in its "
                      "text, or no record where one must start): not repaired", frame.start)
            return
        variant = _sum_variants(fn_byte, frame.text, frame.term, frame.sent_sum)
        self.accept(frame, ("checksum mismatch", f"{said}: checksum replaced; {variant}"))

    def accept(self, frame: _Frame, repaired: tuple[str, str] | None = None) -> None:
        repairs: list[tuple[str, str]] = [repaired] if repaired else []
        p = self.profile
        if frame.sent_sum is None and p.checksums:
            if not self.intact(frame):
                self.fail("checksum missing", "a frame without checksum, and damaged", frame.start)
                return
            repairs.append(("checksum missing", "a frame without checksum: checksum computed (content unverified)"))
        if frame.fn is None and p.frame_numbers:
            repairs.append(("frame number missing", "frames without numbers: numbered in capture order"))
        if frame.fn is not None and not p.frame_numbers:
            repairs.append(("frame number unexpected", "frame numbers in a dialect without them: removed"))
        if frame.sent_sum is not None and not p.checksums:
            repairs.append(("checksum unexpected", "checksums in a dialect without them: removed"))
        text = frame.text
        if p.record_terminator == b"\r" and b"\n" in text:
            text = text.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
            repairs.append(("records separated by LF", "records separated by LF or CR LF in a frame: CR"))
        elif p.record_terminator != b"\r" and b"\r" in text and b"\n" not in text:
            text = text.replace(b"\r", b"\n")
            repairs.append(("records separated by CR", "records separated by CR in an LF dialect: LF"))
        if repairs and not self.repair:
            for kind, detail in repairs:
                self.fail(kind, f"{detail} (--strict: not repaired)", frame.start)
            return
        if frame.ending != b"\r\n" and not p.skips_whitespace:
            what = {b"": "missing", b"\r": "CR only", b"\n": "LF only"}[frame.ending]
            repairs.append(("frame ending", f"CR LF after the checksum {what}: CR LF"))
        for kind, detail in repairs:
            self.note("repaired", kind, detail, frame.start)
        fn = frame.fn if frame.fn is not None else (1 if self.last_fn is None else (self.last_fn + 1) % 8)
        if not repairs:
            self.out += self.stream.data[frame.start:frame.end]
        else:
            body = (b"%d" % fn if p.frame_numbers else b"") + text + bytes((frame.term,))
            self.out += b"\x02" + body + (e1381.checksum(body) if p.checksums else b"") + b"\r\n"
        self.last_fn = fn
        self.previous_text = frame.text
        self.record_open = frame.term == e1381.ETB


def frame_astm(stream: Stream, profile: e1381.LinkProfile, *, repair: bool = True) -> AstmCapture:
    """One ASTM stream made ready for the daemon's receiver: E1381 sessions when it holds STX, else records.

    ``profile``: the instrument's dialect (frame numbers, checksums, record terminator). With its
    ``strict_frame_numbers``, a transfer that begins with an ENQ in the capture and whose first frame is not
    numbered 1 is reported (accepted as is, or rejected with ``repair=False``); give the receiver a profile
    without it, since a transfer whose ENQ was added may begin anywhere in the numbering.
    """
    if e1381.STX in stream.data:
        return _FrameReader(stream, profile, repair).run()
    return _records(stream)


def _records(stream: Stream) -> AstmCapture:
    deviations: list[Deviation] = []
    out = bytearray()
    delimiter = b"|"
    offset = 0
    for line in bytes(stream.data).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        record = line.strip()
        at = offset
        offset += len(line) + 1
        if not record:
            continue
        if record[:1] in (b"H", b"h") and len(record) > 1:
            delimiter = record[1:2]
        if chr(record[0]).isalpha() and record[1:2] == delimiter:
            out += record + b"\r"
        else:
            deviations.append(Deviation("ignored", "not a record", "a line that is not an ASTM record",
                                        stream.where(at), len(record)))
    return AstmCapture("raw", bytes(out), deviations)


# ---- HL7 ------------------------------------------------------------------------------------------------------


def hl7_messages(stream: Stream, *, repair: bool = True) -> tuple[list[bytes], list[Deviation]]:
    """The HL7 messages of a stream (segments separated by CR), from MLLP blocks or bare segments."""
    deviations: list[Deviation] = []
    data = bytes(stream.data)
    payloads: list[tuple[bytes, int]] = []
    if mllp.SB in data:
        decoder = mllp.MllpDecoder(allow_missing_cr=True)
        at = 0
        for event in decoder.receive_data(data):
            if isinstance(event, mllp.MllpMessage):
                at = data.find(event.payload, at)
                payloads.append((event.payload, max(at, 0)))
            elif isinstance(event, mllp.MllpOversize):
                deviations.append(Deviation("rejected", "oversize block",
                                            f"an MLLP block larger than {event.limit} bytes", stream.where(at)))
        outside = re.sub(rb"\x0b.*?\x1c", b"", data, flags=re.DOTALL)
        junk = sum(1 for c in outside if c not in _WS)
        if junk:
            deviations.append(Deviation("ignored", "bytes outside MLLP blocks", "text between blocks",
                                        stream.where(0), junk))
        if decoder.pending():
            deviations.append(Deviation("rejected", "incomplete transmission", "the capture ends inside an MLLP "
                                        "block", stream.where(len(data)), len(decoder.pending())))
    else:
        start: int | None = None
        for m in re.finditer(rb"(?:^|(?<=[\r\n]))MSH", data):
            if start is None and data[:m.start()].strip():
                deviations.append(Deviation("ignored", "text before the first MSH", "not part of a message",
                                            stream.where(0), len(data[:m.start()].strip())))
            if start is not None:
                payloads.append((data[start:m.start()], start))
            start = m.start()
        if start is not None:
            payloads.append((data[start:], start))
        elif data.strip():
            deviations.append(Deviation("ignored", "no MSH segment", "no HL7 message in this stream", stream.where(0),
                                        len(data.strip())))
    messages: list[bytes] = []
    for payload, at in payloads:
        segments = [s.strip(b" \t") for s in payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")]
        message = b"\r".join(s for s in segments if s) + b"\r"
        if b"\n" in payload.strip():
            if not repair:
                deviations.append(Deviation("rejected", "segments separated by LF",
                                            "HL7 separates segments with CR (--strict: not repaired)",
                                            stream.where(at)))
                continue
            deviations.append(Deviation("repaired", "segments separated by LF",
                                        "segments separated by LF or CR LF: CR", stream.where(at)))
        messages.append(message)
    return messages, deviations
