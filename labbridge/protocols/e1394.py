"""ASTM E1394 / CLSI LIS2-A2 records: delimiters, fields, repeats, components, escapes.

Rules (PROTOCOLS.md part b): the four delimiters are read from the H record of every message
(R-B5), never assumed; nesting is field > repeat > component (R-B7); escape sequences are
``&F&`` ``&S&`` ``&R&`` ``&E&`` and ``&Xhh..&`` (R-B8), decoded after splitting. Field numbers follow
the standard: field 1 is the record type ("R-3" is the universal test ID), so ``Record.field(3)``.

Records are parsed lazily: a record keeps its raw fields and splits components only when asked,
which keeps decoding fast (benchmarks/).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labbridge.errors import RemoteProtocolError


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    repeat: str = "\\"
    component: str = "^"
    escape: str = "&"

    def header_prefix(self) -> str:
        """The start of an H record carrying these delimiters: ``H|\\^&|``."""
        return f"H{self.field}{self.repeat}{self.component}{self.escape}{self.field}"


DEFAULT_DELIMITERS = Delimiters()


def delimiters_from_header(header: str) -> Delimiters:
    """Read the delimiters from the first characters of an H record (R-B5, R-B6)."""
    if len(header) < 5 or header[0] not in "Hh":
        raise RemoteProtocolError("header record too short to define delimiters")
    d = Delimiters(field=header[1], repeat=header[2], component=header[3], escape=header[4])
    chars = (d.field, d.repeat, d.component, d.escape)
    if len(set(chars)) != 4 or any(c.isalnum() or c in "\r\n" for c in chars):
        raise RemoteProtocolError(f"invalid delimiter definition {header[1:5]!r} in header record")
    return d


def unescape(text: str, d: Delimiters) -> str:
    """Decode escape sequences; an unknown or unterminated sequence is kept as it was sent."""
    esc = d.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = text.find(esc, i + 1)
        if end < 0:
            out.append(text[i:])
            break
        code = text[i + 1:end]
        if code == "F":
            out.append(d.field)
        elif code == "S":
            out.append(d.component)
        elif code == "R":
            out.append(d.repeat)
        elif code == "E":
            out.append(esc)
        elif code in ("H", "N"):
            pass  # highlighting on/off: no meaning in a stored value
        elif code[:1] == "X" and len(code) > 1 and len(code) % 2 == 1 and _is_hex(code[1:]):
            out.append(bytes.fromhex(code[1:]).decode("latin-1"))
        else:
            out.append(text[i:end + 1])  # manufacturer-defined (&Z..&) or unknown: keep as sent
        i = end + 1
    return "".join(out)


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in s)


def escape(text: str, d: Delimiters) -> str:
    """Encode a value so that it can stand inside a component."""
    esc = d.escape
    if esc in text:
        text = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((d.field, "F"), (d.component, "S"), (d.repeat, "R")):
        if char in text:
            text = text.replace(char, f"{esc}{code}{esc}")
    return text


class Record:
    """One record, fields kept raw (escaped) until asked for."""

    __slots__ = ("delimiters", "raw_fields", "type")

    def __init__(self, text: str, delimiters: Delimiters) -> None:
        self.delimiters = delimiters
        self.raw_fields = text.split(delimiters.field)
        self.type = self.raw_fields[0][:1].upper()  # R-B2: case-insensitive type ID

    def raw(self, number: int) -> str:
        """Field ``number`` (1-based, as the standard counts) still escaped; '' if absent."""
        idx = number - 1
        return self.raw_fields[idx] if 0 <= idx < len(self.raw_fields) else ""

    def field(self, number: int) -> str:
        return unescape(self.raw(number), self.delimiters)

    def repeats(self, number: int) -> list[str]:
        raw = self.raw(number)
        if self.type == "H" and number == 2:
            return [raw]  # the delimiter definition itself
        return [unescape(r, self.delimiters) for r in raw.split(self.delimiters.repeat)] if raw else []

    def components(self, number: int, repeat: int = 0) -> list[str]:
        raw = self.raw(number)
        if not raw:
            return []
        reps = raw.split(self.delimiters.repeat)
        if repeat >= len(reps):
            return []
        return [unescape(c, self.delimiters) for c in reps[repeat].split(self.delimiters.component)]

    def component(self, number: int, index: int, repeat: int = 0) -> str:
        """Component ``index`` (1-based) of field ``number``; '' if absent."""
        comps = self.components(number, repeat)
        return comps[index - 1] if 0 < index <= len(comps) else ""

    def __repr__(self) -> str:
        return f"Record({self.type!r}, {len(self.raw_fields)} fields)"


def parse_records(records: Sequence[bytes], encoding: str = "latin-1") -> list[Record]:
    """Decode the records of one message; delimiters come from its H record (default if none)."""
    texts = [r.decode(encoding, errors="replace") for r in records]
    delims = DEFAULT_DELIMITERS
    for text in texts:
        if text[:1] in ("H", "h"):
            delims = delimiters_from_header(text)
            break
    return [Record(t, delims) for t in texts if t]


Field = str | list[str] | list[list[str]]


def encode_record(record_type: str, fields: Sequence[Field], d: Delimiters = DEFAULT_DELIMITERS) -> bytes:
    """Build a record from field 2 onwards. A field is a string, a list of components, or a list of
    repeats each a list of components. For an H record, the delimiter definition is written for you."""
    out: list[str] = []
    for value in fields:
        if isinstance(value, str):
            out.append(escape(value, d))
        elif value and isinstance(value[0], list):
            out.append(d.repeat.join(d.component.join(escape(c, d) for c in rep) for rep in value))
        else:
            out.append(d.component.join(escape(str(c), d) for c in value))
    while out and out[-1] == "":
        out.pop()  # R-B3: trailing empty fields may be omitted
    if record_type.upper() == "H":
        head = d.header_prefix()[:-1]
        text = d.field.join([head, *out])
    else:
        text = d.field.join([record_type, *out])
    return text.encode("latin-1")
