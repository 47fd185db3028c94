"""End to end over loopback, persist-before-ACK on: analyzers -> labbridge (subprocess) -> LIS (MLLP acker).

For each N (links): a fresh daemon (`labbridge run`, store on disk in a temporary folder, fsync per
commit group) with N tcp-server instruments, the minimal MLLP acker of benchmarks/mllp_acker.py as the
LIS, and the load client of benchmarks/loadclient.py with N connections sending back to back. Measured:

- stored: messages (and results) whose last frame labbridge ACKed (after its commit), per second;
- delivered: the same messages ACKed (AA) by the LIS, per second from the start of the load to the last;
- latency per sample: the analyzer's last frame written -> the LIS's ACK of that sample (p50, p99), and
  last frame -> labbridge's ACK (the commit's share);
- daemon CPU per message (utime + stime of all its threads over the run, /proc/PID/stat) and peak RSS
  (VmHWM, /proc/PID/status), each summed over the daemon and its store writer process; and the peak memory
  with the pages both map counted once (the daemon's RSS + the writer's private pages, sampled every 0.1 s);
- lost: results ACKed to an analyzer that the LIS never ACKed (must be 0), and duplicates.
Beside it, the same load against benchmarks/bare_server.py (ACKs only, in its own process): the ceiling.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import procs
from benchmarks.common import Figure, Ratio, raise_nofile
from benchmarks.loadclient import percentile, run_load
from labbridge import aio

SECTION = "e2e"
DELIVERY_TIMEOUT_S = 300.0


def _per_link(total: int, links: int) -> int:
    return max(2, -(-total // links))


def labbridge_run(links: int, total: int, panel: str, profile: Path | None = None, chop: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        folder = Path(tmp)
        lis = procs.start_acker(folder)
        daemon = procs.start_daemon(folder, instruments=links, lis_port=lis.ready["port"])
        spy = None
        try:
            if profile is not None:
                spy = subprocess.Popen([str(Path(procs.sys.executable).with_name("py-spy")), "record", "--pid",
                                        str(daemon.pid), "--rate", "250", "--format", "raw", "--threads",
                                        "--output", str(profile)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            cpu0 = daemon.cpu_seconds()
            with procs.PeakSampler(daemon) as peak:
                load = aio.run(run_load(procs.targets(daemon), connections=links,
                                        messages=_per_link(total, links), panel=panel, chop=chop))
                deadline = time.monotonic() + DELIVERY_TIMEOUT_S
                while procs.acker_progress(folder)["distinct"] < load["messages_acked"]:
                    if time.monotonic() > deadline or daemon.popen.poll() is not None:
                        break
                    time.sleep(0.05)
            cpu = daemon.cpu_seconds() - cpu0
            memory = {**daemon.memory(), "once": peak.peak_once}
        finally:
            if spy is not None:
                spy.send_signal(procs.signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            daemon_rc = daemon.stop()
            lis.stop()
        books = procs.acker_books(folder)
    return _summarise(load, books, cpu, memory, daemon_rc)


def _summarise(load: dict[str, Any], books: dict[str, Any], cpu: float, memory: dict[str, int],
               daemon_rc: int) -> dict[str, Any]:
    delivered: dict[str, list[Any]] = {}  # sample -> [results, first ack time, control IDs]
    for control, (sample, results, acked_at, _receipts) in books["by_control"].items():
        entry = delivered.setdefault(sample, [0, acked_at, []])
        entry[0] += results
        entry[1] = min(entry[1], acked_at) if entry[1] else acked_at
        entry[2].append(control)
    expected = load["results_per_sample"]
    lost = 0
    latencies = []
    for sample, (sent, _acked) in load["samples"].items():
        got = delivered.get(sample)
        lost += expected[sample] - (got[0] if got else 0)
        if got:
            latencies.append(got[1] - sent)
    latencies.sort()
    acks = [t for _, t in load["samples"].values()]
    last_delivery = max((d[1] for d in delivered.values()), default=load["started_at"])
    messages = load["messages_acked"]
    results = load["results_acked"]
    delivered_results = sum(min(d[0], expected.get(s, 0)) for s, d in delivered.items())
    span = max(1e-9, last_delivery - load["started_at"])
    return {
        "stored_msg_s": load["messages_per_s"], "stored_results_s": load["results_per_s"],
        "delivered_msg_s": len(delivered) / span, "delivered_results_s": delivered_results / span,
        "latency_p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "latency_p99_ms": 1000 * percentile(latencies, 0.99),
        "store_ack_p50_ms": load["last_frame_ack_p50_ms"], "store_ack_p99_ms": load["last_frame_ack_p99_ms"],
        "cpu_us_per_msg": 1e6 * cpu / messages if messages else float("nan"),
        "peak_rss_mib": memory.get("VmHWM", 0) / 2**20, "peak_once_mib": memory.get("once", 0) / 2**20,
        "messages": messages, "results": results,
        "lost_results": lost, "unacked_by_analyzer": load["connections"] * load["messages_per_connection"] - messages,
        "duplicates": sum(1 for d in delivered.values() if len(d[2]) > 1),
        "redeliveries": books["messages"] - len(books["by_control"]),
        "errors": load["errors"][:5], "daemon_exit": daemon_rc, "last_ack_at": max(acks, default=0.0),
    }


def _receiver_run(module: str, links: int, total: int, panel: str) -> tuple[dict[str, Any], float]:
    """The load against another receiver in its own process (``python -m module --ready FILE``): the load's
    summary and the receiver's CPU seconds."""
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        folder = Path(tmp)
        server = procs.Proc(module, ["--ready", str(folder / "ready.json")], folder / "ready.json",
                            folder / "receiver.log")
        try:
            cpu0 = server.cpu_seconds()
            load = aio.run(run_load([(server.ready["host"], server.ready["port"])], connections=links,
                                    messages=_per_link(total, links), panel=panel))
            cpu = server.cpu_seconds() - cpu0
        finally:
            server.stop()
    return load, cpu


