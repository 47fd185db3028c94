"""The generic ASTM driver finds the test code where the analyzer puts it (issue 20, part 5).

LIS2-A2 puts it in R-3 component 4 (``^^^GLU``); many analyzers put it in component 1 and a letter or
nothing in component 4 (``GLU^^^A``). Per instrument (test_code_component), per driver (a subclass), or
chosen per message: the component that varies across the message's results.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from labbridge_driver_astm import GenericAstmDriver, code_component

from labbridge.cli import main
from labbridge.config import load_config
from labbridge.driver import DecodeContext
from labbridge.errors import DecodeError
from labbridge.links.intake import decode_context
from labbridge.replay import replay_capture, summary

HEAD = [b"H|\\^&|||Acme^1|||||||P|LIS2-A2|20261123101500", b"P|1", b"O|1|S1||ALL|R||||||N"]


def message(*test_ids: bytes) -> list[bytes]:
    results = [b"R|%d|%s|%d|mmol/L||||F||||20261123101200" % (i, t, i) for i, t in enumerate(test_ids, start=1)]
    return [*HEAD, *results, b"L|1|N"]


def codes(records: list[bytes], context: DecodeContext | None = None, driver: GenericAstmDriver | None = None,
          ) -> list[str]:
    decoded = (driver or GenericAstmDriver()).decode(records, context or DecodeContext(instrument="x"))
    return [r.instrument_test_code for r in decoded.results]


@pytest.mark.parametrize(("test_ids", "expected"), [
    ((b"^^^GLU", b"^^^K"), ["GLU", "K"]),  # LIS2-A2
    ((b"GLU^^^A", b"K^^^A", b"NA^^^A"), ["GLU", "K", "NA"]),  # code in component 1, a letter in component 4
    ((b"GLU", b"K"), ["GLU", "K"]),  # code in component 1, nothing after it
    ((b"GLU^^^", b"K^^^"), ["GLU", "K"]),
    ((b"GLU^Glucose^^A", b"K^Potassium^^A"), ["GLU", "K"]),  # code and name vary alike: the first
    ((b"^^^GLU^1", b"^^^K^1"), ["GLU", "K"]),
    ((b"^^^GLU^1", b"^^^K^2"), ["GLU", "K"]),  # the 4th and 5th vary alike: the 4th (LIS2-A2)
    ((b"GLU^^^A", b"K^^^"), ["GLU", "K"]),  # a letter or nothing in the 4th: the 1st varies more
])
def test_the_component_that_varies_across_results_is_the_code(test_ids: tuple[bytes, ...],
                                                              expected: list[str]) -> None:
    assert codes(message(*test_ids)) == expected


def test_with_one_result_lis2a2s_rule_applies_unless_configured() -> None:
    records = message(b"GLU^^^A")
    assert codes(records) == ["A"]  # nothing varies: the 4th when set (replay cannot warn on one result)
    assert codes(records, DecodeContext(instrument="x", test_code_component=1)) == ["GLU"]


def test_the_instruments_setting_wins_over_the_drivers() -> None:
    class LetterInFourth(GenericAstmDriver):
        test_code_component = 1

    records = message(b"GLU^^^A")
    assert codes(records, driver=LetterInFourth()) == ["GLU"]
    assert codes(records, DecodeContext(instrument="x", test_code_component=4), LetterInFourth()) == ["A"]


def test_a_configured_component_that_is_empty_is_a_decode_error_not_a_guess() -> None:
    with pytest.raises(DecodeError, match="R-3 component 2"):
        codes(message(b"GLU^^^A"), DecodeContext(instrument="x", test_code_component=2))


def test_code_component_rule() -> None:
    assert code_component([["", "", "", "GLU"], ["", "", "", "K"]], None) == 4
    assert code_component([["GLU", "", "", "A"], ["K", "", "", "A"]], None) == 1
    assert code_component([["GLU", "", "", "A"]], None) is None
    assert code_component([], None) is None
    assert code_component([["GLU"]], 3) == 3


CONFIG = """
[[sites]]
id = "arlon"
name = "Arlon"
[[instruments]]
id = "arlon-chem-3"
site = "arlon"
driver = "astm-generic"
transport = {{ kind = "tcp-server", host = "127.0.0.1", port = 0 }}
{setting}
"""


def config(tmp_path: Path, setting: str) -> Path:
    path = tmp_path / "labbridge.toml"
    path.write_text(CONFIG.format(setting=setting))
    return path


def test_the_instrument_config_reaches_the_driver(tmp_path: Path) -> None:
    [inst] = load_config(config(tmp_path, "test_code_component = 1")).instruments
    assert decode_context(inst).test_code_component == 1
    [inst] = load_config(config(tmp_path, "")).instruments
    assert decode_context(inst).test_code_component is None


def test_check_config_rejects_a_component_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(config(tmp_path, "test_code_component = 0"))]) == 2
    assert "test_code_component" in capsys.readouterr().err


def test_replay_warns_when_a_samples_results_share_one_code(tmp_path: Path) -> None:
    capture = b"\r".join(message(b"GLU^^^A", b"K^^^A")) + b"\r"
    [inst] = load_config(config(tmp_path, "test_code_component = 4")).instruments  # the standard's place: wrong here
    result = replay_capture(GenericAstmDriver(), capture, instrument=inst)
    [m] = result.decoded
    assert m.decoded is not None and [r.instrument_test_code for r in m.decoded.results] == ["A", "A"]
    assert any("its 2 results for one sample all have test code 'A'" in w and "test_code_component" in w
               for w in m.warnings)
    assert any("warning: its 2 results" in line for line in summary(result))
    auto = replay_capture(GenericAstmDriver(), capture)  # chosen per message: no warning
    assert [r.instrument_test_code for r in auto.decoded[0].decoded.results] == ["GLU", "K"]  # type: ignore[union-attr]
    assert auto.decoded[0].warnings == ()


def test_context_field_defaults_to_the_drivers_choice() -> None:
    assert DecodeContext(instrument="x").test_code_component is None
    assert dataclasses.replace(DecodeContext(instrument="x"), test_code_component=1).test_code_component == 1


def names(records: list[bytes], context: DecodeContext) -> list[tuple[str, str]]:
    decoded = GenericAstmDriver().decode(records, context)
    return [(r.instrument_test_code, r.test_name) for r in decoded.results]


def test_the_test_name_is_the_configured_component_else_the_second_never_the_code() -> None:
    lis2a2 = message(b"^Glucose^^GLU", b"^Potassium^^K")
    assert names(lis2a2, DecodeContext(instrument="x")) == [("GLU", "Glucose"), ("K", "Potassium")]
    # The code in the 1st component and the name in the 3rd (test_name_component = 3).
    third = message(b"GLU^^Glucose^A", b"K^^Potassium^A")
    context = DecodeContext(instrument="x", test_code_component=1, test_name_component=3)
    assert names(third, context) == [("GLU", "Glucose"), ("K", "Potassium")]
    assert names(third, DecodeContext(instrument="x", test_code_component=1)) == [("GLU", ""), ("K", "")]
    # A name component that is the code's gives no name (the code is not a name).
    same = DecodeContext(instrument="x", test_code_component=2, test_name_component=2)
    assert names(message(b"^GLU", b"^K"), same) == [("GLU", ""), ("K", "")]


def test_test_name_component_reaches_the_driver_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "labbridge.toml"
    path.write_text("""
[[sites]]
id = "arlon"
name = "Arlon"

[[instruments]]
id = "chem-1"
site = "arlon"
driver = "astm-generic"
test_code_component = 1
test_name_component = 3
transport = { kind = "tcp-server", port = 4001 }
""")
    context = decode_context(load_config(path).instruments[0])
    assert (context.test_code_component, context.test_name_component) == (1, 3)
