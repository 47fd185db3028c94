"""`labbridge driver new` makes a plugin that installs, registers by its one entry-point line, and tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_scaffolded_driver_installs_registers_and_passes_its_own_test(tmp_path: Path) -> None:
    project = tmp_path / "labbridge-driver-acme-chem"
    made = subprocess.run([sys.executable, "-m", "labbridge.cli", "driver", "new", "acme-chem", "--dir",
                           str(project)], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    package = project / "labbridge_driver_acme_chem"
    capture = package / "captures" / "example.astm"
    assert capture.exists()

    # Golden JSON for the example capture, as the docs tell a driver author to make it.
    golden = subprocess.run([sys.executable, "-m", "labbridge.cli", "replay", "--driver", "astm-generic",
                             str(capture), "--timezone", "Europe/Brussels", "--instrument", "golden", "--json"],
                            capture_output=True, text=True, check=True).stdout
    assert golden.strip()
    (package / "captures" / "example.expected.jsonl").write_text(golden)

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--no-build-isolation", "--target", str(target), str(project)],
                             capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run([sys.executable, "-m", "labbridge.cli", "drivers", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    drivers = {d["name"]: d for d in json.loads(listed.stdout)}
    assert drivers["acme-chem"]["source"] == "labbridge-driver-acme-chem"
    assert drivers["acme-chem"]["protocol"] == "astm" and "error" not in drivers["acme-chem"]
    assert "astm-generic" in drivers  # a plugin never hides the built-ins

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
                           env={**env, "PYTHONPATH": f"{target}{os.pathsep}{project}"}, cwd=project,
                           capture_output=True, text=True, check=False)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "1 passed" in tests.stdout


def test_broken_plugin_is_reported_by_name_and_others_still_load(tmp_path: Path) -> None:
    dist = tmp_path / "labbridge_driver_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: labbridge-driver-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[labbridge.drivers]\nbroken = labbridge_driver_missing:Driver\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    listed = subprocess.run([sys.executable, "-m", "labbridge.cli", "drivers", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    drivers = {d["name"]: d for d in json.loads(listed.stdout)}
    assert "failed to load" in drivers["broken"]["error"] and "broken" in drivers["broken"]["error"]
    assert "error" not in drivers["astm-generic"]