def ceiling_run(links: int, total: int, panel: str) -> dict[str, Any]:
    """The same load against benchmarks/bare_server.py: ACKs only."""
    load, cpu = _receiver_run("benchmarks.bare_server", links, total, panel)
    return {"msg_s": load["messages_per_s"], "results_s": load["results_per_s"],
            "cpu_us_per_msg": 1e6 * cpu / max(1, load["messages_acked"]),
            "ack_p99_ms": load["last_frame_ack_p99_ms"], "errors": load["errors"][:5]}


def peer_run(links: int, total: int, panel: str) -> dict[str, Any]:
    """The same load against python-astm's own server (benchmarks/peer_server.py): ACK and decode only."""
    load, cpu = _receiver_run("benchmarks.peer_server", links, total, panel)
    expected = load["connections"] * load["messages_per_connection"]
    return {"msg_s": load["messages_per_s"], "cpu_us_per_msg": 1e6 * cpu / max(1, load["messages_acked"]),
            "unacked": expected - load["messages_acked"], "errors": load["errors"][:5]}


SPLIT_LINKS = 10
SPLIT_CHOP = 7  # bytes per write: every frame arrives in pieces


def run(links_list: list[int], total: int, runs: int, panel: str = "chem20",
        profile_dir: Path | None = None) -> tuple[list[Figure], list[Ratio], list[str]]:
    raise_nofile(max(links_list) * 4 + 1024)
    figures: list[Figure] = []
    ratios: list[Ratio] = []
    notes: list[str] = []
    for links in links_list:
        lb = []
        for i in range(runs):
            profile = None
            if profile_dir is not None and i == 0 and links == 10:
                profile_dir.mkdir(parents=True, exist_ok=True)
                profile = profile_dir / f"daemon-{links}links.pyspy.txt"
                notes.append(f"py-spy profile of the daemon at {links} links: {profile}")
            lb.append(labbridge_run(links, total, panel, profile))
        ceiling = [ceiling_run(links, total, panel) for _ in range(runs)]
        tag = f"{links} links"

        def fig(name: str, unit: str, key: str, values: list[dict[str, Any]], *, higher: bool = True,
                tag: str = tag, links: int = links) -> Figure:
            f = Figure.of(SECTION, f"{tag}: {name}", unit, [v[key] for v in values], higher_is_better=higher,
                          links=links)
            figures.append(f)
            return f

        stored = fig("labbridge stored", "messages/s", "stored_msg_s", lb)
        fig("labbridge stored", "results/s", "stored_results_s", lb)
        fig("labbridge delivered to LIS", "messages/s", "delivered_msg_s", lb)
        fig("labbridge delivered to LIS", "results/s", "delivered_results_s", lb)
        fig("latency last frame -> LIS ACK p50", "ms", "latency_p50_ms", lb, higher=False)
        fig("latency last frame -> LIS ACK p99", "ms", "latency_p99_ms", lb, higher=False)
        fig("last frame -> labbridge ACK (commit) p50", "ms", "store_ack_p50_ms", lb, higher=False)
        fig("last frame -> labbridge ACK (commit) p99", "ms", "store_ack_p99_ms", lb, higher=False)
        fig("daemon CPU per message", "us", "cpu_us_per_msg", lb, higher=False)
        fig("daemon peak RSS", "MiB", "peak_rss_mib", lb, higher=False)
        fig("daemon peak memory, shared pages once", "MiB", "peak_once_mib", lb, higher=False)
        fig("lost results (must be 0)", "results", "lost_results", lb, higher=False)
        fig("duplicates at the LIS", "samples", "duplicates", lb, higher=False)
        ceil = fig("bare ACK server (ceiling)", "messages/s", "msg_s", ceiling)
        fig("bare server CPU per message", "us", "cpu_us_per_msg", ceiling, higher=False)
        ratios.append(Ratio(SECTION, f"{tag}: labbridge stored / bare-ACK ceiling", stored.median / ceil.median,
                            None))
        peer = [peer_run(links, total, panel) for _ in range(runs)]
        peer_fig = fig("python-astm server (ACK + decode, no store)", "messages/s", "msg_s", peer)
        fig("python-astm server CPU per message", "us", "cpu_us_per_msg", peer, higher=False)
        fig("python-astm server: messages never ACKed", "messages", "unacked", peer, higher=False)
        ratios.append(Ratio(SECTION, f"{tag}: python-astm server / bare-ACK ceiling", peer_fig.median / ceil.median,
                            None))
        ratios.append(Ratio(SECTION, f"{tag}: labbridge stored (durable) / python-astm server",
                            stored.median / peer_fig.median if peer_fig.median else float("nan"),
                            1.0 if links in (10, 100) else None))  # issue 15, item 1
        notes.extend(f"{tag}: python-astm server errors {r['errors']}, never ACKed {r['unacked']}"
                     for r in peer if r["errors"] or r["unacked"])
        notes.extend(f"{tag}: errors {r['errors']}, messages never ACKed {r['unacked_by_analyzer']}, "
                     f"daemon exit {r['daemon_exit']}"
                     for r in lb if r["errors"] or r["unacked_by_analyzer"] or r["daemon_exit"])
    # Frames split over reads (each written in 7-byte pieces) and, back to back, the EOT of one message and
    # the ENQ of the next in one write: nothing may be dropped (senaite.astm drops the second of two
    # back-to-back messages). One run; the figure that matters is "lost".
    split = [labbridge_run(SPLIT_LINKS, max(SPLIT_LINKS * 2, total // 4), panel, chop=SPLIT_CHOP)]
    tag = f"{SPLIT_LINKS} links, frames in {SPLIT_CHOP}-byte writes"
    for name, unit, key, higher in (("labbridge stored", "messages/s", "stored_msg_s", True),
                                    ("lost results (must be 0)", "results", "lost_results", False),
                                    ("duplicates at the LIS", "samples", "duplicates", False),
                                    ("messages the analyzers sent but never saw ACKed", "messages",
                                     "unacked_by_analyzer", False)):
        figures.append(Figure.of(SECTION, f"{tag}: {name}", unit, [r[key] for r in split], higher_is_better=higher,
                                 links=SPLIT_LINKS))
    notes.extend(f"{tag}: errors {r['errors']}, daemon exit {r['daemon_exit']}"
                 for r in split if r["errors"] or r["daemon_exit"])
    return figures, ratios, notes
