"""The read-only classes of the compiled cores (labbridge/readonly.py): a Result, an HL7 segment and message
cannot be changed once made, compare and hash by value, and the pure-Python sources behave as the compiled
build does (the suite runs on both)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass
from typing import Final

import pytest

import labbridge
from labbridge import model
from labbridge.model import Patient, Result, ResultValues, result_values
from labbridge.readonly import read_only_from_source


def _result(**changes: object) -> Result:
    fields: dict[str, object] = {
        "instrument": "an-1", "sample_id": "S1", "test_code": "GLU", "instrument_test_code": "Glu", "value": "5.4",
        "units": "mmol/L", "flags": ("H",), "patient": Patient(lab_id="L1")}
    fields.update(changes)
    return Result(**fields)  # type: ignore[arg-type]


def test_a_result_cannot_be_changed_once_made() -> None:
    result = _result()
    for name in ("value", "flags", "message_id", "patient"):
        with pytest.raises(AttributeError):
            setattr(result, name, None)
        with pytest.raises(AttributeError):
            delattr(result, name)
    assert (result.value, result.flags, result.message_id) == ("5.4", ("H",), None)


def test_a_result_is_a_value_and_a_dataclass() -> None:
    result = _result()
    assert result == _result() and hash(result) == hash(_result()) and result != _result(value="5.5")
    assert len({result, _result(), _result(value="5.5")}) == 2
    changed = dataclasses.replace(result, value="6.0", message_id=3)
    assert (changed.value, changed.message_id, changed.units, result.value) == ("6.0", 3, "mmol/L", "5.4")
    assert [f.name for f in dataclasses.fields(Result)] == list(ResultValues._fields)
    assert dataclasses.asdict(result)["patient"]["lab_id"] == "L1"
    assert pickle.loads(pickle.dumps(result)) == result
    assert Result(*result_values(result)) == result  # positional, in field order
    assert repr(result).startswith("Result(instrument='an-1', sample_id='S1'")


def test_a_result_takes_its_fields_by_name_or_in_order_with_the_documented_defaults() -> None:
    """Compiled, Result's __init__ is the one written out; from the sources it is generated from that one's
    signature (labbridge.readonly): on both, every field is a parameter of its name, in field order."""
    values = result_values(_result(message_id=4, comments=("c",)))
    assert Result(**dict(zip(ResultValues._fields, values, strict=True))) == Result(*values)
    assert result_values(Result(*values)) == values
    bare = Result("a", "s", "t", "t", "v")
    assert (bare.units, bare.flags, bare.status, bare.kind, bare.measured_at, bare.patient) == (
        "", (), "final", "patient", None, None)
    if not labbridge.BUILD.compiled:  # a compiled __init__ shows no signature
        assert list(inspect.signature(Result.__init__).parameters)[1:] == list(ResultValues._fields)
    assert model.__file__.endswith(".py") != labbridge.BUILD.compiled


def test_a_class_whose_init_does_more_than_store_its_parameters_is_refused_from_source() -> None:
    @dataclass(init=False, slots=True)
    class Odd:
        a: Final[int]
        b: Final[int]

        def __init__(self, a: int) -> None:
            self.a = a
            self.b = a * 2

    with pytest.raises(TypeError, match="exactly its attributes"):
        read_only_from_source(Odd, "odd.py")
    read_only_from_source(Odd, "odd.so")  # compiled: left as it is
    odd = Odd(2)
    assert (odd.a, odd.b) == (2, 4)
