"""Reading HL7 v2 messages on the hot path: encoding characters, character set, split, escapes.

Theory of operation (PROTOCOLS.md part c):

* R-C10: segments end with CR; LF and CRLF are accepted on input and read as CR.
* R-C8: the message must start with ``MSH``; MSH-1 is the byte after it (the field separator) and MSH-2
  the four encoding characters in the order component, repetition, escape, subcomponent. They are read
  from each message, never assumed.
* MSH-18: MSH is first read with an ASCII-compatible codec (latin-1) to find the character set, then the
  whole message is decoded with it. ``UNICODE`` (the 2.3-era value Mindray, Erba and Dymind send) is read
  as UTF-8, never UTF-16: MLLP cannot carry UTF-16 (R-C3); a message that declares UTF-16/32 is rejected.
* R-C9: escapes are decoded after splitting on the delimiters, one value at a time (:func:`unescape`);
  :func:`escape` encodes the escape character first.

A malformed message raises :class:`Hl7ParseError` only, carrying the acknowledgement code it deserves
(AE: the sender must fix the message; AR: a problem with MSH-9/11/12 or the character set) and the HL7
table 0357 error code, plus what could be read of MSH so the acknowledgement can still name it.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Final, Literal, final

from labbridge.errors import RemoteProtocolError
from labbridge.readonly import read_only_from_source

SEGMENT_TERMINATOR = "\r"  # R-C2 / R-C10

# HL7 table 0357 (message error condition codes) used in ERR-3.
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD_MISSING = "101"
ERR_DATA_TYPE = "102"
ERR_UNSUPPORTED_MESSAGE_TYPE = "200"
ERR_UNSUPPORTED_VERSION = "203"
ERR_INTERNAL = "207"
ERROR_TEXT = {
    "0": "Message accepted",
    ERR_SEGMENT_SEQUENCE: "Segment sequence error",
    ERR_REQUIRED_FIELD_MISSING: "Required field missing",
    ERR_DATA_TYPE: "Data type error",
    ERR_UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ERR_UNSUPPORTED_VERSION: "Unsupported version id",
    ERR_INTERNAL: "Application internal error",
}

# MSH-18 (HL7 table 0211) -> Python codec. "ASCII" and empty fall back to the link's configured
# encoding (an ASCII superset), since senders that declare ASCII often send latin-1 anyway.
CHARSETS: dict[str, str] = {
    "UNICODE": "utf-8",  # HAPI reads this as UTF-16; analyzers that send it mean UTF-8 (PROTOCOLS.md)
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "ISO IR6": "ascii",
    "ISO IR100": "iso8859-1",
    "ISO IR192": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "SJIS": "shift_jis",
}
UNSUPPORTED_CHARSETS = frozenset({"UNICODE UTF-16", "UNICODE UTF-32", "UTF-16", "UTF-32"})


@dataclass(init=False, slots=True, unsafe_hash=True)
class Separators:
    """MSH-1 and MSH-2: the field separator and the four encoding characters. Read-only and native like
    :class:`Segment` (every read of a value looks at three of them)."""

    field: Final[str]
    component: Final[str]
    repetition: Final[str]
    escape: Final[str]
    subcomponent: Final[str]

    def __init__(self, field: str = "|", component: str = "^", repetition: str = "~", escape: str = "\\",
                 subcomponent: str = "&") -> None:
        self.field = field
        self.component = component
        self.repetition = repetition
        self.escape = escape
        self.subcomponent = subcomponent

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


read_only_from_source(Separators, __file__)
DEFAULT_SEPARATORS = Separators()


# Control characters (C0 but TAB, and DEL) never go out raw: VT and FS are MLLP's block delimiters and NUL
# ends strings in many LIS parsers, so one in an analyzer's value would cut the LIS's message (R-C9 \Xhh\).
_CONTROLS = "\x00-\x08\x0a-\x1f\x7f"
_CONTROL = re.compile(f"[{_CONTROLS}]")


@functools.lru_cache(maxsize=64)
def _specials(seps: Separators) -> re.Pattern[str]:
    return re.compile("[" + re.escape(seps.field + seps.encoding_characters) + _CONTROLS + "]")


_DEFAULT_SPECIALS = _specials(DEFAULT_SEPARATORS)
_search_default_specials = _DEFAULT_SPECIALS.search


def plain(text: str) -> bool:
    """No character of ``text`` needs escaping with the default separators (one C-speed scan). A builder may
    test several values joined at once and skip :func:`escape` for each when they are all plain."""
    return _search_default_specials(text) is None


def _plain(value: str, seps: Separators) -> bool:
    """No character of ``value`` needs escaping (most values: one C-speed scan, no string built)."""
    if seps is DEFAULT_SEPARATORS:  # what labbridge writes: no hash of the separators for the cache
        return _search_default_specials(value) is None
    return _specials(seps).search(value) is None


def escape(value: str, seps: Separators = DEFAULT_SEPARATORS) -> str:
    """Escape a value for output (R-C9): the escape character first, then the delimiters; control characters
    as hex (``\\X0D\\`` for CR, which would end the segment; ``\\X1C\\`` for FS, which would end the MLLP
    block; every C0 character but TAB, and DEL)."""
    if not value or _plain(value, seps):
        return value
    e = seps.escape
    out = value.replace(e, f"{e}E{e}")
    out = out.replace(seps.field, f"{e}F{e}").replace(seps.component, f"{e}S{e}")
    out = out.replace(seps.subcomponent, f"{e}T{e}").replace(seps.repetition, f"{e}R{e}")
    return _CONTROL.sub(lambda m: f"{e}X{ord(m.group()):02X}{e}", out)


def unescape(value: str, seps: Separators = DEFAULT_SEPARATORS, charset: str = "utf-8") -> str:
    """Decode the escapes of one value that was already split off its delimiters (R-C9).

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` give back the delimiters, ``\\Xhh..\\`` bytes in the message's character
    set, ``\\.br\\`` a line break; highlighting (``\\H\\``, ``\\N\\``) is dropped. Unknown or unterminated
    sequences are kept as they are: a value is never lost to a sender's sloppy escaping.
    """
    e = seps.escape
    if not e or e not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        start = value.find(e, i)
        if start < 0:
            out.append(value[i:])
            break
        out.append(value[i:start])
        end = value.find(e, start + 1)
        if end < 0:
            out.append(value[start:])
            break
        seq = value[start + 1:end]
        simple = {"F": seps.field, "S": seps.component, "T": seps.subcomponent, "R": seps.repetition,
                  "E": e, ".br": "\n", "H": "", "N": ""}
        if seq in simple:
            out.append(simple[seq])
        elif seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode(charset, errors="replace"))
            except ValueError:
                out.append(value[start:end + 1])
        else:
            out.append(value[start:end + 1])
        i = end + 1
    return "".join(out)


def _nth(text: str, sep: str, n: int) -> str:
    """The ``n``-th piece (from 1) of ``text`` split on ``sep``, or "" when there are fewer; the rest of
    ``text`` past that piece is not split."""
    pieces = text.split(sep, n)
    return pieces[n - 1] if 0 < n <= len(pieces) else ""


class Hl7ParseError(RemoteProtocolError):
    """The bytes are not an HL7 message labbridge can read.

    ``ack_code`` is what the sender gets: ``AE`` (fix the message, do not simply resend) or ``AR``
    (MSH-9/11/12 or character set problem). ``header`` holds what could be read of MSH (or None).
    """

    def __init__(self, reason: str, *, ack_code: Literal["AE", "AR"], error_code: str,
                 header: Segment | None = None, separators: Separators = DEFAULT_SEPARATORS,
                 charset: str = "latin-1") -> None:
        self.reason = reason
        self.ack_code = ack_code
        self.error_code = error_code
        self.header = header
        self.separators = separators
        self.charset = charset
        super().__init__(reason)


@final
class Segment:
    """One segment's fields, still escaped. ``fields[n]`` is field n (for MSH too: ``fields[1]`` is MSH-1).

    Read-only (:mod:`labbridge.readonly`): a plain class rather than a frozen dataclass so that the compiled
    build makes one natively, a few dozen per message."""

    __slots__ = ("fields",)
    fields: Final[tuple[str, ...]]

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields

    @property
    def name(self) -> str:
        return self.fields[0]

    def raw(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""

    def __len__(self) -> int:
        return len(self.fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segment) and self.fields == other.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    def __repr__(self) -> str:
        return f"Segment(fields={self.fields!r})"

    def __reduce__(self) -> tuple[type[Segment], tuple[tuple[str, ...]]]:
        return (Segment, (self.fields,))


read_only_from_source(Segment, __file__)


@final
class Hl7Message:
    """One parsed message: its segments, the separators and character set it was read with, its bytes.
    Read-only, like :class:`Segment`."""

    __slots__ = ("charset", "raw", "segments", "separators")
    segments: Final[tuple[Segment, ...]]
    separators: Final[Separators]
    charset: Final[str]  # the Python codec the message was decoded with
    raw: Final[bytes]

    def __init__(self, segments: tuple[Segment, ...], separators: Separators, charset: str, raw: bytes) -> None:
        self.segments = segments
        self.separators = separators
        self.charset = charset
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Hl7Message) and self.segments == other.segments
                and self.separators == other.separators and self.charset == other.charset and self.raw == other.raw)

    def __hash__(self) -> int:
        return hash((self.segments, self.separators, self.charset, self.raw))

    def __repr__(self) -> str:
        return (f"Hl7Message(segments={self.segments!r}, separators={self.separators!r}, "
                f"charset={self.charset!r}, raw={self.raw!r})")

    @property
    def header(self) -> Segment:
        return self.segments[0]

    def value(self, segment: Segment, field: int, component: int = 1, repeat: int = 1,
              subcomponent: int = 0) -> str:
        """One value, unescaped: ``value(obx, 3, 1)`` is OBX-3.1 of the first repetition. ``component=0``
        returns the whole field (first repetition), escapes decoded."""
        fields = segment.fields
        if field >= len(fields):
            return ""
        raw = fields[field]
        if field <= 2 and segment.name == "MSH":
            return raw
        if not raw:
            return ""
        seps = self.separators
        # The first repetition and the first component (what most reads ask): found, not split off the rest.
        if repeat == 1:
            end = raw.find(seps.repetition)
            text = raw if end < 0 else raw[:end]
        else:
            text = _nth(raw, seps.repetition, repeat)
        if component:
            if component == 1:
                end = text.find(seps.component)
                if end >= 0:
                    text = text[:end]
            else:
                text = _nth(text, seps.component, component)
            if subcomponent:
                text = _nth(text, seps.subcomponent, subcomponent)
        if seps.escape not in text:
            return text
        return unescape(text, seps, self.charset)

    def repeats(self, segment: Segment, field: int, component: int = 1) -> list[str]:
        raw = segment.raw(field)
        if not raw:
            return []
        return [self.value(segment, field, component, i + 1) for i in range(raw.count(self.separators.repetition) + 1)]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    # ---- MSH, named -----------------------------------------------------------------------------

    @property
    def message_code(self) -> str:
        return self.value(self.header, 9, 1)

    @property
    def trigger_event(self) -> str:
        return self.value(self.header, 9, 2)

    @property
    def message_type(self) -> str:
        """``ORU^R01`` style: MSH-9.1 and MSH-9.2."""
        return f"{self.message_code}^{self.trigger_event}"

    @property
    def control_id(self) -> str:
        return self.value(self.header, 10, 1)

    @property
    def version(self) -> str:
        return self.value(self.header, 12, 1)

    @property
    def accept_ack_type(self) -> str:
        return self.value(self.header, 15, 1).upper()

    @property
    def application_ack_type(self) -> str:
        return self.value(self.header, 16, 1).upper()

    def content_digest(self) -> str:
        """A digest of the message without MSH-7 (a resend may carry a new send time): two messages
        with the same MSH-10 and the same digest are the same message sent twice."""
        h = hashlib.sha256()
        for seg in self.segments:
            fields = seg.fields
            if seg.name == "MSH" and len(fields) > 7:
                fields = (*fields[:7], "", *fields[8:])
            h.update(self.separators.field.join(fields).encode("utf-8", errors="surrogateescape"))
            h.update(b"\r")
        return h.hexdigest()


read_only_from_source(Hl7Message, __file__)


def codec_for(msh18: str, default: str) -> str:
    """Python codec for an MSH-18 value (its first repetition); raises LookupError if unknown."""
    name = msh18.strip().upper()
    if name in ("", "ASCII"):
        return default
    if name in UNSUPPORTED_CHARSETS:
        raise LookupError(f"character set {msh18!r} cannot be carried over MLLP (R-C3); use UNICODE UTF-8")
    if name in CHARSETS:
        return CHARSETS[name]
    raise LookupError(f"unknown character set {msh18!r} in MSH-18")


_SEPARATORS_SEEN: Final[dict[str, Separators]] = {}  # MSH-1 and MSH-2 as sent -> their separators (bounded)
_NAMES_SEEN: Final[set[str]] = set()  # segment names found valid (bounded): one lookup per segment, not four tests
_SEEN_MAX: Final = 256


def _separators(head: str) -> Separators:
    if len(head) < 8 or not head.startswith("MSH"):
        raise Hl7ParseError("the message does not start with an MSH segment", ack_code="AE",
                            error_code=ERR_SEGMENT_SEQUENCE)
    field_sep = head[3]
    end = head.find(field_sep, 4)
    key = head[3:end] if end >= 0 else head[3:]
    seen = _SEPARATORS_SEEN.get(key)
    if seen is not None:
        return seen
    enc = key[1:]
    bad = (field_sep.isalnum() or field_sep in "\r\n " or len(enc) < 4
           or len(set(enc[:4] + field_sep)) != 5 or any(c.isalnum() or c in "\r\n " for c in enc[:4]))
    if bad:
        raise Hl7ParseError(f"bad encoding characters in MSH-1/MSH-2 ({(field_sep + enc)[:6]!r}): expected "
                            "a field separator and four distinct delimiters such as |^~\\&", ack_code="AE",
                            error_code=ERR_DATA_TYPE)
    seps = Separators(field_sep, enc[0], enc[1], enc[2], enc[3])
    if len(key) <= 8 and len(_SEPARATORS_SEEN) < _SEEN_MAX:  # an MSH-2 of a few characters (2.7 adds a fifth)
        _SEPARATORS_SEEN[key] = seps
    return seps


def _valid_name(name: str) -> bool:
    """Three letters or digits, the first a letter (``OBX``, ``ZR1``)."""
    if name in _NAMES_SEEN:
        return True
    if len(name) != 3 or not name.isascii() or not name.isalnum() or not name[0].isalpha():
        return False
    if len(_NAMES_SEEN) < _SEEN_MAX:
        _NAMES_SEEN.add(name)
    return True


def _split(text: str, seps: Separators) -> list[Segment]:
    segments: list[Segment] = []
    field_sep = seps.field
    for line in text.split(SEGMENT_TERMINATOR):
        if not line or line.isspace():
            continue
        fields = line.split(field_sep)
        if line.startswith("MSH"):
            fields = ["MSH", field_sep, *fields[1:]]
        segments.append(Segment(tuple(fields)))
    return segments


def parse_message(payload: bytes, *, default_charset: str = "latin-1") -> Hl7Message:
    """Split one MLLP payload into segments; raise :class:`Hl7ParseError` (only) when it cannot be read."""
    data = payload
    if b"\n" in data:
        data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if data[:1] in (b"\r", b" ", b"\t"):
        data = data.lstrip(b"\r \t")
    end = data.find(b"\r")
    head = (data if end < 0 else data[:end]).decode("latin-1")
    seps = _separators(head)
    header = _split(head, seps)[0]
    charset_field = header.raw(18).split(seps.repetition)[0].split(seps.component)[0]
    try:
        charset = codec_for(charset_field, default_charset)
        codecs.lookup(charset)
    except LookupError as exc:
        raise Hl7ParseError(str(exc), ack_code="AR", error_code=ERR_DATA_TYPE, header=header,
                            separators=seps) from None
    try:
        text = data.decode(charset)
    except UnicodeDecodeError as exc:
        raise Hl7ParseError(f"byte {exc.start} is not valid {charset} (MSH-18 {charset_field or 'empty'})",
                            ack_code="AE", error_code=ERR_DATA_TYPE, header=header, separators=seps) from None
    segments = _split(text, seps)
    header = segments[0]
    missing = [f"MSH-{n}" for n in (9, 10, 12) if not header.raw(n)]
    if missing:
        raise Hl7ParseError(f"MSH is truncated or incomplete: {', '.join(missing)} empty", ack_code="AR",
                            error_code=ERR_REQUIRED_FIELD_MISSING, header=header, separators=seps,
                            charset=charset)
    for index, seg in enumerate(segments):
        if not _valid_name(seg.name):
            raise Hl7ParseError(f"segment {index + 1} has no valid segment name (truncated or corrupted message)",
                                ack_code="AE", error_code=ERR_SEGMENT_SEQUENCE, header=header, separators=seps,
                                charset=charset)
    return Hl7Message(tuple(segments), seps, charset, payload)
