"""The canonical result's JSON: the store, the API and replay all read it."""

from __future__ import annotations

import dataclasses

from labbridge.model import Result


def test_result_json_has_every_field_and_round_trips() -> None:
    result = Result("an-1", "S1", "GLU", "Glu", "5.4", units="mmol/L", reference_range="3.9-6.1",
                    flags=("H", "A"), status="correction", measured_at="2026-01-02T03:04:05", kind="qc",
                    patient_id="P9", message_id=7)
    data = result.to_json()
    expected = dataclasses.asdict(result)
    expected["flags"] = ["H", "A"]
    expected["numeric_value"] = 5.4
    assert data == expected
    assert list(data) == [f.name for f in dataclasses.fields(Result)] + ["numeric_value"]
    assert Result.from_json(data) == result
    assert Result("a", "s", "t", "t", "pos").to_json()["numeric_value"] is None
