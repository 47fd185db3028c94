"""Where a message's CPU goes: each pure-Python stage of a chem20 message timed alone, and the CPU of each
process of an end-to-end load (the daemon, its store writer, the LIS).

    .venv/bin/python -m benchmarks.breakdown                  # both parts (about 30 s)
    .venv/bin/python -m benchmarks.breakdown --stages         # the stages only
    .venv/bin/python -m benchmarks.breakdown --links 100 --messages 5000

Stages (µs per message, best of --runs runs of --loops loops): the E1381 frame path fed frame by frame
with the ACK taken after each; codec + driver; the results pickled to the writer and unpickled there; each
result's stored form (``to_json``, the JSON encoding, the content key); the HL7 ORU^R01 rendering; one
structlog line. Processes (µs of utime + stime per message, /proc): the same load as ``bench_e2e``'s,
through ``benchmarks.procs``. What is not in the stages is the event loop, the system calls and wake-ups,
and SQLite with its fsync.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import procs
from benchmarks.bench_parse import feed_frame_by_frame
from benchmarks.common import one_message
from benchmarks.loadclient import run_load
from labbridge import aio, logs, model
from labbridge.driver import AstmDriver, DecodeContext, load_driver
from labbridge.protocols import e1381
from labbridge.protocols.hl7 import Party, build_oru_r01
from labbridge.store import sql


def _best(fn: Callable[[], object], loops: int, runs: int) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best * 1e6


def stages(loops: int, runs: int, panel: str = "chem20") -> dict[str, float]:
    msg = one_message(panel)
    driver = load_driver("astm-generic")
    assert isinstance(driver, AstmDriver)
    ctx = DecodeContext(instrument="bench")
    frames = e1381.build_frames(msg.records)
    results = driver.decode(msg.records, ctx).results

    created = datetime.now(UTC)
    log = logs.get_logger("labbridge.bench")

    def one_log_line() -> None:  # as the daemon logs each message stored: JSON, to a file (here /dev/null)
        log.info("message_stored", instrument="bench", message_id=1, results=len(results), duplicates=0)

    timed: dict[str, Callable[[], object]] = {
        "E1381 frame path, frame by frame": lambda: feed_frame_by_frame(frames),
        "codec + driver": lambda: driver.decode(msg.records, ctx),
    }
    result_values = getattr(model, "result_values", None)
    if result_values is not None:
        # From issue 15 sprint 3 each result crosses to the writer as its values (a plain tuple), from which the
        # writer makes its stored form (JSON and content key).
        values = [result_values(r) for r in results]
        rows = [sql.stored_result(model.ResultValues._make(v)) for v in values]
        pickled = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
        timed |= {
            "results as values (daemon)": lambda: [result_values(r) for r in results],
            "results pickled (daemon)": lambda: pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL),
            "results unpickled (writer)": lambda: pickle.loads(pickled),
            "stored forms: to_json, JSON, keys (writer)": lambda: [
                sql.stored_result(model.ResultValues._make(v)) for v in values],
            "stored JSON with its message ID (writer)": lambda: [sql.stored_data(1, row) for row in rows],
        }
    else:  # an older checkout (run as a file with PYTHONPATH on it): Result objects to the writer
        pickled = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
        encode = getattr(sql, "stored_json", None) or sql._compact_json.encode
        forms = [r.to_json() for r in results]
        timed |= {
            "results pickled (daemon)": lambda: pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL),
            "results unpickled (writer)": lambda: pickle.loads(pickled),
            "to_json (writer)": lambda: [r.to_json() for r in results],
            "JSON encoding (writer)": lambda: [encode(f) for f in forms],
            "content keys (writer)": lambda: [r.idempotency_key() for r in results],
        }
    timed |= {
        "HL7 ORU^R01 rendering (relay)": lambda: build_oru_r01(
            results, control_id="LB000000000000000001", created_at=created, sender=Party("LABBRIDGE"),
            receiver=Party("LIS")),
        "one log line (structlog)": one_log_line,
    }
    with open(os.devnull, "w", encoding="utf-8") as null, contextlib.redirect_stderr(null):
        logs.configure("info", json=True)  # its logger is bound to the stderr of this moment: /dev/null
        try:
            return {name: _best(fn, loops, runs) for name, fn in timed.items()}
        finally:
            logs.configure("info")


def _cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / procs.CLK_TCK, int(fields[12]) / procs.CLK_TCK


def processes(links: int, messages: int, panel: str = "chem20") -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lb-breakdown-") as tmp:
        folder = Path(tmp)
        lis = procs.start_acker(folder)
        daemon = procs.start_daemon(folder, instruments=links, lis_port=lis.ready["port"])
        try:
            pids = daemon.pids()
            if len(pids) < 2:
                raise RuntimeError("the daemon's store writer process was not found")
            before = {pid: _cpu(pid) for pid in (*pids[:2], lis.pid)}
            load = aio.run(run_load(procs.targets(daemon), connections=links, messages=max(2, messages // links),
                                    panel=panel))
            deadline = time.monotonic() + 300
            while procs.acker_progress(folder)["distinct"] < load["messages_acked"] and time.monotonic() < deadline:
                time.sleep(0.05)
            done = max(1, load["messages_acked"])
            after = {pid: _cpu(pid) for pid in before}
        finally:
            daemon.stop()
            lis.stop()

    def per_message(pid: int, part: int | None = None) -> float:
        (u0, s0), (u1, s1) = before[pid], after[pid]
        spent = (u1 - u0, s1 - s0)
        return 1e6 * (sum(spent) if part is None else spent[part]) / done

    out: dict[str, float] = {}
    for name, pid in (("daemon (event loop and its threads)", pids[0]), ("store writer process", pids[1])):
        out[name] = per_message(pid)
        out[f"  {name.split()[0]}: user"] = per_message(pid, 0)
        out[f"  {name.split()[0]}: system (kernel)"] = per_message(pid, 1)
    out["daemon + writer"] = per_message(pids[0]) + per_message(pids[1])
    out["the LIS (benchmarks.mllp_acker)"] = per_message(lis.pid)
    out["stored, messages/s"] = load["messages_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", action="store_true", help="the stages only (no end-to-end load)")
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--links", type=int, default=10)
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    timed = stages(args.loops, args.runs)
    print("== stages of one chem20 message, timed alone (best of runs), µs per message")
    for name, us in timed.items():
        print(f"  {name:40s} {us:9.1f}")
    print(f"  {'sum':40s} {sum(timed.values()):9.1f}")
    if not args.stages:
        print(f"== CPU per message by process, {args.links} links, {args.messages} messages (utime + stime)")
        for name, value in processes(args.links, args.messages).items():
            unit = "" if "messages/s" in name else " µs"
            print(f"  {name:40s} {value:9.0f}{unit}")


if __name__ == "__main__":
    main()
