"""The ``labbridge`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from labbridge import __version__, aio, logs
from labbridge.errors import ConfigError, LabbridgeError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _cmd_check_config(args: argparse.Namespace) -> int:
    from labbridge.config import load_config, with_link_defaults
    from labbridge.driver import available_drivers, driver_link_defaults

    try:
        config = with_link_defaults(load_config(args.config), driver_link_defaults, args.config)
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
    from labbridge.web.server import surfaces_for

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(config.log.level)

    async def main() -> None:
        stop = asyncio.Event()
        _install_signals(stop)
        await Daemon(config, ready_file=args.ready_file).run(stop, surfaces=surfaces_for(config))

    try:
        aio.run(main(), loop=config.event_loop)
    except ConfigError as exc:  # the loop asked for is not installed
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
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
        summary = aio.run(main())
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    if summary is None:
        return EXIT_OK
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK if summary.lost == 0 and summary.duplicates == 0 else EXIT_FAILURE


def _http_json(method: str, url: str, body: Any = None, *, timeout: float = 10.0) -> tuple[int, Any]:
    """The one HTTP call of the CLI (to the daemon's JSON API): status and decoded body."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    data = json.dumps(body).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 (scheme checked above)
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
            return resp.status, json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", errors="replace")
        try:
            return exc.code, json.loads(text or "{}")
        except ValueError:
            return exc.code, {"error": text or str(exc)}


def _error_text(data: Any, status: int) -> str:
    return str(data.get("error", f"HTTP {status}")) if isinstance(data, dict) else f"HTTP {status}"


def _fetch(url: str) -> Any:
    """GET; an error status is raised as URLError, like an unreachable daemon."""
    status, data = _http_json("GET", url, timeout=5.0)
    if status >= 400:
        raise urllib.error.URLError(f"HTTP {status}: {_error_text(data, status)}")
    return data


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


def _cmd_status(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    try:
        instruments = _fetch(f"{base}/api/instruments")
        outbox = _fetch(f"{base}/api/outbox")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot reach the labbridge daemon at {base}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(instruments, indent=2))
        return EXIT_OK
    print(f"{'INSTRUMENT':<22} {'SITE':<11} {'STATE':<10} {'MSGS':>6}  REASON")
    for i in instruments:
        print(f"{i['id']:<22} {i['site']:<11} {i['state']:<10} {i['messages_received']:>6}  {i['reason']}")
    store = outbox["store"]
    print(f"\nstore {store['path']}: {_mb(store['size_bytes'])} (database {_mb(store['file_bytes'])}, "
          f"WAL {_mb(store['wal_bytes'])}); {store['results']} results, {store['messages']} messages")
    for d in outbox["destinations"]:
        print(f"LIS {d['id']:<18} {d['state']:<8} {d['pending']} pending ({d['backlog_pending']} backlog), "
              f"{d['delivered']} delivered, {d['dead']} dead  {d['reason']}")
    return EXIT_OK


# ---- labbridge outbox and orders: against the running daemon (HTTP) or the store file (daemon stopped) --


class _Offline:
    """The store file opened directly, with the config's drivers for re-decoding (if a config is given)."""

    def __init__(self, store_path: str, config: Any | None) -> None:
        self.store_path = store_path
        self.config = config


def _add_target_arguments(q: argparse.ArgumentParser) -> None:
    """Where ``outbox`` and ``orders`` act: the running daemon, or the store file when it is stopped."""
    where = q.add_mutually_exclusive_group()
    where.add_argument("--url", default="http://127.0.0.1:8470", help="the running daemon's HTTP API (default)")
    where.add_argument("--store", help="the store file, when the daemon is stopped")
    where.add_argument("-c", "--config", help="the daemon's config: its HTTP API if it runs, else its store file "
                                              "(names checked against the config)")
    q.add_argument("--json", action="store_true")


def _target(args: argparse.Namespace) -> str | _Offline:
    """The daemon's base URL, or the store to open directly (with the config, if given by -c)."""
    if args.store:
        return _Offline(args.store, None)
    if args.config:
        from labbridge.config import load_config

        config = load_config(args.config)
        if config.http.enabled:
            host = "127.0.0.1" if config.http.host in ("0.0.0.0", "", "::") else config.http.host  # noqa: S104
            base = f"http://{host}:{config.http.port}"
            try:
                _fetch(f"{base}/api/health")
            except (urllib.error.URLError, OSError, ValueError):
                return _Offline(config.store.path, config)  # the daemon is not running
            return base
        return _Offline(config.store.path, config)
    return str(args.url).rstrip("/")


def _post(url: str, body: dict[str, Any]) -> Any:
    """POST an operator action (re-decoding may take a while); an error status is a LabbridgeError."""
    status, data = _http_json("POST", url, body, timeout=60.0)
    if status >= 400:
        raise LabbridgeError(_error_text(data, status))
    return data


def _run_offline(offline: _Offline, action: Any) -> Any:
    from labbridge.config import with_link_defaults
    from labbridge.driver import AstmDriver, driver_link_defaults, load_driver
    from labbridge.links.intake import InstrumentDecoder
    from labbridge.relay.operations import Operations
    from labbridge.store.db import Store

    if not Path(offline.store_path).is_file():
        raise LabbridgeError(f"no store at {offline.store_path}")
    config = with_link_defaults(offline.config, driver_link_defaults) if offline.config is not None else None

    def decoder_for(instrument: str) -> InstrumentDecoder | None:
        if config is None:
            return None
        for inst in config.instruments:
            if inst.id == instrument:
                try:
                    driver = load_driver(inst.driver)
                except LabbridgeError:
                    return None
                return InstrumentDecoder.from_config(inst, driver) if isinstance(driver, AstmDriver) else None
        return None

    async def main() -> Any:
        async with Store(offline.store_path) as store:
            ops = Operations(store, decoder_for,
                             backlog_after_s=config.backlog.older_than_s if config is not None else None)
            return await action(store, ops)

    return asyncio.run(main())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    from datetime import datetime

    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _actor(args: argparse.Namespace) -> str:
    if args.by:
        return str(args.by)
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _cmd_outbox(args: argparse.Namespace) -> int:
    try:
        return _outbox(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except (LabbridgeError, ValueError) as exc:
        print(f"labbridge outbox {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach the labbridge daemon: {exc} (daemon stopped? use --store PATH or -c CONFIG)",
              file=sys.stderr)
        return EXIT_FAILURE


def _outbox(args: argparse.Namespace) -> int:
    target = _target(args)
    if args.action == "list":
        if isinstance(target, _Offline):
            rows = _run_offline(target, lambda store, _ops: store.outbox_rows(
                state=args.state, limit=args.limit, destination=args.destination))
        else:
            query = urllib.parse.urlencode({k: v for k, v in (("state", args.state), ("limit", args.limit),
                                                               ("destination", args.destination)) if v})
            rows = _fetch(f"{target}/api/outbox/items?{query}")
        if args.json:
            print(json.dumps(rows, indent=2))
            return EXIT_OK
        print(f"{'ID':>7} {'DESTINATION':<14} {'STATE':<9} {'INSTRUMENT':<16} {'CONTROL ID':<20} {'TRIES':>5} "
              f"{'CREATED':<19}  REASON")
        for r in rows:
            state = r["state"] + ("*" if r["backlog"] else "")
            reason = r["last_error"] or ""
            if r["dead_kind"]:
                reason = f"[{r['dead_kind']}] {reason}"
            print(f"{r['id']:>7} {r['destination']:<14} {state:<9} {r['instrument']:<16} {r['control_id']:<20} "
                  f"{r['attempts']:>5} {_when(r['created_at']):<19}  {reason}")
        if any(r["backlog"] for r in rows):
            print("* backlog: results measured long before they reached labbridge (sent paced)")
        return EXIT_OK

    actor = _actor(args)
    if args.action == "retry":
        if bool(args.ids) == bool(args.all_dead):
            raise LabbridgeError("give item IDs or --all-dead")
        ids = None if args.all_dead else list(args.ids)
        if isinstance(target, _Offline):
            items = _run_offline(target, lambda _store, ops: ops.retry(ids, actor=actor, reason=args.reason))
        else:
            body: dict[str, Any] = {"reason": args.reason, "by": actor}
            body.update({"all_dead": True} if ids is None else {"ids": ids})
            items = _post(f"{target}/api/outbox/retry", body)["items"]
        if args.json:
            print(json.dumps(items, indent=2))
        else:
            for item in items:
                extra = item.get("reason_now") or item.get("detail") or ""
                print(f"{item['id']:>7} {item['outcome']}" + (f": {extra}" if extra else ""))
        failed = [i for i in items if i["outcome"] not in ("queued", "redecoded")]
        return EXIT_FAILURE if failed else EXIT_OK

    # purge
    if bool(args.ids) == bool(args.state):
        raise LabbridgeError("give item IDs or --state dead|delivered")
    what = (f"outbox item(s) {', '.join(map(str, args.ids))}" if args.ids else f"every {args.state} outbox item"
            + (f" older than {args.older_than_days:g} days" if args.older_than_days else ""))
    if not args.yes:
        if not sys.stdin.isatty():
            raise LabbridgeError("a purge deletes for good: confirm with --yes when not at a terminal")
        answer = input(f"Delete {what} for good (recorded in the audit trail as {actor})? Type yes: ")
        if answer.strip().lower() != "yes":
            print("nothing purged")
            return EXIT_FAILURE
    older = args.older_than_days * 86400 if args.older_than_days else None
    ids = list(args.ids) if args.ids else None
    if isinstance(target, _Offline):
        done = _run_offline(target, lambda _store, ops: ops.purge(item_ids=ids, state=args.state, older_than_s=older,
                                                                  actor=actor, reason=args.reason))
    else:
        body = {"reason": args.reason, "by": actor, "confirm": True, "state": args.state, "older_than_s": older}
        if ids is not None:
            body["ids"] = ids
        done = _post(f"{target}/api/outbox/purge", body)
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        skipped = ", ".join(map(str, done["skipped"]))
        print(f"purged {done['purged']} item(s)" + (f"; not purged (pending or unknown): {skipped}" if skipped else ""))
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
    elif args.what == "astm-host":
        from labbridge_simulators import astm_host

        astm_host.main(args.rest)
    else:
        from labbridge_simulators import astm_analyzer

        astm_analyzer.main(args.rest)
    return EXIT_OK


def _with_store(path: str, work: Any) -> Any:
    from labbridge.store.db import Store
    from labbridge.store.orders import SqliteOrderSource

    async def main() -> Any:
        async with Store(path) as store:
            return await work(SqliteOrderSource(store))

    return asyncio.run(main())


def _print_orders(orders: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(orders, indent=2))
        return
    print(f"{'ID':>6} {'STATE':<10} {'PRIORITY':<8} {'INSTRUMENT':<22} {'SITE':<11} {'SAMPLE':<16} TESTS")
    for o in orders:
        where = o["instrument"] or "(any)"
        print(f"{o['id']:>6} {o['state']:<10} {o['priority']:<8} {where:<22} {o['site']:<11} "
              f"{o['sample_id']:<16} {','.join(o['test_codes'])}")
        if o.get("note"):
            print(f"{'':>6} refused by {o.get('sent_to') or 'the analyzer'}: {o['note']}")


def _cmd_orders(args: argparse.Namespace) -> int:
    import time

    from labbridge.orders import NewOrder

    logs.configure("warning")  # stdout is the command's answer; only problems go to stderr
    try:
        target = _target(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    kind, where = ("url", target) if isinstance(target, str) else ("store", target.store_path)
    try:
        if args.action == "add":
            order = NewOrder(sample_id=args.sample, test_codes=tuple(args.tests), instrument=args.instrument or "",
                             site=args.site or "", priority=args.priority, patient_id=args.patient or "",
                             source="cli")
            if kind == "url":
                status, data = _http_json("POST", f"{where}/api/orders", {
                    "sample_id": order.sample_id, "test_codes": list(order.test_codes),
                    "instrument": order.instrument, "site": order.site, "priority": order.priority,
                    "patient_id": order.patient_id, "source": "cli"})
                if status != 201:
                    print(f"order refused: {'; '.join(data.get('problems', [data.get('error', status)]))}",
                          file=sys.stderr)
                    return EXIT_FAILURE
            else:
                problems = order.problems()
                config = target.config if isinstance(target, _Offline) else None
                if config is not None:  # -c with the daemon stopped: the names are checked against it
                    from labbridge.orders import complete_order, order_problems

                    problems = order_problems(config, order)
                    order = complete_order(config, order)
                if problems:
                    print(f"order refused: {'; '.join(problems)}", file=sys.stderr)
                    return EXIT_FAILURE
                data = _with_store(where, lambda src: _to_json(src.add_order(order, now=time.time())))
            print(json.dumps(data) if args.json else f"order {data['id']} added ({data['state']})")
            return EXIT_OK
        if args.action == "cancel":
            if kind == "url":
                status, data = _http_json("POST", f"{where}/api/orders/{args.id}/cancel")
                found = status == 200
            else:
                data = _with_store(where, lambda src: _to_json(src.cancel(args.id, now=time.time())))
                found = data is not None
            if not found:
                print(f"no order {args.id}", file=sys.stderr)
                return EXIT_FAILURE
            print(json.dumps(data) if args.json else f"order {data['id']} {data['state']}")
            return EXIT_OK
        filters = {k: v for k, v in (("instrument", args.instrument), ("site", args.site),
                                     ("sample_id", args.sample), ("state", args.state)) if v}
        if kind == "url":
            query = urllib.parse.urlencode({**filters, "limit": args.limit})
            status, data = _http_json("GET", f"{where}/api/orders?{query}")
            if status != 200:
                print(f"cannot list orders: {data}", file=sys.stderr)
                return EXIT_FAILURE
        else:
            data = _with_store(where, lambda src: _list_json(src.list_orders(**filters, limit=args.limit)))
        _print_orders(data, args.json)
        return EXIT_OK
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot reach the labbridge daemon at {where}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except LabbridgeError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


async def _to_json(pending: Any) -> Any:
    order = await pending
    return order.to_json() if order is not None else None


async def _list_json(pending: Any) -> Any:
    return [o.to_json() for o in await pending]


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

    p = sub.add_parser("outbox", help="list, retry or purge outbox items and dead letters")
    actions = p.add_subparsers(dest="action", required=True)

    def target(q: argparse.ArgumentParser) -> None:
        _add_target_arguments(q)
        q.set_defaults(func=_cmd_outbox)

    q = actions.add_parser("list", help="list outbox items, newest first")
    q.add_argument("--state", choices=["pending", "delivered", "dead"])
    q.add_argument("--destination")
    q.add_argument("--limit", type=int, default=200)
    target(q)
    q = actions.add_parser("retry", help="retry dead letters (re-decoding those labbridge held)")
    q.add_argument("ids", nargs="*", type=int, metavar="ID")
    q.add_argument("--all-dead", action="store_true", help="every dead letter")
    q.add_argument("--reason", required=True, help="why (goes to the audit trail)")
    q.add_argument("--by", help="who (default: your OS user name)")
    target(q)
    q = actions.add_parser("purge", help="delete dead or delivered items for good (never pending ones)")
    q.add_argument("ids", nargs="*", type=int, metavar="ID")
    q.add_argument("--state", choices=["dead", "delivered"])
    q.add_argument("--older-than-days", type=float)
    q.add_argument("--reason", required=True, help="why (goes to the audit trail)")
    q.add_argument("--by", help="who (default: your OS user name)")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    target(q)

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

    p = sub.add_parser("orders", help="add, list and cancel orders (the embedded order source)")
    osub = p.add_subparsers(dest="action", required=True)


    q = osub.add_parser("add", help="add an order")
    q.add_argument("--sample", required=True, help="sample (specimen) ID")
    q.add_argument("--test", dest="tests", action="append", required=True,
                   help="LIS test code (repeat for several tests)")
    q.add_argument("--instrument", help="the instrument that runs it (orders for one instrument are pushed)")
    q.add_argument("--site", help="any instrument of this site (answered when an analyzer asks)")
    q.add_argument("--priority", default="routine", choices=["routine", "asap", "stat"])
    q.add_argument("--patient", help="patient ID")
    _add_target_arguments(q)
    q = osub.add_parser("list", help="list orders, newest first")
    q.add_argument("--instrument")
    q.add_argument("--site")
    q.add_argument("--sample")
    q.add_argument("--state", choices=["pending", "sent", "accepted", "cancelled"])
    q.add_argument("--limit", type=int, default=200)
    _add_target_arguments(q)
    q = osub.add_parser("cancel", help="cancel an order")
    q.add_argument("id", type=int)
    _add_target_arguments(q)
    p.set_defaults(func=_cmd_orders)

    p = sub.add_parser("simulate", help="run a simulated analyzer (ASTM or HL7), ASTM host, or LIS")
    p.add_argument("what", choices=["analyzer", "hl7-analyzer", "astm-host", "lis"])
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
