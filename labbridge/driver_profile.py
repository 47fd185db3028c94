"""Declarative ASTM drivers: a TOML profile says where each value sits; one class applies it.

Most analyzer families follow CLSI LIS2-A2 closely and differ in *where* they put things (the test code
in the 4th or the 5th component of R-3, the sample number in O-3 or O-4), in their codes (flags, status,
qualitative words) and in how they mark a QC run. A profile file beside the driver's code
(``drivers/labbridge_driver_<family>/profile.toml``) states exactly that, is validated by pydantic when
the driver is imported (a bad profile is a driver load error, reported by name), and
:class:`ProfileAstmDriver` decodes messages from it. What does not fit goes into a small override of a
hook (:meth:`ProfileAstmDriver.adjust`, :meth:`ProfileAstmDriver.on_record`).

Host queries: ``host_query = true`` in the ``[driver]`` table makes the driver decode Q records into
host queries and answer them (and download orders) with the LIS2-A2 records the generic ASTM driver
uses (:mod:`labbridge.astm_orders`). Without it, Q records go to :meth:`ProfileAstmDriver.on_record`.

Paths
-----
``"R.3.5"`` is record R, field 3, component 5 (fields and components counted from 1, as LIS2-A2 counts
them: field 1 is the record type). ``"R.9"`` is the whole field, escapes decoded. ``"R.7[*]"`` is every
repeat of field 7 (flags); ``"O.12[*]"`` in a QC condition matches when any repeat matches. A list of
paths is a list of fallbacks: the first non-empty value wins. The record a path reads is the current one
of that type in the LIS2-A2 hierarchy (LIS2-A2 §4.1, PROTOCOLS.md R-B1): the message's H, the current P,
the current O and the R being decoded.

Beyond the values: ``test_name`` (default R-3.2), ``operator`` (R-11), ``equipment_id`` (R-14) and
``dilution`` (no default: LIS2-A2 has no dilution field) are read the same way; the patient fields
P-4..P-9 and the C records (comments on the P, O or R before them) are read at their LIS2-A2 places by
:mod:`labbridge.astm_content`, for every profile.

Hierarchy (PROTOCOLS.md R-B1): an O needs a preceding P, an R needs a preceding O, and a new P ends the
previous patient's orders; a message that breaks this raises :class:`DecodeError` with the index of the
offending record.

The ``[link]`` table holds the family's default link settings: ``framing``, ``encoding`` and a
``dialect`` table whose keys are ``[instruments.link]`` dialect flags (``frame_numbers``, ``checksums``,
``strict_frame_numbers``, ``record_terminator``, ``lenient_whitespace``, ``enq_eot_keepalive``,
``raw_idle_timeout_s``; see :class:`labbridge.config.LinkConfig`). They become the defaults of every
instrument using the driver (:attr:`labbridge.driver.Driver.link_defaults`, applied where the drivers are
loaded: :func:`labbridge.config.with_link_defaults`); what an instrument's own ``[instruments.link]`` sets
wins. ``single_frame_message`` only documents the family (the E1381 receiver accepts a whole message in
one frame either way). Any other key is a profile error.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labbridge import astm_orders
from labbridge.astm_content import Comments
from labbridge.astm_orders import decode_query
from labbridge.driver import AstmDriver, DecodeContext
from labbridge.errors import DecodeError, RemoteProtocolError
from labbridge.model import Decoded, HostQuery, OrderLine, Result, ResultStatus
from labbridge.protocols.e1394 import Record, parse_records

_PATH = re.compile(r"^(?P<type>[HPORCMQSL])\.(?P<field>[1-9]\d*)(?P<repeat>\[\*\]|\[[1-9]\d*\])?"
                   r"(?:\.(?P<component>[1-9]\d*))?$")


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A parsed path: record type, field, optional repeat (None = first, 0 = all) and component."""

    record: str
    field: int
    repeat: int | None
    component: int | None

    @classmethod
    def parse(cls, text: str) -> FieldPath:
        m = _PATH.match(text.strip())
        if m is None:
            raise ValueError(f"not a field path {text!r}: expected e.g. 'R.3', 'R.3.5', 'R.7[*]', 'O.4[2].3' "
                             f"(record type, field, [repeat], component)")
        repeat = m["repeat"]
        return cls(record=m["type"], field=int(m["field"]),
                   repeat=None if repeat is None else 0 if repeat == "[*]" else int(repeat[1:-1]),
                   component=int(m["component"]) if m["component"] else None)

    def read(self, rec: Record) -> list[str]:
        """The values this path names in ``rec``: one value, or one per repeat for ``[*]``."""
        if self.repeat == 0:
            count = len(rec.raw(self.field).split(rec.delimiters.repeat)) if rec.raw(self.field) else 0
            return [self._one(rec, i) for i in range(count)]
        return [self._one(rec, (self.repeat or 1) - 1)]

    def _one(self, rec: Record, repeat: int) -> str:
        if self.component is None:
            if self.repeat is None and repeat == 0:
                return rec.field(self.field)
            reps = rec.repeats(self.field)
            return reps[repeat] if repeat < len(reps) else ""
        return rec.component(self.field, self.component, repeat)


