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

    __slots__ = ("_components", "_plain", "delimiters", "raw_fields", "type")

    def __init__(self, text: str, delimiters: Delimiters) -> None:
        self.delimiters = delimiters
        self.raw_fields = text.split(delimiters.field)
        self.type = self.raw_fields[0][:1].upper()  # R-B2: case-insensitive type ID
        # No escape and no repeat delimiter anywhere in the record (most R records): a field is its raw text
        # and its components one split of it, read without the cache below (same values, less work).
        self._plain = delimiters.escape not in text and delimiters.repeat not in text
        # (field, repeat) -> its unescaped components: a driver reads several components of one field,
        # and splitting it again for each was the driver's main cost.
        self._components: dict[tuple[int, int], tuple[str, ...]] | None = None  # made on first use

    def raw(self, number: int) -> str:
        """Field ``number`` (1-based, as the standard counts) still escaped; '' if absent."""
        idx = number - 1
        return self.raw_fields[idx] if 0 <= idx < len(self.raw_fields) else ""

    def field(self, number: int) -> str:
        if self._plain:
            idx = number - 1
            return self.raw_fields[idx] if 0 <= idx < len(self.raw_fields) else ""
        return unescape(self.raw(number), self.delimiters)

    def repeats(self, number: int) -> list[str]:
        raw = self.raw(number)
        if self._plain:
            return [raw] if raw else []
        if self.type == "H" and number == 2:
            return [raw]  # the delimiter definition itself
        return [unescape(r, self.delimiters) for r in raw.split(self.delimiters.repeat)] if raw else []

    def _split(self, number: int, repeat: int) -> tuple[str, ...]:
        key = (number, repeat)
        cache = self._components
        if cache is None:
            cache = self._components = {}
        else:
            cached = cache.get(key)
            if cached is not None:
                return cached
        raw = self.raw(number)
        comps: tuple[str, ...] = ()
        if raw:
            d = self.delimiters
            reps = raw.split(d.repeat) if d.repeat in raw else [raw]
            if repeat < len(reps):
                text = reps[repeat]
                if d.escape in text:
                    comps = tuple(unescape(c, d) for c in text.split(d.component))
                else:
                    comps = tuple(text.split(d.component))
        cache[key] = comps
        return comps

    def components(self, number: int, repeat: int = 0) -> list[str]:
        if self._plain and not repeat:
            raw = self.raw(number)
            return raw.split(self.delimiters.component) if raw else []
        return list(self._split(number, repeat))

    def component(self, number: int, index: int, repeat: int = 0) -> str:
        """Component ``index`` (1-based) of field ``number``; '' if absent."""
        if self._plain and not repeat:
            idx = number - 1
            if index == 1:  # the common case: the text before the first component delimiter
                return self.raw_fields[idx].partition(self.delimiters.component)[0] if 0 <= idx < len(
                    self.raw_fields) else ""
        comps = self._split(number, repeat)
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


# ---- the structured message model (LIS2-A2 §4.1 hierarchy) -------------------------------------------
#
# A field is a tuple of repeats, a repeat a tuple of components, a component an unescaped string. An empty
# field is ``()``; trailing empty fields are dropped (R-B3), so a model has exactly one encoding and
# decode(encode(m)) == m. Field 1 (the record type) is ``AstmRecord.type``; ``fields[0]`` is field 2.

FieldValue = tuple[tuple[str, ...], ...]

RECORD_TYPES = frozenset("HPOCRQMSL")
_LEVEL = {"P": 1, "Q": 1, "S": 1, "O": 2, "R": 3}  # C and M have no level: they attach to the record before


def _normal_field(value: FieldValue) -> FieldValue:
    return () if value in ((), (("",),)) else value


@dataclass(frozen=True, slots=True)
class AstmRecord:
    type: str
    fields: tuple[FieldValue, ...] = ()

    @classmethod
    def make(cls, record_type: str, fields: Sequence[FieldValue]) -> AstmRecord:
        """A record in normal form: type upper case, empty fields ``()``, no trailing empty fields."""
        out = [_normal_field(tuple(tuple(rep) for rep in f)) for f in fields]
        while out and out[-1] == ():
            out.pop()
        return cls(record_type.upper(), tuple(out))

    def get(self, number: int, component: int = 1, repeat: int = 0) -> str:
        """Field ``number`` (as the standard counts: 2 is the first after the type), component 1-based."""
        idx = number - 2
        if not 0 <= idx < len(self.fields):
            return ""
        reps = self.fields[idx]
        if repeat >= len(reps) or not 0 < component <= len(reps[repeat]):
            return ""
        return reps[repeat][component - 1]


@dataclass(frozen=True, slots=True)
class Node:
    """A record with the C and M records that follow it (``notes``) and its lower-level ``children``."""

    record: AstmRecord
    notes: tuple[Node, ...] = ()
    children: tuple[Node, ...] = ()

    @property
    def comments(self) -> tuple[AstmRecord, ...]:
        return tuple(n.record for n in self.notes if n.record.type == "C")

    @property
    def manufacturer(self) -> tuple[Node, ...]:
        return tuple(n for n in self.notes if n.record.type == "M")


