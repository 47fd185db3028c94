"""Reference values: the CSV import's checks, and within/outside/missing (pure)."""

from __future__ import annotations

from labbridge.campaign.validation import Reference, compare, judge, parse_references
from labbridge.model import Result


def test_a_csv_with_a_header_is_read_in_any_usual_dialect() -> None:
    text = "Sample;Test;Expected;Tolerance;Unit\nS1;GLU;5,4;0.2;mmol/L\nS2;HIV;NEG;;\n\nS3;K;4.1;5%;\n"
    refs, problems = parse_references(text)
    assert problems == []
    assert refs == [Reference("S1", "GLU", "5,4", "0.2", "mmol/L"), Reference("S2", "HIV", "NEG", ""),
                    Reference("S3", "K", "4.1", "5%")]


def test_each_problem_names_its_line() -> None:
    assert parse_references("sample,test,value\nS1,GLU,5\n")[1] == [
        "line 1: the header needs the columns sample, test, expected, tolerance; missing expected, tolerance"]
    _, problems = parse_references("sample,test,expected,tolerance\nS1,GLU,5,-1\n,K,4,0\nS1,GLU,5,1\n")
    assert problems == ["line 2: tolerance '-1': a number >= 0, or a percentage such as 5%",
                        "line 3: sample is empty", "line 4: sample S1 test GLU is listed twice"]
    assert parse_references("sample,test,expected,tolerance\n")[1] == ["no references in the file"]


def test_tolerance_is_absolute_or_relative_and_words_match_exactly() -> None:
    assert judge(Reference("S", "T", "5.0", "0.2"), "5.2") == ("within", 0.20000000000000018)
    assert judge(Reference("S", "T", "5.0", "0.2"), "5.3")[0] == "outside"
    assert judge(Reference("S", "T", "200", "5%"), "209.9")[0] == "within"
    assert judge(Reference("S", "T", "200", "5%"), "189")[0] == "outside"
    assert judge(Reference("S", "T", "5", ""), "5.0")[0] == "within"
    assert judge(Reference("S", "T", "NEG", ""), " neg ")[0] == "within"
    assert judge(Reference("S", "T", "5", "1"), "high")[0] == "outside"


def test_compare_takes_the_latest_result_by_lis_or_instrument_code() -> None:
    def r(sample: str, lis: str, code: str, value: str) -> Result:
        return Result(instrument="i", sample_id=sample, test_code=lis, instrument_test_code=code, value=value)

    refs = [Reference("S1", "GLU", "5.0", "0.1"), Reference("S1", "K", "4.0", "0.1"),
            Reference("S2", "GLU", "5.0", "0.1")]
    out = compare(refs, [r("S1", "GLU", "1", "9.9"), r("S1", "GLU", "1", "5.05"), r("S1", "POT", "K", "4.5")])
    assert [row["verdict"] for row in out["rows"]] == ["within", "outside", "missing"]
    assert (out["within"], out["outside"], out["missing"], out["ok"]) == (1, 1, 1, False)
    assert out["rows"][0]["value"] == "5.05"
    assert compare([], [])["ok"] is False  # nothing compared is not a validation