def _paths(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Model):
    """A test on one path: exactly one of ``equals``, ``one_of``, ``prefix``, ``empty``."""

    path: str
    equals: str | None = None
    one_of: list[str] | None = None
    prefix: str | None = None
    empty: bool | None = None
    ignore_case: bool = True

    @field_validator("path")
    @classmethod
    def _valid_path(cls, value: str) -> str:
        FieldPath.parse(value)
        return value

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        given = [k for k in ("equals", "one_of", "prefix", "empty") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a condition needs exactly one of equals, one_of, prefix, empty (got {given or 'none'})")
        return self

    def matches(self, values: Sequence[str]) -> bool:
        if self.empty is not None:
            return all(not v.strip() for v in values) is self.empty
        def norm(text: str) -> str:
            return text.strip().upper() if self.ignore_case else text.strip()

        for value in (norm(v) for v in values):
            if self.equals is not None and value == norm(self.equals):
                return True
            if self.one_of is not None and value in {norm(o) for o in self.one_of}:
                return True
            if self.prefix is not None and value.startswith(norm(self.prefix)):
                return True
        return False


Paths = Annotated[list[str], Field(min_length=1)]


class FieldMap(_Model):
    """Where each canonical value sits. Each entry is a path or a list of fallback paths."""

    sender: Paths = Field(default_factory=lambda: ["H.5.1"])
    sample_id: Paths = Field(default_factory=lambda: ["O.3.1", "O.4.1"])
    patient_id: Paths = Field(default_factory=lambda: ["P.3.1"])
    test_code: Paths = Field(default_factory=lambda: ["R.3.4"])
    # Keep only the part of the test code before this text (e.g. "/" for "687/1" -> "687").
    test_code_before: str = ""
    value: Paths = Field(default_factory=lambda: ["R.4.1"])
    units: Paths = Field(default_factory=lambda: ["R.5.1"])
    reference_range: Paths = Field(default_factory=lambda: ["R.6"])
    flags: Paths = Field(default_factory=lambda: ["R.7[*]"])
    status: Paths = Field(default_factory=lambda: ["R.9[*]"])
    measured_at: Paths = Field(default_factory=lambda: ["R.13", "O.23", "H.14"])
    # What else reaches the LIS (issue 20): the analyzer's test name, who ran the test, the analyzer's own
    # instrument/module ID, and the dilution (no standard place: empty unless the profile names one).
    test_name: Paths = Field(default_factory=lambda: ["R.3.2"])
    operator: Paths = Field(default_factory=lambda: ["R.11.1", "R.11.2"])
    equipment_id: Paths = Field(default_factory=lambda: ["R.14.1"])
    dilution: list[str] = Field(default_factory=list)

    @field_validator("sender", "sample_id", "patient_id", "test_code", "value", "units", "reference_range",
                     "flags", "status", "measured_at", "test_name", "operator", "equipment_id", "dilution",
                     mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _paths(value)

    @field_validator("sender", "sample_id", "patient_id", "test_code", "value", "units", "reference_range",
                     "flags", "status", "measured_at", "test_name", "operator", "equipment_id", "dilution")
    @classmethod
    def _valid_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            FieldPath.parse(path)
        return value


class QcRules(_Model):
    """A result is QC when any of these conditions holds."""

    any: list[Condition] = Field(default_factory=list)


class TestDef(_Model):
    name: str
    units: str = ""  # used when the analyzer sends no units


class DriverMeta(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    vendor: str
    models: Annotated[list[str], Field(min_length=1)]
    version: str = "1.0"
    discipline: str = ""
    # The analyzer asks the host for its orders (Q records): decode them and answer with the shared
    # LIS2-A2 encoders (labbridge.astm_orders); the driver also downloads orders unasked.
    host_query: bool = False


# ``[link.dialect]`` keys that become the instrument's ``[instruments.link]`` defaults (LinkConfig fields).
LINK_DIALECT_KEYS = frozenset({"frame_numbers", "checksums", "strict_frame_numbers", "record_terminator",
                               "lenient_whitespace", "enq_eot_keepalive", "raw_idle_timeout_s"})
# Keys that describe how the analyzer sends and need no setting: the receiver accepts both forms.
LINK_DIALECT_NOTES = frozenset({"single_frame_message"})


class LinkDefaults(_Model):
    """The family's default link settings; see the module docstring for ``dialect``."""

    framing: Literal["e1381", "raw", "none"] = "e1381"  # "none": records without low-level framing (= raw)
    encoding: str = "latin-1"
    dialect: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("dialect")
    @classmethod
    def _known_keys(cls, value: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        unknown = sorted(set(value) - LINK_DIALECT_KEYS - LINK_DIALECT_NOTES)
        if unknown:
            known = ", ".join(sorted(LINK_DIALECT_KEYS | LINK_DIALECT_NOTES))
            raise ValueError(f"unknown dialect key(s) {', '.join(unknown)} (known: {known})")
        return value

    def as_link_config(self) -> dict[str, str | int | float | bool]:
        """These defaults as ``[instruments.link]`` keys (validated with the instrument's config)."""
        out: dict[str, str | int | float | bool] = {"framing": "raw" if self.framing == "none" else self.framing,
                                                      "encoding": self.encoding}
        out.update({k: v for k, v in self.dialect.items() if k in LINK_DIALECT_KEYS})
        return out


class Profile(_Model):
    driver: DriverMeta
    link: LinkDefaults = LinkDefaults()
    fields: FieldMap = FieldMap()
    qc: QcRules = QcRules()
    # R records matching any of these are not results (e.g. raw signal values, secondary rows).
    skip_results: list[Condition] = Field(default_factory=list)
    # Flag as sent -> flag to report; "" drops it (e.g. N = normal). Unlisted flags pass unchanged.
    flags: dict[str, str] = Field(default_factory=dict)
    # Qualitative value as sent (case-insensitive) -> value to report, e.g. "Reactive" = "POSITIVE".
    qualitative: dict[str, str] = Field(default_factory=dict)
    # Result status code as sent -> canonical status; the last mapped repeat wins ("F@C" is a correction).
    status: dict[str, ResultStatus] = Field(default_factory=dict)
    default_status: ResultStatus = "final"
    tests: dict[str, TestDef] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _upper_qualitative(self) -> Profile:
        object.__setattr__(self, "qualitative", {k.strip().upper(): v for k, v in self.qualitative.items()})
        return self


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Profile.model_validate(data)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ProfileError(f"{path}: {problems}") from exc


@dataclass(slots=True)
class Scope:
    """The records in force while one R record is decoded (LIS2-A2 hierarchy)."""

    header: Record | None = None
    patient: Record | None = None
    order: Record | None = None
    result: Record | None = None

    def record(self, record_type: str) -> Record | None:
        return {"H": self.header, "P": self.patient, "O": self.order, "R": self.result}.get(record_type)


class ProfileAstmDriver(AstmDriver):
    """An ASTM driver whose knowledge is a :class:`Profile`; subclasses set ``profile``.

    Metadata (``name``, ``vendor``, ``models``, ``version``) comes from the profile's ``[driver]`` table.
    """

    profile: ClassVar[Profile]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        profile = cls.__dict__.get("profile")
        if isinstance(profile, Profile):
            cls.name = profile.driver.name
            cls.vendor = profile.driver.vendor
            cls.models = tuple(profile.driver.models)
            cls.version = profile.driver.version
            cls.link_defaults = profile.link.as_link_config()
            cls.supports_orders = profile.driver.host_query
            cls._compiled = _Compiled.build(profile)

    _compiled: ClassVar[_Compiled]

    # ---- hooks -----------------------------------------------------------------------------------

    def on_record(self, rec: Record, index: int, scope: Scope, out: Decoded) -> None:
        """Called for every record outside H/P/O/R (C, M, S, Q, L). Default: nothing. (C records are also read
        as comments by the decoder itself: labbridge.astm_content.)"""

    def adjust(self, result: Result, scope: Scope, context: DecodeContext) -> Result | None:
        """Last word on each result: return it (changed or not), or None to leave it out."""
        return result

    # ---- decoding --------------------------------------------------------------------------------

    def decode(self, records: Sequence[bytes], context: DecodeContext) -> Decoded:
        try:
            parsed = parse_records(records, context.encoding)
        except RemoteProtocolError as exc:
            raise DecodeError(str(exc), record_index=0) from exc
        out = Decoded()
        scope = Scope()
        comments = Comments()
        c = self._compiled
        for index, rec in enumerate(parsed):
            kind = rec.type
            if kind == "H":
                scope = Scope(header=rec)
                out.sender = _first(c.fields["sender"], scope)
            elif kind == "P":
                scope.patient, scope.order, scope.result = rec, None, None
                comments.patient(rec)
            elif kind == "O":
                if scope.patient is None:
                    raise DecodeError("order (O) record without a preceding patient (P) record", record_index=index)
                scope.order, scope.result = rec, None
                comments.order()
            elif kind == "R":
                if scope.order is None:
                    raise DecodeError("result (R) record without a preceding order (O) record", record_index=index)
                scope.result = rec
                result = self._result(scope, context, index)
                adjusted = None if result is None else self.adjust(result, scope, context)
                if adjusted is not None:
                    out.results.append(adjusted)
                comments.result(None if adjusted is None else len(out.results) - 1)
            elif kind == "Q" and self.supports_orders:
                out.queries.append(decode_query(rec, context, index))
            else:
                if kind == "C":
                    comments.comment(rec)
                self.on_record(rec, index, scope, out)
        out.results = comments.apply(out.results)
        return out

    # ---- host side (profiles with ``[driver] host_query = true``) ---------------------------------

    def encode_query_reply(self, query: HostQuery, lines: Sequence[OrderLine], context: DecodeContext, *,
                           at: datetime) -> list[bytes]:
        if not self.supports_orders:
            return super().encode_query_reply(query, lines, context, at=at)
        return astm_orders.encode_query_reply(query, lines, context, at=at)

    def encode_orders(self, lines: Sequence[OrderLine], context: DecodeContext, *, at: datetime) -> list[bytes]:
        if not self.supports_orders:
            return super().encode_orders(lines, context, at=at)
        return astm_orders.encode_orders(lines, context, at=at)

    def _result(self, scope: Scope, context: DecodeContext, index: int) -> Result | None:
        c = self._compiled
        p = self.profile
        if any(cond.matches(_all(path, scope)) for path, cond in c.skip):
            return None
        code = _first(c.fields["test_code"], scope)
        if p.fields.test_code_before and p.fields.test_code_before in code:
            code = code.split(p.fields.test_code_before, 1)[0].strip()
        if not code:
            raise DecodeError("result (R) record without a test code where the profile expects it",
                              record_index=index)
        sample_id = _first(c.fields["sample_id"], scope)
        if not sample_id:
            raise DecodeError("order (O) record without a specimen ID where the profile expects it",
                              record_index=index)
        value = _first(c.fields["value"], scope)
        value = p.qualitative.get(value.upper(), value)
        test = p.tests.get(code)
        flags: list[str] = []
        for raw in _all_of(c.fields["flags"], scope):
            flag = raw.strip()
            if not flag:
                continue
            flag = p.flags.get(flag, flag)
            if flag and flag not in flags:
                flags.append(flag)
        status: ResultStatus = p.default_status
        for code_sent in _all_of(c.fields["status"], scope):
            mapped = p.status.get(code_sent.strip().upper())
            if mapped is not None:
                status = mapped
        qc = any(cond.matches(_all(path, scope)) for path, cond in c.qc)
        return Result(
            instrument=context.instrument,
            sample_id=sample_id,
            test_code=context.map_test(code),
            instrument_test_code=code,
            value=value,
            units=_first(c.fields["units"], scope) or (test.units if test else ""),
            reference_range=_first(c.fields["reference_range"], scope),
            flags=tuple(flags),
            status=status,
            measured_at=context.timestamp(_first(c.fields["measured_at"], scope)),
            kind="qc" if qc else "patient",
            patient_id=_first(c.fields["patient_id"], scope),
            test_name=_first(c.fields["test_name"], scope),
            dilution=_first(c.fields["dilution"], scope),
            operator=_first(c.fields["operator"], scope),
            equipment_id=_first(c.fields["equipment_id"], scope),
        )


@dataclass(frozen=True, slots=True)
class _Compiled:
    """Paths parsed once per driver class, not per message."""

    fields: dict[str, tuple[FieldPath, ...]]
    qc: tuple[tuple[FieldPath, Condition], ...]
    skip: tuple[tuple[FieldPath, Condition], ...]

    @classmethod
    def build(cls, profile: Profile) -> _Compiled:
        names = ("sender", "sample_id", "patient_id", "test_code", "value", "units", "reference_range", "flags",
                 "status", "measured_at", "test_name", "operator", "equipment_id", "dilution")
        return cls(
            fields={n: tuple(FieldPath.parse(p) for p in getattr(profile.fields, n)) for n in names},
            qc=tuple((FieldPath.parse(c.path), c) for c in profile.qc.any),
            skip=tuple((FieldPath.parse(c.path), c) for c in profile.skip_results),
        )


def _all(path: FieldPath, scope: Scope) -> list[str]:
    rec = scope.record(path.record)
    return path.read(rec) if rec is not None else []


def _first(paths: Sequence[FieldPath], scope: Scope) -> str:
    for path in paths:
        for value in _all(path, scope):
            if value.strip():
                return value.strip()
    return ""


def _all_of(paths: Sequence[FieldPath], scope: Scope) -> list[str]:
    """Every value of the first path that has any (fallbacks, for repeated fields such as flags)."""
    for path in paths:
        values = [v for v in _all(path, scope) if v.strip()]
        if values:
            return values
    return []


__all__ = ["LINK_DIALECT_KEYS", "Condition", "FieldMap", "FieldPath", "LinkDefaults", "Profile", "ProfileAstmDriver",
           "ProfileError", "QcRules", "Scope", "TestDef", "load_profile"]