@dataclass(frozen=True, slots=True)
class AstmMessage:
    """H, its notes, the level-1 nodes (P with O with R; Q; S) in order, and L."""

    delimiters: Delimiters
    header: Node
    items: tuple[Node, ...]
    terminator: AstmRecord

    @property
    def patients(self) -> tuple[Node, ...]:
        return tuple(n for n in self.items if n.record.type == "P")

    @property
    def queries(self) -> tuple[Node, ...]:
        return tuple(n for n in self.items if n.record.type == "Q")


_CONTROL_ESCAPES = {chr(c): f"X{c:02X}" for c in (*range(0x20), 0x7F)}


def _escape_component(text: str, d: Delimiters) -> str:
    text = escape(text, d)
    if any(ch in _CONTROL_ESCAPES for ch in text):  # CR, LF and other controls cannot stand in a record
        text = "".join(f"{d.escape}{_CONTROL_ESCAPES[ch]}{d.escape}" if ch in _CONTROL_ESCAPES else ch
                       for ch in text)
    return text


def _encode_fields(record: AstmRecord, d: Delimiters) -> str:
    parts = [d.repeat.join(d.component.join(_escape_component(c, d) for c in rep) for rep in f)
             for f in record.fields]
    if record.type == "H":
        return d.header_prefix()[:-1] + "".join(d.field + p for p in parts[1:])
    return d.field.join([record.type, *parts])


def _decode_fields(text: str, d: Delimiters) -> AstmRecord:
    raw = text.split(d.field)
    kind = raw[0].upper()
    if kind not in RECORD_TYPES:
        raise RemoteProtocolError(f"unknown record type {raw[0][:8]!r}")
    fields: list[FieldValue] = []
    for i, value in enumerate(raw[1:]):
        if kind == "H" and i == 0:
            fields.append(())  # the delimiter definition itself (AstmMessage.delimiters)
        elif not value:
            fields.append(())
        else:
            fields.append(tuple(tuple(unescape(c, d) for c in rep.split(d.component))
                                for rep in value.split(d.repeat)))
    return AstmRecord.make(kind, fields)


def encode_message(message: AstmMessage, encoding: str = "latin-1") -> list[bytes]:
    """Records (without terminators) of a message, in order, in the instrument's character set.

    The H record's delimiter definition comes from ``message.delimiters`` (its ``fields[0]`` must be empty).
    """
    return [t.encode(encoding) for t in encode_message_text(message)]


def encode_message_text(message: AstmMessage) -> list[str]:
    d = message.delimiters
    out: list[str] = []

    def walk(node: Node) -> None:
        out.append(_encode_fields(node.record, d))
        for note in node.notes:
            walk(note)
        for child in node.children:
            walk(child)

    walk(message.header)
    for item in message.items:
        walk(item)
    out.append(_encode_fields(message.terminator, d))
    return out


class _Builder:
    """Mutable tree while decoding; frozen into Nodes at the end."""

    __slots__ = ("children", "notes", "record")

    def __init__(self, record: AstmRecord) -> None:
        self.record = record
        self.notes: list[_Builder] = []
        self.children: list[_Builder] = []

    def freeze(self) -> Node:
        return Node(self.record, tuple(n.freeze() for n in self.notes), tuple(c.freeze() for c in self.children))


def decode_message(records: Sequence[bytes], encoding: str = "latin-1") -> AstmMessage:
    """Build the message tree from its records (terminators removed), applying LIS2-A2's hierarchy (R-B1).

    Any input gives a message or :class:`RemoteProtocolError` (never another exception): no H first, no L
    last, an unknown record type, an O without a P, an R without an O, or a C/M with nothing to attach to.
    """
    texts = [r.decode(encoding, errors="replace") for r in records if r]
    if not texts or texts[0][:1] not in ("H", "h"):
        raise RemoteProtocolError("a message starts with its header (H) record")
    d = delimiters_from_header(texts[0])
    if texts[-1][:1] not in ("L", "l") or len(texts) < 2:
        raise RemoteProtocolError("a message ends with its terminator (L) record")
    header = _Builder(_decode_fields(texts[0], d))
    items: list[_Builder] = []
    path: list[_Builder] = []  # current P/Q/S, O, R
    last: _Builder = header  # the record a C or M attaches to
    last_m: _Builder | None = None  # a C right after an M belongs to the M
    for index, text in enumerate(texts[1:-1], start=1):
        rec = _decode_fields(text, d)
        kind = rec.type
        node = _Builder(rec)
        if kind in ("H", "L"):
            raise RemoteProtocolError(f"{kind} record inside a message (record {index})")
        if kind == "C":
            (last_m or last).notes.append(node)
            continue
        if kind == "M":
            last.notes.append(node)
            last_m = node
            continue
        last_m = None
        level = _LEVEL[kind]
        if level > len(path) + 1 or (level == 2 and path[0].record.type != "P") or \
                (level == 3 and path[1].record.type != "O"):
            parent = {2: "a patient (P)", 3: "an order (O)"}.get(level, "a parent")
            raise RemoteProtocolError(f"{kind} record without {parent} record before it (record {index})")
        del path[level - 1:]
        if level == 1:
            items.append(node)
        else:
            path[-1].children.append(node)
        path.append(node)
        last = node
    terminator = _decode_fields(texts[-1], d)
    return AstmMessage(d, header.freeze(), tuple(i.freeze() for i in items), terminator)
