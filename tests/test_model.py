"""The canonical result's JSON: the store, the API and replay all read it."""

from __future__ import annotations

import dataclasses

from labbridge.model import Patient, Result

# The fields a result's JSON carries only when the analyzer sent them (issue 20): absent, the JSON of a
# result is what it was before they existed.
SENT_ONLY = ("test_name", "comments", "order_comments", "dilution", "operator", "equipment_id", "patient")


def _full() -> Result:
    patient = Patient(lab_id="L1", alt_id="A1", name=("DOE", "JANE"), mothers_maiden_name="ROE",
                      birth_date="19700101", sex="F", comments=("pregnant",))
    return Result("an-1", "S1", "GLU", "Glu", "5.4", units="mmol/L", reference_range="3.9-6.1",
                  flags=("H", "A"), status="correction", measured_at="2026-01-02T03:04:05", kind="qc",
                  patient_id="P9", message_id=7, test_name="Glucose", comments=("hemolysed sample",),
                  order_comments=("stat",), dilution="1:2", operator="op1", equipment_id="M1", patient=patient)


def test_result_json_has_every_field_and_round_trips() -> None:
    result = _full()
    data = result.to_json()
    expected = dataclasses.asdict(result)
    for name in ("flags", "comments", "order_comments"):
        expected[name] = list(expected[name])
    expected["patient"] = {**expected["patient"], "name": ["DOE", "JANE"], "comments": ["pregnant"]}
    expected["numeric_value"] = 5.4
    assert data == expected
    assert set(data) == {f.name for f in dataclasses.fields(Result)} | {"numeric_value"}
    assert Result.from_json(data) == result
    assert Result("a", "s", "t", "t", "pos").to_json()["numeric_value"] is None


def test_a_result_without_the_later_fields_has_the_json_it_always_had() -> None:
    plain = dataclasses.replace(_full(), **dict.fromkeys(("test_name", "dilution", "operator", "equipment_id"), ""),
                                comments=(), order_comments=(), patient=None)
    data = plain.to_json()
    assert not set(SENT_ONLY) & set(data)
    assert list(data) == [f.name for f in dataclasses.fields(Result) if f.name not in SENT_ONLY] + ["numeric_value"]


def test_a_result_stored_before_the_later_fields_reads_back() -> None:
    """A row the store wrote before issue 20 (none of the later keys) gives a result with them empty."""
    stored = {"instrument": "an-1", "sample_id": "S1", "test_code": "GLU", "instrument_test_code": "Glu",
              "value": "5.4", "units": "mmol/L", "reference_range": "", "flags": ["H"], "status": "final",
              "measured_at": None, "kind": "patient", "patient_id": "", "message_id": 3, "numeric_value": 5.4}
    result = Result.from_json(stored)
    assert (result.comments, result.order_comments, result.patient, result.test_name) == ((), (), None, "")
    assert result.to_json() == stored


def test_results_and_outbox_items_pickle_field_for_field() -> None:
    """The daemon and its store writer exchange these pickled (positional_pickle): every field, none of
    them default, comes back, so a field added to the dataclass can never be dropped on the way."""
    import pickle

    from labbridge.outbox import Held, OutboxItem, Queued, Route, StoredMessage
    from labbridge.store.writer import BatchStats

    result = Result(instrument="an1", sample_id="S1", test_code="GLU", instrument_test_code="1", value="5.2",
                    units="mmol/L", reference_range="3.9-5.8", flags=("H", "A"), status="correction",
                    measured_at="2026-11-23T10:00:00+01:00", kind="qc", patient_id="P9", message_id=42,
                    test_name="Glucose", comments=("c",), order_comments=("o",), dilution="1:2", operator="op",
                    equipment_id="M1", patient=Patient(name=("DOE",), comments=("p",)))
    item = OutboxItem(id=7, destination="lis", control_id="LBX", instrument="an1", message_id=42, attempts=3,
                      created_at=12.5, results=(result,), backlog=True)
    stored = StoredMessage(message_id=42, new_results=1, duplicate_results=2, outbox_ids=(7, 8), duplicate=True,
                           queued=(Queued(7, "lis", "LBX", (0, 1), True),))
    others = (Route("lis", qc="send-marked", results="qc"), Held("unmapped", "GLU2 is not mapped"),
              BatchStats(True, 0.25, "disk full", 3))
    for value in (result, item, stored, result.patient, *stored.queued, *others):
        assert pickle.loads(pickle.dumps(value, protocol=5)) == value
        assert type(value).__reduce__ is not object.__reduce__  # the fast path, not dataclasses' default


def test_a_results_values_make_the_same_json_and_key_as_the_result() -> None:
    """The store's writer gets each result as its values (ResultValues): the same fields, in the same order, and
    the same stored JSON and content key as the Result itself gives."""
    import dataclasses
    import pickle

    from labbridge.model import ResultValues, result_json, result_key, result_values

    assert ResultValues._fields == tuple(f.name for f in dataclasses.fields(Result))
    full = Result(instrument="an1", sample_id="S1", test_code="GLU", instrument_test_code="1", value="5.2",
                  units="mmol/L", reference_range="3.9-5.8", flags=("H",), status="correction",
                  measured_at="2026-11-23T10:00:00+01:00", kind="qc", patient_id="P9", message_id=42,
                  test_name="Glucose", comments=("c",), order_comments=("o",), dilution="1:2", operator="op",
                  equipment_id="M1", patient=Patient(name=("DOE",), comments=("p",)))
    bare = Result(instrument="an1", sample_id="S2", test_code="K", instrument_test_code="K", value="<0.1")
    for result in (full, bare):
        values = pickle.loads(pickle.dumps(result_values(result), protocol=5))
        assert type(values) is tuple
        as_values = ResultValues._make(values)
        assert result_json(as_values) == result.to_json() and result_key(as_values) == result.idempotency_key()
        assert Result(*as_values) == result
