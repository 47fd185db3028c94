"""Run every benchmark (or a subset): print a table, write JSON (benchmarks/results/, git-ignored).

    .venv/bin/python -m benchmarks                    # everything, full sizes (about 15-25 min on 2 cores)
    .venv/bin/python -m benchmarks --quick            # smaller sizes (a few minutes)
    .venv/bin/python -m benchmarks --only parse,e2e   # a subset: parse, e2e, scale, mqtt
    .venv/bin/python -m benchmarks --profile          # also py-spy the daemon at 10 links (needs ptrace)

Each figure is the median of --runs runs, with min and max; ratios are taken between medians of the
same run. Sizes can be set one by one (--links, --e2e-messages, --scale-links, --backlog ...).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import labbridge
from benchmarks import procs
from benchmarks.common import RESULTS_DIR, Figure, Ratio, event_loop, print_table, write_json
from benchmarks.targets import evaluate, print_targets

SECTIONS = ("parse", "e2e", "scale", "mqtt")  # mqtt: bench_mqtt (issue 19)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: parse, e2e, scale, mqtt")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs")
    parser.add_argument("--runs", type=int, help="runs per figure (default 5 parse / 3 e2e and scale; quick 3/2)")
    parser.add_argument("--seconds", type=float, help="length of one parse run (default 1.0; quick 0.3)")
    parser.add_argument("--links", type=_ints, help="end-to-end link counts (default 1,10,100,500; quick 1,10)")
    parser.add_argument("--e2e-messages", type=int, help="messages per end-to-end run (default 3000; quick 600)")
    parser.add_argument("--scale-links", type=int, help="links for the memory figures (default 1000; quick 100)")
    parser.add_argument("--busy-interval", type=float, default=2.0, help="seconds between messages when busy")
    parser.add_argument("--busy-messages", type=int, default=3, help="messages per analyzer when busy")
    parser.add_argument("--backlog", type=_ints, metavar="ANALYZERS,RESULTS",
                        help="backlog case (default 100,1000; quick 10,200)")
    parser.add_argument("--lis-connections", type=int, default=procs.LIS_CONNECTIONS,
                        help="MLLP connections from labbridge to the LIS (its [[lis]] connections setting; "
                             f"default {procs.LIS_CONNECTIONS})")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon during one 10-link run")
    parser.add_argument("--mqtt-seconds", type=float, help="length of one MQTT publisher run (default 30; quick 5)")
    parser.add_argument("--json", type=Path, help=f"where to write the JSON (default {RESULTS_DIR}/bench-*.json)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    procs.LIS_CONNECTIONS = args.lis_connections
    q = args.quick
    parse_runs = args.runs or (3 if q else 5)
    runs = args.runs or (2 if q else 3)
    seconds = args.seconds or (0.3 if q else 1.0)
    links = args.links or ([1, 10] if q else [1, 10, 100, 500])
    e2e_messages = args.e2e_messages or (600 if q else 3000)
    scale_links = args.scale_links or (100 if q else 1000)
    backlog = args.backlog or ([10, 200] if q else [100, 1000])
    if len(backlog) != 2:
        parser.error("--backlog takes ANALYZERS,RESULTS")

    figures: list[Figure] = []
    ratios: list[Ratio] = []
    notes: list[str] = []
    started = time.monotonic()
    print(f"event loop: {event_loop()} (labbridge, the LIS, the bare server and the load client alike)")
    print(f"labbridge's protocol cores: {labbridge.BUILD.describe()} (LABBRIDGE_PURE_PYTHON=1: the sources)")
    if "parse" in only:
        from benchmarks import bench_parse

        f, r = bench_parse.run(seconds, parse_runs)
        figures += f
        ratios += r
        print_table("parse (messages/s; results/s in the JSON)", [x for x in f if x.unit == "messages/s"], r)
    if "e2e" in only:
        from benchmarks import bench_e2e

        profile_dir = RESULTS_DIR / "profiles" if args.profile else None
        f, r, n = bench_e2e.run(links, e2e_messages, runs, profile_dir=profile_dir)
        figures += f
        ratios += r
        notes += n
        print_table("end to end over loopback, persist before ACK", f, r)
        if profile_dir is not None:
            from benchmarks.profile import render, summarise

            for path in sorted(profile_dir.glob("*.pyspy.txt")):
                if path.stat().st_size:
                    print(f"\n== profile {path.name}\n{render(summarise(path, 15))}")
    if "scale" in only:
        from benchmarks import bench_scale

        f, r, n = bench_scale.run(scale_links, args.busy_interval, args.busy_messages, backlog[0], backlog[1], runs)
        figures += f
        ratios += r
        notes += n
        print_table("scale", f, r)
    if "mqtt" in only:  # [mqtt]: the publisher's CPU for 100 instruments changing state (docs/performance.md)
        from benchmarks import bench_mqtt

        f, r, n = bench_mqtt.run(args.mqtt_seconds or (5.0 if q else 30.0), runs)
        figures += f
        ratios += r
        notes += n
        print_table("MQTT publisher (real Mosquitto on loopback)", f, r)
    for note in notes:
        print(f"note: {note}")
    targets = evaluate(figures)  # issue 15's targets, met or missed, from this run's figures only
    print_targets(targets)
    settings = {"only": only, "quick": q, "parse_runs": parse_runs, "runs": runs, "seconds": seconds,
                "links": links, "e2e_messages": e2e_messages, "scale_links": scale_links, "backlog": backlog,
                "busy_interval": args.busy_interval, "busy_messages": args.busy_messages,
                "lis_connections": args.lis_connections,
                "elapsed_s": round(time.monotonic() - started, 1)}
    path = write_json(args.json, settings, figures, ratios, notes,
                      [{**asdict(t), "met": t.met} for t in targets])
    print(f"\nwrote {path} ({settings['elapsed_s']} s)")
    lost = [f for f in figures if "lost" in f.name and f.max > 0]
    if lost:
        print("LOST RESULTS: " + ", ".join(f.name for f in lost), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
