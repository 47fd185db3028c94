"""The canonical model: what every driver produces and every LIS destination consumes.

Field names are stable: they appear in the JSON API, in ``labbridge replay --json`` and in the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ResultStatus = Literal["final", "preliminary", "correction", "cancelled"]
ResultKind = Literal["patient", "qc"]


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
        data = asdict(self)
        data["flags"] = list(self.flags)
        data["numeric_value"] = self.numeric_value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        fields = {k: v for k, v in data.items() if k != "numeric_value"}
        fields["flags"] = tuple(fields.get("flags", ()))
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class HostQuery:
    """An analyzer asks the host which tests to run on these samples."""

    instrument: str
    sample_ids: tuple[str, ...]
    test_codes: tuple[str, ...] = ()
    request_status: str = "O"


@dataclass(slots=True)
class Decoded:
    """What a driver made of one message."""

    results: list[Result] = field(default_factory=list)
    queries: list[HostQuery] = field(default_factory=list)
    sender: str = ""
    warnings: list[str] = field(default_factory=list)
