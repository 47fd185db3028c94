"""Reference values for the validation gate, and their comparison with what the analyzer sent (pure).

A lab validates a reconnected analyzer by running samples whose values are known (from the analyzer before
the attack, another analyzer, a control material) and comparing them side by side. References come from a
CSV file with the columns ``sample``, ``test``, ``expected`` and ``tolerance`` (a header line is required;
``unit`` and ``note`` are optional): ``tolerance`` is an absolute difference (``0.2``) or a share of the
expected value (``5%``); a qualitative reference (``POS``) must match exactly, ignoring case and blanks.
``test`` is the LIS test code or the instrument's own code.

Each reference is ``within`` tolerance, ``outside`` it, or ``missing`` (no result for that sample and test
yet). Sign-off needs every reference within tolerance (or an override with a reason).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from labbridge.model import Result

Verdict = Literal["within", "outside", "missing"]
REQUIRED_COLUMNS = ("sample", "test", "expected", "tolerance")
MAX_REFERENCES = 10_000  # per file: a validation run, not a result archive


@dataclass(frozen=True, slots=True)
class Reference:
    sample: str
    test: str
    expected: str
    tolerance: str = "0"  # "0.2" absolute, "5%" relative, "" or "0" exact
    unit: str = ""
    note: str = ""

    def to_json(self) -> dict[str, str]:
        return {"sample": self.sample, "test": self.test, "expected": self.expected, "tolerance": self.tolerance,
                "unit": self.unit, "note": self.note}


def _number(text: str) -> float | None:
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def tolerance_problem(tolerance: str) -> str | None:
    text = tolerance.strip()
    if not text:
        return None
    number = _number(text[:-1] if text.endswith("%") else text)
    if number is None or number < 0:
        return f"tolerance {tolerance!r}: a number >= 0, or a percentage such as 5%"
    return None


def parse_references(text: str) -> tuple[list[Reference], list[str]]:
    """The references in a CSV file's text, or the problems with it (each naming its line)."""
    sample_line = text[:4096]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample_line, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    header = [h.strip().lower() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        return [], [f"line 1: the header needs the columns {', '.join(REQUIRED_COLUMNS)}; missing {', '.join(missing)}"]
    refs: list[Reference] = []
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for number, row in enumerate(reader, start=2):
        values = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
        if not any(values.values()):
            continue
        ref = Reference(values.get("sample", ""), values.get("test", ""), values.get("expected", ""),
                        values.get("tolerance", ""), values.get("unit", ""), values.get("note", ""))
        problems.extend(f"line {number}: {column} is empty" for column in ("sample", "test", "expected")
                        if not getattr(ref, column))
        why = tolerance_problem(ref.tolerance)
        if why:
            problems.append(f"line {number}: {why}")
        if (ref.sample, ref.test) in seen:
            problems.append(f"line {number}: sample {ref.sample} test {ref.test} is listed twice")
        seen.add((ref.sample, ref.test))
        refs.append(ref)
        if len(refs) > MAX_REFERENCES:
            return [], [f"more than {MAX_REFERENCES} references in one file"]
    if not refs and not problems:
        problems.append("no references in the file")
    return refs, problems


def judge(ref: Reference, value: str) -> tuple[Verdict, float | None]:
    """Within or outside tolerance, and the difference (numeric references)."""
    expected, got = _number(ref.expected), _number(value)
    if expected is None:  # qualitative: the same word
        same = ref.expected.strip().casefold() == value.strip().casefold()
        return ("within" if same else "outside"), None
    if got is None:
        return "outside", None
    tol = ref.tolerance.strip()
    allowed = 0.0
    if tol.endswith("%"):
        allowed = abs(expected) * (_number(tol[:-1]) or 0.0) / 100
    elif tol:
        allowed = _number(tol) or 0.0
    difference = got - expected
    return ("within" if abs(difference) <= allowed + 1e-9 else "outside"), difference


def compare(refs: Sequence[Reference], results: Iterable[Result]) -> dict[str, Any]:
    """Side by side: each reference with the latest result for its sample and test, and a summary.

    ``ok`` is true when there is at least one reference and every one is within tolerance.
    """
    latest: dict[tuple[str, str], Result] = {}
    for stored in results:  # in the order stored: a later result (a rerun) replaces an earlier one
        for code in {stored.test_code, stored.instrument_test_code}:
            latest[(stored.sample_id, code)] = stored
    rows: list[dict[str, Any]] = []
    counts = {"within": 0, "outside": 0, "missing": 0}
    for ref in refs:
        result = latest.get((ref.sample, ref.test))
        row: dict[str, Any] = {**ref.to_json(), "value": None, "result_unit": None, "difference": None}
        if result is None:
            verdict: Verdict = "missing"
        else:
            verdict, difference = judge(ref, result.value)
            row.update(value=result.value, result_unit=result.units,
                       difference=None if difference is None else round(difference, 6))
        row["verdict"] = verdict
        counts[verdict] += 1
        rows.append(row)
    return {"references": len(refs), **counts, "ok": bool(refs) and counts["within"] == len(refs), "rows": rows}
