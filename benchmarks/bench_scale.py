"""Scale: memory per link idle and busy, time to bring links up, and draining a backlog after a LIS outage.

- baseline: the daemon with no instrument (RSS once ready, and its start time);
- idle: the daemon with L tcp-server instruments (listening, nobody connected): RSS, and the time from
  process start to "every listener bound" (its ready file), beside the same for no instrument;
- busy: then L analyzers connect and each sends a message every ``interval`` seconds: peak RSS (sampled
  every 0.1 s); per link = (RSS - baseline) / L;
- RSS is summed over the daemon and its store writer process, which counts the libraries both map twice;
  "shared pages once" adds only the writer's private pages to the daemon's RSS;
- backlog: the LIS is down; A analyzers each send R results (messages of 20) at once, as fast as the
  protocol allows (stored: the time until the last is ACKed); then the LIS comes back: time until the
  last result is ACKed by the LIS (the relay's backoff is capped at 1 s in the benchmark config, so at
  most 1 s of it is waiting for the next retry). Lost must be 0.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import procs
from benchmarks.common import Figure, Ratio, raise_nofile
from benchmarks.loadclient import run_load
from labbridge import aio

SECTION = "scale"
MIB = 2**20


def memory_run(links: int, interval: float, messages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        folder = Path(tmp)
        lis = procs.start_acker(folder)
        try:
            (folder / "base").mkdir()
            base = procs.start_daemon(folder / "base", instruments=0, lis_port=lis.ready["port"])
            time.sleep(0.5)
            base_rss = base.memory()["VmRSS"]
            base_once = base.memory_once()
            base_start = base.ready_at - base.started_at
            base.stop()
            daemon = procs.start_daemon(folder, instruments=links, lis_port=lis.ready["port"])
            try:
                bring_up = daemon.ready_at - daemon.started_at
                time.sleep(0.5)
                idle_rss = daemon.memory()["VmRSS"]
                idle_once = daemon.memory_once()
                with procs.PeakSampler(daemon) as peak:
                    load = aio.run(run_load(procs.targets(daemon), connections=links, messages=messages,
                                            interval=interval))
                busy_rss = peak.peak_rss
            finally:
                daemon.stop()
        finally:
            lis.stop()
    return {"base_rss_mib": base_rss / MIB, "base_once_mib": base_once / MIB, "idle_rss_mib": idle_rss / MIB,
            "busy_rss_mib": busy_rss / MIB,
            "idle_once_mib": idle_once / MIB, "busy_once_mib": peak.peak_once / MIB,
            "idle_kib_per_link": (idle_rss - base_rss) / 1024 / links,
            "busy_kib_per_link": (busy_rss - base_rss) / 1024 / links, "bring_up_s": bring_up,
            "base_start_s": base_start,
            "messages": load["messages_acked"], "errors": load["errors"][:5]}


def backlog_run(analyzers: int, results_each: int) -> dict[str, Any]:
    messages_each = max(1, results_each // 20)
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        folder = Path(tmp)
        port = procs.free_port()
        daemon = procs.start_daemon(folder, instruments=analyzers, lis_port=port)
        lis = None
        try:
            load = aio.run(run_load(procs.targets(daemon), connections=analyzers, messages=messages_each))
            lis = procs.start_acker(folder, port)
            up = lis.ready_at
            deadline = time.monotonic() + 600
            while procs.acker_progress(folder)["distinct"] < load["messages_acked"] and time.monotonic() < deadline:
                time.sleep(0.05)
            lis.stop()
            books = procs.acker_books(folder)
        finally:
            daemon.stop()
            if lis is not None:
                lis.stop()
    acked_times = [v[2] for v in books["by_control"].values() if v[2]]
    expected = load["results_per_sample"]
    got: dict[str, int] = {}
    for sample, results, _at, _n in books["by_control"].values():
        got[sample] = got.get(sample, 0) + results
    lost = sum(expected[s] - got.get(s, 0) for s in load["samples"])
    drain = (max(acked_times) - up) if acked_times else float("nan")
    return {"store_s": load["elapsed_s"], "drain_s": drain, "results": load["results_acked"],
            "drain_results_s": load["results_acked"] / drain if drain and drain == drain else 0.0,
            "lost_results": lost, "errors": load["errors"][:5]}


def run(links: int, interval: float, busy_messages: int, analyzers: int, results_each: int,
        runs: int) -> tuple[list[Figure], list[Ratio], list[str]]:
    raise_nofile(links * 4 + 1024)
    mem = [memory_run(links, interval, busy_messages) for _ in range(runs)]
    back = [backlog_run(analyzers, results_each) for _ in range(runs)]
    figures: list[Figure] = []
    notes: list[str] = []

    def fig(name: str, unit: str, key: str, values: list[dict[str, Any]]) -> None:
        figures.append(Figure.of(SECTION, name, unit, [v[key] for v in values], higher_is_better=False))

    fig("daemon RSS, no instrument (baseline)", "MiB", "base_rss_mib", mem)
    fig("daemon memory, shared pages once, no instrument", "MiB", "base_once_mib", mem)
    fig(f"daemon RSS, {links} links idle", "MiB", "idle_rss_mib", mem)
    fig(f"daemon peak RSS, {links} links busy", "MiB", "busy_rss_mib", mem)
    fig(f"daemon memory, shared pages once, {links} links idle", "MiB", "idle_once_mib", mem)
    fig(f"daemon peak memory, shared pages once, {links} links busy", "MiB", "busy_once_mib", mem)
    fig("memory per link, idle", "KiB", "idle_kib_per_link", mem)
    fig("memory per link, busy", "KiB", "busy_kib_per_link", mem)
    fig("daemon start to ready, no instrument", "s", "base_start_s", mem)
    fig(f"daemon start to ready, {links} links listening", "s", "bring_up_s", mem)
    fig(f"backlog {analyzers}x{results_each} results: store (LIS down)", "s", "store_s", back)
    fig(f"backlog {analyzers}x{results_each} results: drain to LIS after outage", "s", "drain_s", back)
    figures.append(Figure.of(SECTION, "backlog drain rate", "results/s", [v["drain_results_s"] for v in back]))
    fig("backlog lost results (must be 0)", "results", "lost_results", back)
    notes.extend(f"scale: load errors {r['errors']}" for r in [*mem, *back] if r["errors"])
    return figures, [], notes
