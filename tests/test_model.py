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


def test_results_and_outbox_items_pickle_field_for_field() -> None:
    """The daemon and its store writer exchange these pickled (positional_pickle): every field, none of
    them default, comes back, so a field added to the dataclass can never be dropped on the way."""
    import pickle

    from labbridge.outbox import OutboxItem, StoredMessage

    result = Result(instrument="an1", sample_id="S1", test_code="GLU", instrument_test_code="1", value="5.2",
                    units="mmol/L", reference_range="3.9-5.8", flags=("H", "A"), status="correction",
                    measured_at="2026-11-23T10:00:00+01:00", kind="qc", patient_id="P9", message_id=42)
    item = OutboxItem(id=7, destination="lis", control_id="LBX", instrument="an1", message_id=42, attempts=3,
                      created_at=12.5, results=(result,), backlog=True)
    stored = StoredMessage(message_id=42, new_results=1, duplicate_results=2, outbox_ids=(7, 8), duplicate=True)
    for value in (result, item, stored):
        assert pickle.loads(pickle.dumps(value, protocol=5)) == value
        assert type(value).__reduce__ is not object.__reduce__  # the fast path, not dataclasses' default
