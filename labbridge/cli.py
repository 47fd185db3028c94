"""The ``labbridge`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from labbridge import __version__, logs
from labbridge.errors import ConfigError, LabbridgeError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _cmd_check_config(args: argparse.Namespace) -> int:
    from labbridge.config import load_config
    from labbridge.driver import available_drivers

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: invalid configuration ({len(exc.problems)} problem(s))", file=sys.stderr)
        for key, what in exc.problems:
            print(f"  {exc.path}: {key or '(file)'}: {what}", file=sys.stderr)
        return EXIT_CONFIG
    known = available_drivers()
    problems = [(f"instruments[{i}].driver", f"a known driver ({', '.join(sorted(known))}); got {inst.driver!r}")
                for i, inst in enumerate(config.instruments) if inst.driver not in known]
    if problems:
        print(f"{args.config}: invalid configuration ({len(problems)} problem(s))", file=sys.stderr)
        for key, what in problems:
            print(f"  {args.config}: {key}: {what}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: OK ({len(config.sites)} sites, {len(config.instruments)} instruments, "
          f"{len(config.lis)} LIS destinations)")
    return EXIT_OK


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


def _cmd_run(args: argparse.Namespace) -> int:
    from labbridge.config import load_config
    from labbridge.runtime.daemon import Daemon

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(config.log.level)

    async def main() -> None:
        stop = asyncio.Event()
        _install_signals(stop)
        await Daemon(config, ready_file=args.ready_file).run(stop)

    asyncio.run(main())
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from labbridge.demo import Summary, default_demo_config, run_demo

    logs.configure(args.log_level)
    config_path = Path(args.config) if args.config else default_demo_config()
    if not config_path.exists():
        print(f"demo config not found at {config_path}; pass -c config/demo.toml", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> Summary | None:
        task = asyncio.create_task(run_demo(config_path=config_path, duration=args.duration,
                                            http_port=args.port))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            print("demo stopped", flush=True)
            return None

    try:
        summary = asyncio.run(main())
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    if summary is None:
        return EXIT_OK
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK if summary.lost == 0 and summary.duplicates == 0 else EXIT_FAILURE


def _fetch(url: str) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (scheme checked above)
        return json.loads(resp.read().decode("utf-8"))


def _cmd_status(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    try:
        instruments = _fetch(f"{base}/api/instruments")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot reach the labbridge daemon at {base}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(instruments, indent=2))
        return EXIT_OK
    print(f"{'INSTRUMENT':<22} {'SITE':<11} {'STATE':<10} {'MSGS':>6}  REASON")
    for i in instruments:
        print(f"{i['id']:<22} {i['site']:<11} {i['state']:<10} {i['messages_received']:>6}  {i['reason']}")
    return EXIT_OK


def _cmd_drivers(args: argparse.Namespace) -> int:
    from labbridge.driver import available_drivers, load_driver_class

    rows = []
    for name, info in sorted(available_drivers().items()):
        row: dict[str, Any] = {"name": name, "target": info.target, "source": info.source}
        try:
            cls = load_driver_class(name)
            row.update(protocol=cls.protocol, vendor=cls.vendor, version=cls.version, models=list(cls.models))
        except LabbridgeError as exc:
            row["error"] = str(exc)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = f"ERROR: {row['error']}" if "error" in row else f"{row['protocol']} v{row['version']}"
            print(f"{row['name']:<20} {row['source']:<12} {state}")
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from labbridge.driver import load_driver
    from labbridge.replay import ReplayProblem, replay

    try:
        driver = load_driver(args.driver)
        capture = Path(args.file).read_bytes()
        items = list(replay(driver, capture, instrument=args.instrument, timezone=args.timezone,
                            encoding=args.encoding))
    except (LabbridgeError, OSError) as exc:
        print(f"labbridge replay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    failures = 0
    for item in items:
        if isinstance(item, ReplayProblem):
            failures += 1
            if args.json:
                print(json.dumps({"problem": item.kind, "detail": item.detail}))
            else:
                print(f"! {item.kind}: {item.detail}")
            continue
        if item.decoded is None:
            failures += 1
            if args.json:
                print(json.dumps({"message": item.index, "error": item.error}))
            else:
                print(f"message {item.index}: cannot decode: {item.error}")
            continue
        for result in item.decoded.results:
            if args.json:
                print(json.dumps({"message": item.index, **result.to_json()}, ensure_ascii=False))
            else:
                flags = ",".join(result.flags)
                print(f"message {item.index}: {result.kind:<7} {result.sample_id:<14} {result.test_code:<8} "
                      f"{result.value:>10} {result.units:<8} {flags:<4} {result.measured_at or ''}")
        for query in item.decoded.queries:
            if args.json:
                print(json.dumps({"message": item.index, "query": list(query.sample_ids)}))
            else:
                print(f"message {item.index}: host query for {len(query.sample_ids)} sample(s)")
    return EXIT_OK if failures == 0 else EXIT_FAILURE


def _cmd_driver_new(args: argparse.Namespace) -> int:
    from labbridge.scaffold import scaffold

    target = Path(args.dir) if args.dir else Path(f"labbridge-driver-{args.name}")
    try:
        written = scaffold(args.name, target)
    except LabbridgeError as exc:
        print(f"labbridge driver new: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for path in written:
        print(f"created {path}")
    print(f"next: pip install -e {target}; labbridge drivers; then replace the example capture with real ones "
          "and write their golden JSON (see docs/drivers.md)")
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.what == "lis":
        from labbridge_simulators import lis

        lis.main(args.rest)
    elif args.what == "hl7-analyzer":
        from labbridge_simulators import hl7_analyzer

        hl7_analyzer.main(args.rest)
    else:
        from labbridge_simulators import astm_analyzer

        astm_analyzer.main(args.rest)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labbridge", description="Lab instrument middleware.")
    parser.add_argument("--version", action="version", version=f"labbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--ready-file", help="write the bound addresses here as JSON once listening")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("config")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("demo", help="run the demo lab: simulated analyzers, simulated LIS, dashboard")
    p.add_argument("-c", "--config", help="demo config (default: config/demo.toml)")
    p.add_argument("--for", dest="duration", type=float, help="stop after this many seconds and print a summary")
    p.add_argument("--summary-json", help="also write the summary as JSON to this file")
    p.add_argument("--port", type=int, help="dashboard port (default: from the config)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("status", help="show link health from a running daemon")
    p.add_argument("--url", default="http://127.0.0.1:8470")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("drivers", help="list the drivers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_drivers)

    p = sub.add_parser("replay", help="decode a capture offline into canonical results (driver test kit)")
    p.add_argument("--driver", required=True, help="driver name (see `labbridge drivers`)")
    p.add_argument("file", help="capture: an E1381-framed byte stream, or records one per line")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--instrument", default="replay", help="instrument id to put in the results")
    p.add_argument("--timezone", default="UTC", help="the analyzer's time zone")
    p.add_argument("--encoding", default="latin-1", help="the analyzer's character set")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("driver", help="driver development tools")
    driver_sub = p.add_subparsers(dest="driver_command", required=True)
    d = driver_sub.add_parser("new", help="scaffold a new driver as its own plugin project")
    d.add_argument("name", help="driver name, e.g. acme-chem")
    d.add_argument("--dir", help="where to create it (default: ./labbridge-driver-NAME)")
    d.set_defaults(func=_cmd_driver_new)

    p = sub.add_parser("simulate", help="run a simulated analyzer (ASTM or HL7) or LIS")
    p.add_argument("what", choices=["analyzer", "hl7-analyzer", "lis"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # e.g. `labbridge status | head`
        sys.stderr.close()
        return EXIT_OK
    return result


if __name__ == "__main__":
    sys.exit(main())
