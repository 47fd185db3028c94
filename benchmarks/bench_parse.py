"""Parse throughput of labbridge's ASTM receive path, beside a plain split baseline.

Run: .venv/bin/python benchmarks/bench_parse.py [--seconds 2] [--runs 5]
Prints messages/s and results/s (median, min, max of several runs) for a generated 20-test chemistry
message: E1381 receiver (checksums, frame numbers, joining) + E1394 records + the generic driver.
Peers (python-astm, python-hl7, hl7apy) and the end-to-end and scale figures come with issue 7.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from labbridge_simulators.astm_analyzer import MessageFactory

from labbridge.driver import AstmDriver, DecodeContext, load_driver
from labbridge.protocols import e1381


def measure(fn: Callable[[], int], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += fn()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    msg = MessageFactory("bench", sample_prefix="B", panel_size=20, seed=1).next()
    frames = e1381.build_frames(msg.records)
    stream = b"\x05" + b"".join(frames) + b"\x04"
    driver = load_driver("astm-generic")
    assert isinstance(driver, AstmDriver)
    ctx = DecodeContext(instrument="bench")
    results_per_message = len(msg.results)

    def labbridge_path() -> int:
        link = e1381.E1381Link(e1381.Role.HOST)
        link.receive_data(stream[:-1], 0.0)
        for event in link.events():
            if isinstance(event, e1381.MessageReceived):
                decoded = driver.decode(event.records, ctx)
                assert len(decoded.results) == results_per_message
                link.accept_message(0.0)
        link.receive_data(stream[-1:], 0.0)
        return 1

    def plain_split() -> int:
        text = b"".join(f[2:-5] for f in frames)
        fields = [r.split(b"|") for r in text.split(b"\r") if r]
        return 1 if fields else 0

    rows = []
    for name, fn in (("labbridge E1381+E1394+driver", labbridge_path), ("plain split baseline", plain_split)):
        runs = [measure(fn, args.seconds) for _ in range(args.runs)]
        rows.append((name, statistics.median(runs), min(runs), max(runs)))
    print(f"{'path':<32} {'msg/s median':>14} {'min':>10} {'max':>10} {'results/s':>12}")
    for name, med, lo, hi in rows:
        print(f"{name:<32} {med:>14,.0f} {lo:>10,.0f} {hi:>10,.0f} {med * results_per_message:>12,.0f}")
    print(f"labbridge / plain split: {rows[0][1] / rows[1][1]:.3f}")


if __name__ == "__main__":
    main()
