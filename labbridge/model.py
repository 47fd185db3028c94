"""The canonical model: what every driver produces and every LIS destination consumes.

Field names are stable: they appear in the JSON API, in ``labbridge replay --json`` and in the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, TypeVar

from labbridge.readonly import read_only_from_source

ResultStatus = Literal["final", "preliminary", "correction", "cancelled"]
ResultKind = Literal["patient", "qc"]

_T = TypeVar("_T")


def positional_pickle(cls: type[_T]) -> type[_T]:
    """Pickle a dataclass as its class and its field values in field order (a class decorator, above
    ``@dataclass``).

    The store's writer process and the daemon exchange results pickled; the default pickling of a slots
    dataclass calls ``dataclasses.fields()`` for every object: this is ~4x faster to dump and ~2x to load.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if len(names) < 2:
        raise TypeError("positional_pickle needs a dataclass of two fields or more")
    state = operator.attrgetter(*names)

    def __reduce__(self: _T) -> tuple[type[_T], tuple[Any, ...]]:
        return cls, state(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


@positional_pickle
@dataclass(frozen=True, slots=True)
class Patient:
    """What the analyzer sent about the patient besides the ID (``Result.patient_id``), as it sent it.

    One object for every result of the patient in a message (shared, not copied). ``''`` (or ``()``) where
    the analyzer sent nothing: nothing here is ever filled in by labbridge. ASTM P-4, P-5, P-6, P-7, P-8,
    P-9 and the C records after the P; HL7 PID-4, PID-5, PID-6, PID-7, PID-8 and the NTE after the PID.
    ``birth_date`` and ``sex`` are kept as sent, even when they are not valid dates or codes (the LIS
    renderings say what they do with such a value: docs/lis-output.md).
    """

    lab_id: str = ""  # ASTM P-4 laboratory-assigned patient ID
    alt_id: str = ""  # ASTM P-5 patient ID No. 3; HL7 PID-4 alternate patient ID
    name: tuple[str, ...] = ()  # family, given, middle, suffix, prefix (ASTM P-6, HL7 PID-5)
    mothers_maiden_name: str = ""  # ASTM P-7, HL7 PID-6 (family name)
    birth_date: str = ""  # ASTM P-8, HL7 PID-7: YYYYMMDD[HHMM[SS]] as sent
    sex: str = ""  # ASTM P-9, HL7 PID-8: as sent (M, F, U, ...)
    comments: tuple[str, ...] = ()  # ASTM C records after the P, HL7 NTE after the PID

    def __bool__(self) -> bool:
        return any((self.lab_id, self.alt_id, any(self.name), self.mothers_maiden_name, self.birth_date, self.sex,
                    self.comments))

    def to_json(self) -> dict[str, Any]:
        return {"lab_id": self.lab_id, "alt_id": self.alt_id, "name": list(self.name),
                "mothers_maiden_name": self.mothers_maiden_name, "birth_date": self.birth_date, "sex": self.sex,
                "comments": list(self.comments)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Patient:
        return cls(lab_id=data.get("lab_id", ""), alt_id=data.get("alt_id", ""), name=tuple(data.get("name", ())),
                   mothers_maiden_name=data.get("mothers_maiden_name", ""), birth_date=data.get("birth_date", ""),
                   sex=data.get("sex", ""), comments=tuple(data.get("comments", ())))


@dataclass(init=False, slots=True, unsafe_hash=True)
class Result:
    """One measured value of one test on one sample.

    The fields after ``message_id`` came with issue 20 (what the analyzer meant reaches the LIS); each is
    empty when the analyzer did not send it, and a result stored before them reads back with them empty.

    Read-only, equal and hashed by value like a frozen dataclass, and a dataclass for ``dataclasses.replace``,
    ``fields`` and ``asdict``; its ``__init__`` is written out so that the compiled build makes a Result natively
    (a frozen dataclass's generated ``__init__`` stays Python under mypyc: ~36,000 instructions a result, 60 % of
    a chem20 message's decode). Its attributes are ``Final``: read-only once compiled, and from the sources
    through :mod:`labbridge.readonly`.
    """

    instrument: Final[str]
    sample_id: Final[str]
    test_code: Final[str]
    instrument_test_code: Final[str]
    value: Final[str]
    units: Final[str]
    reference_range: Final[str]
    flags: Final[tuple[str, ...]]
    status: Final[ResultStatus]
    measured_at: Final[str | None]
    kind: Final[ResultKind]
    patient_id: Final[str]
    message_id: Final[int | None]
    test_name: Final[str]  # the analyzer's name of the test (ASTM or the driver's table, HL7 OBX-3.2)
    comments: Final[tuple[str, ...]]  # about this result: ASTM C records after the R, HL7 NTE after the OBX
    order_comments: Final[tuple[str, ...]]  # about the order: ASTM C after the O, HL7 NTE after OBR (or SPM)
    dilution: Final[str]  # as the analyzer sent it, e.g. "1:10" or "UNDILUTED" (where its driver reads one)
    operator: Final[str]  # who ran or released the test: ASTM R-11, HL7 OBX-16
    equipment_id: Final[str]  # the analyzer's own identifier of the instrument or module: ASTM R-14, HL7 OBX-18
    patient: Final[Patient | None]  # what else the analyzer sent about the patient (shared by its results)

    # A dataclass's signature: positional in field order (unpickling, ResultValues), with its defaults.
    def __init__(self, instrument: str, sample_id: str, test_code: str, instrument_test_code: str, value: str,  # noqa: PLR0917
                 units: str = "", reference_range: str = "", flags: tuple[str, ...] = (),
                 status: ResultStatus = "final", measured_at: str | None = None, kind: ResultKind = "patient",
                 patient_id: str = "", message_id: int | None = None, test_name: str = "",
                 comments: tuple[str, ...] = (), order_comments: tuple[str, ...] = (), dilution: str = "",
                 operator: str = "", equipment_id: str = "", patient: Patient | None = None) -> None:
        self.instrument = instrument
        self.sample_id = sample_id
        self.test_code = test_code
        self.instrument_test_code = instrument_test_code
        self.value = value
        self.units = units
        self.reference_range = reference_range
        self.flags = flags
        self.status = status
        self.measured_at = measured_at
        self.kind = kind
        self.patient_id = patient_id
        self.message_id = message_id
        self.test_name = test_name
        self.comments = comments
        self.order_comments = order_comments
        self.dilution = dilution
        self.operator = operator
        self.equipment_id = equipment_id
        self.patient = patient

    def __reduce__(self) -> tuple[type[Result], tuple[Any, ...]]:
        """Pickled as its class and its values in field order (as :func:`positional_pickle` does)."""
        return Result, result_values(self)

    @property
    def numeric_value(self) -> float | None:
        return _numeric(self.value)

    def idempotency_key(self) -> str:
        """Content-derived key: the same result sent again gets the same key.

        Built from instrument, sample, test, result time and value (DESIGN §1, relay). The message it
        arrived in is deliberately not part of it.
        """
        return result_key(self)

    def to_json(self) -> dict[str, Any]:
        return result_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        """A result from :meth:`to_json`'s form, including one stored before any later field existed."""
        fields = {k: v for k, v in data.items() if k != "numeric_value"}
        fields["flags"] = tuple(fields.get("flags", ()))
        for name in ("comments", "order_comments"):
            if name in fields:
                fields[name] = tuple(fields[name])
        patient = fields.get("patient")
        if patient is not None:
            fields["patient"] = Patient.from_json(patient)
        return cls(**fields)


read_only_from_source(Result, __file__)


class ResultValues(NamedTuple):
    """A :class:`Result`'s fields as a tuple, in the same order (:func:`result_values` makes the plain tuple).

    The store's writer process gets each result this way: plain tuples pickle and unpickle without a Python call,
    where rebuilding a frozen 20-field Result cost the writer ~27 % of its instructions per message
    (docs/performance.md, issue 15 sprint 3). :func:`result_json` and :func:`result_key` read either.
    ``tests/test_model.py`` checks that the fields are Result's.
    """

    instrument: str
    sample_id: str
    test_code: str
    instrument_test_code: str
    value: str
    units: str
    reference_range: str
    flags: tuple[str, ...]
    status: ResultStatus
    measured_at: str | None
    kind: ResultKind
    patient_id: str
    message_id: int | None
    test_name: str
    comments: tuple[str, ...]
    order_comments: tuple[str, ...]
    dilution: str
    operator: str
    equipment_id: str
    patient: Patient | None

    @property
    def numeric_value(self) -> float | None:
        return _numeric(self.value)


result_values: Callable[[Result], tuple[Any, ...]] = operator.attrgetter(*ResultValues._fields)
"""A result's field values as a plain tuple (``ResultValues._make`` of it is its ResultValues)."""


def _numeric(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def result_key(r: Result | ResultValues) -> str:
    """:meth:`Result.idempotency_key`, of a Result or its values."""
    parts = (r.instrument, r.sample_id, r.instrument_test_code, r.measured_at or "", r.value, r.status)
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def result_json(r: Result | ResultValues) -> dict[str, Any]:
    """:meth:`Result.to_json`, of a Result or its values."""
    # Built field by field: dataclasses.asdict deep-copies through generic recursion, and this runs
    # for every result stored (the store writer's hot path). Same keys, same order as asdict.
    # The issue-20 fields only when sent: a result without them is stored (and replayed) as before.
    data: dict[str, Any] = {"instrument": r.instrument, "sample_id": r.sample_id, "test_code": r.test_code,
                            "instrument_test_code": r.instrument_test_code, "value": r.value, "units": r.units,
                            "reference_range": r.reference_range, "flags": list(r.flags), "status": r.status,
                            "measured_at": r.measured_at, "kind": r.kind, "patient_id": r.patient_id,
                            "message_id": r.message_id, "numeric_value": r.numeric_value}
    if r.test_name:
        data["test_name"] = r.test_name
    if r.comments:
        data["comments"] = list(r.comments)
    if r.order_comments:
        data["order_comments"] = list(r.order_comments)
    if r.dilution:
        data["dilution"] = r.dilution
    if r.operator:
        data["operator"] = r.operator
    if r.equipment_id:
        data["equipment_id"] = r.equipment_id
    if r.patient is not None:
        data["patient"] = r.patient.to_json()
    return data


def order_comments(results: Sequence[Result]) -> tuple[str, ...]:
    """The order comments of a group of results (one sample), each once, in the order first seen."""
    seen: dict[str, None] = {}
    for r in results:
        if r.order_comments:
            seen.update(dict.fromkeys(r.order_comments))
    return tuple(seen)


@dataclass(frozen=True, slots=True)
class HostQuery:
    """An analyzer asks the host which tests to run on these samples.

    ``test_codes`` are LIS codes (the driver maps the instrument's codes back through the test map);
    empty means all tests. ``all_samples`` is a query for every sample the host has work for (ASTM
    Q-3 ``ALL``). ``request_status`` is the protocol's request code (ASTM Q-13: ``O`` orders, ``A``
    cancel the outstanding request, ...).
    """

    instrument: str
    sample_ids: tuple[str, ...]
    test_codes: tuple[str, ...] = ()
    request_status: str = "O"
    all_samples: bool = False

    @property
    def cancels(self) -> bool:
        """The analyzer withdraws its outstanding request (ASTM Q-13 ``A``): it wants no answer."""
        return self.request_status.upper() == "A"


OrderPriority = Literal["routine", "stat", "asap"]
PRIORITIES: tuple[OrderPriority, ...] = ("routine", "asap", "stat")  # lowest to highest
OrderLineStatus = Literal["ordered", "no_order", "unknown_sample"]


@dataclass(frozen=True, slots=True)
class OrderLine:
    """Work for one sample on one instrument, as a driver encodes it.

    ``status`` says what the line is: ``ordered`` (tests to run: a pushed order, or a query answer),
    ``no_order`` (the host knows the sample but has no order for these tests: ASTM O-26 ``Y``),
    ``unknown_sample`` (the host has no record of the sample: ASTM O-26 ``Z``). ``test_codes`` are LIS
    codes; the driver maps them to the instrument's codes. ``order_ids`` are the order source's IDs
    this line carries (drivers ignore them).
    """

    sample_id: str
    test_codes: tuple[str, ...]
    status: OrderLineStatus = "ordered"
    priority: OrderPriority = "routine"
    patient_id: str = ""
    order_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class Decoded:
    """What a driver made of one message."""

    results: list[Result] = field(default_factory=list)
    queries: list[HostQuery] = field(default_factory=list)
    sender: str = ""
    warnings: list[str] = field(default_factory=list)
