"""The driver test kit: captures replayed to golden JSON, and `labbridge replay` itself."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from labbridge.driver import available_drivers, load_driver
from labbridge.protocols.e1381 import build_frames
from labbridge.replay import ReplayedMessage, ReplayProblem, replay, replay_capture

# Golden files are made with: labbridge replay --driver NAME CAPTURE --timezone Europe/Brussels
#                                               --instrument golden --json > CAPTURE.expected.jsonl
GOLDEN_OPTIONS = ["--timezone", "Europe/Brussels", "--instrument", "golden", "--json"]


def captures() -> list[tuple[str, Path]]:
    found = []
    for name, info in sorted(available_drivers().items()):
        module = importlib.import_module(info.target.partition(":")[0])
        folder = Path(module.__file__ or "").parent / "captures"
        found += [(name, p) for p in sorted(folder.glob("*")) if p.is_file() and not p.name.endswith(".jsonl")]
    return found


def test_every_driver_ships_captures() -> None:
    drivers_with_captures = {name for name, _ in captures()}
    assert drivers_with_captures == set(available_drivers())


@pytest.mark.parametrize(("driver", "capture"), captures(), ids=lambda v: getattr(v, "name", v))
def test_capture_replays_to_golden_json(driver: str, capture: Path) -> None:
    expected = capture.with_name(capture.name.rsplit(".", 1)[0] + ".expected.jsonl")
    assert expected.exists(), f"golden file missing: {expected}"
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "replay", "--driver", driver, str(capture),
                           *GOLDEN_OPTIONS], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    want = [json.loads(line) for line in expected.read_text().splitlines()]
    assert got == want
    assert got, "a capture must decode to at least one result"


def test_bare_records_and_framed_stream_give_the_same_results() -> None:
    records = [b"H|\\^&", b"P|1", b"O|1|S1||^^^NA", b"R|1|^^^NA|140|mmol/L||||F||||20261123100000", b"L|1|N"]
    driver = load_driver("astm-generic")
    framed = b"\x05" + b"".join(build_frames(records)) + b"\x04"
    bare = b"\r\n".join(records) + b"\r\n"
    a = [m for m in replay(driver, framed) if isinstance(m, ReplayedMessage)]
    b = [m for m in replay(driver, bare) if isinstance(m, ReplayedMessage)]
    assert a and a[0].decoded is not None and b[0].decoded is not None
    assert a[0].decoded.results == b[0].decoded.results


def test_corrupted_and_truncated_captures_are_reported_not_decoded(tmp_path: Path) -> None:
    records = [b"H|\\^&", b"P|1", b"O|1|S1||^^^NA", b"R|1|^^^NA|140", b"L|1|N"]
    frames = build_frames(records)
    broken = frames[1][:-4] + b"ZZ" + frames[1][-2:]  # not a checksum: nothing to repair
    result = replay_capture(load_driver("astm-generic"), b"\x05" + frames[0] + broken + b"\x04")
    assert [(d.action, d.kind) for d in result.deviations] == [("rejected", "checksum unreadable")]
    assert [i.kind for i in result.items if isinstance(i, ReplayProblem)] == ["incomplete transmission"]
    assert not [i for i in result.items if isinstance(i, ReplayedMessage)]
    capture = tmp_path / "broken.astm"
    capture.write_bytes(b"\x05" + frames[0] + broken + b"\x04")
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "replay", "--driver", "astm-generic",
                           str(capture)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "! incomplete transmission" in proc.stdout
    assert "the two characters after ETX/ETB are not hex digits" in proc.stderr
