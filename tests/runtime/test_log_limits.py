"""Log lines: JSON, never patient data, and repeated warnings rate-limited with a count."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import structlog

from labbridge.logs import RepeatLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def feed(limiter: RepeatLimiter, method: str, **event: object) -> dict[str, object] | None:
    try:
        return dict(limiter(None, method, dict(event)))
    except structlog.DropEvent:
        return None


def test_a_repeated_warning_is_written_a_few_times_then_counted() -> None:
    clock = Clock()
    limiter = RepeatLimiter(burst=3, window_s=60, clock=clock)
    written = [feed(limiter, "warning", event="connection_refused", instrument="an-1") for _ in range(10)]
    assert sum(w is not None for w in written) == 3
    assert limiter.left_out_total == 7
    # another source of the same event, and info lines, are not held back by it
    assert feed(limiter, "warning", event="connection_refused", instrument="an-2") is not None
    assert all(feed(limiter, "info", event="message_stored", instrument="an-1") for _ in range(10))
    clock.now += 61
    again = feed(limiter, "warning", event="connection_refused", instrument="an-1")
    assert again is not None and again["repeated"] == 7


def test_expired_windows_give_their_counts_once() -> None:
    clock = Clock()
    limiter = RepeatLimiter(burst=1, window_s=60, clock=clock)
    for _ in range(4):
        feed(limiter, "error", event="store_failed", instrument="an-1", kind="disk_full")
    assert limiter.expired() == []  # the window is still open
    clock.now += 60
    [(key, count)] = limiter.expired()
    assert count == 3 and key[1] == "store_failed" and "an-1" in key
    assert limiter.expired() == []


@pytest.mark.parametrize("n", [50])
def test_a_process_flooding_one_warning_writes_json_lines_and_a_count(n: int) -> None:
    code = f"""
from labbridge import logs
logs.configure("info", json=True)
log = logs.get_logger("t")
for _ in range({n}):
    log.warning("bad_block", instrument="an-1", patient_id="P123")
logs._limiter.clock = lambda: 1e12  # the window has passed
logs.flush_repeats()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    warnings = [line for line in lines if line["event"] == "bad_block"]
    assert len(warnings) == 5 and all(w["level"] == "warning" for w in warnings)
    assert all(w["patient_id"] == "<redacted>" for w in warnings)
    [summary] = [line for line in lines if line["event"] == "repeated_lines_left_out"]
    assert summary["repeated"] == n - 5 and summary["of_event"] == "bad_block" and summary["instrument"] == "an-1"
    assert "P123" not in proc.stderr
