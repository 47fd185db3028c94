"""The canonical model: what every driver produces and every LIS destination consumes.

Field names are stable: they appear in the JSON API, in ``labbridge replay --json`` and in the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

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
class Result:
    """One measured value of one test on one sample."""

    instrument: str
    sample_id: str
    test_code: str
    instrument_test_code: str
    value: str
    units: str = ""
    reference_range: str = ""
    flags: tuple[str, ...] = ()
    status: ResultStatus = "final"
    measured_at: str | None = None
    kind: ResultKind = "patient"
    patient_id: str = ""
    message_id: int | None = None

    @property
    def numeric_value(self) -> float | None:
        try:
            return float(self.value)
        except ValueError:
            return None

    def idempotency_key(self) -> str:
        """Content-derived key: the same result sent again gets the same key.

        Built from instrument, sample, test, result time and value (DESIGN §1, relay). The message it
        arrived in is deliberately not part of it.
        """
        parts = (self.instrument, self.sample_id, self.instrument_test_code, self.measured_at or "",
                 self.value, self.status)
        return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        # Built field by field: dataclasses.asdict deep-copies through generic recursion, and this runs
        # for every result stored (the store writer's hot path). Same keys, same order as asdict.
        return {"instrument": self.instrument, "sample_id": self.sample_id, "test_code": self.test_code,
                "instrument_test_code": self.instrument_test_code, "value": self.value, "units": self.units,
                "reference_range": self.reference_range, "flags": list(self.flags), "status": self.status,
                "measured_at": self.measured_at, "kind": self.kind, "patient_id": self.patient_id,
                "message_id": self.message_id, "numeric_value": self.numeric_value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        fields = {k: v for k, v in data.items() if k != "numeric_value"}
        fields["flags"] = tuple(fields.get("flags", ()))
        return cls(**fields)


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
