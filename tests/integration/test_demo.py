"""The README's demo command: `labbridge demo --for SECONDS --summary-json PATH`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_for_a_while_and_loses_nothing(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "demo", "--for", "8", "--port", "0",
                           "--summary-json", str(summary)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dashboard at http://127.0.0.1:" in proc.stdout
    assert "lost 0" in proc.stdout and "delivered twice 0" in proc.stdout
    data = json.loads(summary.read_text())
    assert {"sent", "stored", "delivered", "lost", "duplicates"} <= set(data)
    assert data["instruments"] >= 12
    assert data["sent"] > 0 and data["delivered"] + data["held"] + data["qc_held"] == data["sent"] == data["stored"]
    assert data["lost"] == 0 and data["duplicates"] == 0
    # A reconnection in progress: results of validating instruments held, stages moving by themselves, a
    # failed serial link, an analyzer that connects per transmission.
    assert data["held"] > 0
    assert data["stages"]["virton-hema-1"] == data["stages"]["virton-immuno-1"] == "validating"
    assert data["stages"]["bertrix-chem-2"] in ("link-up", "first-message")
    assert data["states"]["bastogne-coag-1"] == "failed"
    assert data["states"]["marche-hema-1"] in ("idle", "up")
    assert data["host_queries"] > 0 and data["query_answers"] > 0 and data["order_lines_received"] > 0
