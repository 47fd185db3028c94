"""``labbridge driver new NAME``: a new driver as its own installable plugin project.

The project registers the driver through the ``labbridge.drivers`` entry-point group (one line in its
pyproject.toml), ships a ``captures/`` folder beside the code with a first capture and its golden JSON,
and a test that replays every capture; ``pip install -e DIR`` makes ``labbridge drivers`` list it.
"""

from __future__ import annotations

import re
from pathlib import Path

from labbridge.errors import LabbridgeError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

_PYPROJECT = '''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "labbridge-driver-{name}"
version = "0.1.0"
description = "labbridge driver for {name} analyzers"
requires-python = ">=3.11"
dependencies = ["labbridge"]

# This one line makes labbridge find the driver.
[project.entry-points."labbridge.drivers"]
{name} = "{package}:Driver"

[tool.setuptools.packages.find]
include = ["{package}*"]

[tool.setuptools.package-data]
{package} = ["captures/*"]
'''

_MODULE = '''"""labbridge driver for {name} analyzers.

Interface document: <vendor, document title, version, section> -- cite where each field position below
comes from, so the next engineer can check it.

A driver is pure translation: no I/O, no sleeping, no link state. Start from the generic ASTM driver
(LIS2-A2 field positions) and override only what this analyzer does differently.
"""

from __future__ import annotations

from collections.abc import Sequence

from labbridge.driver import DecodeContext
from labbridge.model import Decoded
from labbridge_driver_astm import GenericAstmDriver


class Driver(GenericAstmDriver):
    name = "{name}"
    vendor = "<vendor>"
    models = ("<model>",)
    version = "0.1.0"

    def decode(self, records: Sequence[bytes], context: DecodeContext) -> Decoded:
        decoded = super().decode(records, context)
        # Vendor specifics go here (e.g. test codes in another R-3 component, QC in a comment record).
        return decoded
'''

_TEST = '''"""Replays every capture in captures/ and compares with its golden JSON (CAPTURE.expected.jsonl).

Make a golden file after checking the output by eye:
    labbridge replay --driver {name} captures/FILE --timezone Europe/Brussels --instrument golden --json \\\\
        > captures/FILE.expected.jsonl   (name it FILE without its extension + .expected.jsonl)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labbridge.replay import ReplayedMessage, replay
from {package} import Driver

CAPTURES = Path(__file__).resolve().parent.parent / "{package}" / "captures"


def cases() -> list[Path]:
    return sorted(p for p in CAPTURES.glob("*") if p.is_file() and not p.name.endswith(".jsonl"))


@pytest.mark.parametrize("capture", cases(), ids=lambda p: p.name)
def test_capture_matches_golden(capture: Path) -> None:
    expected = capture.with_name(capture.name.rsplit(".", 1)[0] + ".expected.jsonl")
    want = [json.loads(line) for line in expected.read_text().splitlines()]
    got = []
    for item in replay(Driver(), capture.read_bytes(), instrument="golden", timezone="Europe/Brussels"):
        assert isinstance(item, ReplayedMessage) and item.decoded is not None, item
        got += [{{"message": item.index, **r.to_json()}} for r in item.decoded.results]
    assert got == want
'''

_CAPTURE = (b"H|\\^&|||<model>^1.0|||||||P|LIS2-A2|20261123081500\r"
            b"P|1|PID0001\r"
            b"O|1|SMP0001||^^^GLU|R\r"
            b"R|1|^^^GLU|5.4|mmol/L|3.9 to 6.1|N||F||||20261123081200\r"
            b"L|1|N\r")


def scaffold(name: str, target: Path) -> list[Path]:
    """Create the plugin project for driver ``name`` in ``target``; return the files written."""
    if not NAME_PATTERN.match(name):
        raise LabbridgeError(f"driver name {name!r}: use lower case letters, digits and single hyphens")
    if target.exists() and any(target.iterdir()):
        raise LabbridgeError(f"{target} exists and is not empty")
    package = "labbridge_driver_" + name.replace("-", "_")
    files = {
        target / "pyproject.toml": _PYPROJECT.format(name=name, package=package),
        target / package / "__init__.py": _MODULE.format(name=name),
        target / "tests" / "test_captures.py": _TEST.format(name=name, package=package),
        target / "README.md": (f"# labbridge driver: {name}\n\nInstall next to labbridge with "
                               f"`pip install -e .`; check with `labbridge drivers`.\n"
                               f"Add captures to `{package}/captures/` and their golden JSON; "
                               f"run `pytest`.\n"),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    captures = target / package / "captures"
    captures.mkdir(parents=True, exist_ok=True)
    capture = captures / "example.astm"
    capture.write_bytes(_CAPTURE)
    return [*files, capture]
