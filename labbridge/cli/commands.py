"""One function per ``labbridge`` command: ``args`` in, exit code out. A command raises what it cannot do
(a ``LabbridgeError``, ``ValueError`` or ``OSError``) and :func:`explain` words it for the operator.

The outbox and orders commands are written once, against :class:`~labbridge.cli.client.OperatorClient`;
:func:`operator` opens the client that ``--url``, ``--store`` or ``-c`` picks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labbridge import aio, logs
from labbridge.cli import output
from labbridge.errors import ConfigError, LabbridgeError

if TYPE_CHECKING:  # the client module is imported by the commands that use it (it loads the store and aiohttp)
    from labbridge.cli.client import OperatorClient
    from labbridge.config import Config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def check_config(args: argparse.Namespace) -> int:
    from labbridge.config import in_file_order
    from labbridge.runtime.reload import load_checked  # the checks a reload makes too

    try:
        config = load_checked(args.config)
    except ConfigError as exc:
        path, problems = exc.path, exc.problems
    else:
        path, problems = args.config, []
    if problems:
        print(f"{args.config}: invalid configuration ({len(problems)} problem(s))", file=sys.stderr)
        for key, what in in_file_order(problems):
            print(f"  {path}: {key or '(file)'}: {what}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: OK ({len(config.sites)} sites, {len(config.instruments)} instruments, "
          f"{len(config.lis)} LIS destinations)")
    relying = [i.id for i in config.instruments if i.timezone_from_node]
    origin = "this machine's zone: set `timezone` in the config" if config.timezone_from_machine else "the config"
    print(f"time zone {config.timezone} (from {origin})"
          + (f"; instruments without their own: {', '.join(relying)}" if relying else ""))
    _print_destinations(config)
    return _risky_settings(args.config, config)


def _risky_settings(path: str, config: Config) -> int:
    """List the config's risky settings (:mod:`labbridge.risky`); the severe ones fail the check."""
    from labbridge.risky import risky_settings

    risks = risky_settings(config)
    refused = [r for r in risks if r.severity == "refuse"]
    for risk in risks:
        label = "REFUSED" if risk.severity == "refuse" else "warning"
        print(f"{path}: {label}: {risk.key}: {risk.reason}\n  do: {risk.fix}", file=sys.stderr)
    if refused:
        print(f"{path}: refused: {len(refused)} risky setting(s) must be fixed first", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _print_destinations(config: Config) -> None:
    """Where results go, one line per LIS destination; a password in a URL is shown as *** (labbridge.redact)."""
    from labbridge.config import FileDestination, MllpDestination
    from labbridge.redact import redact

    for dest in config.lis:
        where = (f"{dest.host}:{dest.port}" if isinstance(dest, MllpDestination)
                 else f"{dest.directory} ({dest.format})" if isinstance(dest, FileDestination) else redact(dest.url))
        print(f"LIS {dest.id}: {dest.kind} {where}")


def _on_signals(act: Callable[[], Any]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, act)


def run(args: argparse.Namespace) -> int:
    from labbridge.config import load_config
    from labbridge.runtime.daemon import Daemon
    from labbridge.web import surfaces_for

    config = load_config(args.config)
    logs.configure(config.log.level)

    async def main() -> None:
        stop = asyncio.Event()
        _on_signals(stop.set)
        daemon = Daemon(config, ready_file=args.ready_file, config_path=args.config)
        if hasattr(signal, "SIGHUP"):  # SIGHUP: read the config file again (labbridge reload)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, daemon.reload_soon)
        await daemon.run(stop, surfaces=surfaces_for(config))

    aio.run(main(), loop=config.event_loop)  # a ConfigError if the loop asked for is not installed
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    from labbridge.demo import Summary, default_demo_config, run_demo

    logs.configure(args.log_level)
    config_path = Path(args.config) if args.config else default_demo_config()
    if not config_path.exists():
        print(f"demo config not found at {config_path}; pass -c config/demo.toml", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> Summary | None:
        task = asyncio.create_task(run_demo(config_path=config_path, duration=args.duration,
                                            http_port=args.port, mqtt_url=args.mqtt,
                                            store_dir=Path(args.store_dir) if args.store_dir else None))
        _on_signals(task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            print("demo stopped", flush=True)
            return None

    summary = aio.run(main())
    if summary is None:
        return EXIT_OK
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK if summary.lost == 0 and summary.duplicates == 0 else EXIT_FAILURE


EXIT_UNREACHABLE = 2  # `status`: the daemon did not answer


def status(args: argparse.Namespace) -> int:
    """Link health by site. Exit 0 when every enabled link is up or idle and nothing is dead-lettered, 1 when
    something needs attention (each reason printed), 2 when the daemon cannot be reached."""
    from labbridge.cli.client import DaemonUnreachable, HttpCredentials, HttpOperatorClient, daemon_url
    from labbridge.config import load_config

    if args.config:
        config = load_config(args.config)
        url = daemon_url(config.http.host, config.http.port, config.http.tls_cert is not None)
    else:
        url = args.url
    credentials = HttpCredentials.from_args(args)

    async def fetch() -> dict[str, Any]:
        async with contextlib.aclosing(HttpOperatorClient(url, credentials)) as daemon:
            health = await daemon.read("/api/health")
            return {"sites": await daemon.read("/api/sites"), "instruments": await daemon.read("/api/instruments"),
                    "outbox": await daemon.read("/api/outbox"),
                    "uplinks": health.get("uplinks", []) if isinstance(health, dict) else []}

    async def main() -> int:
        while True:
            try:
                seen = await fetch()
            except DaemonUnreachable as exc:
                print(f"{exc} (is the daemon running? `labbridge run -c CONFIG`)", file=sys.stderr)
                code = EXIT_UNREACHABLE
            else:
                seen["attention"] = output.needs_attention(seen["instruments"], seen["outbox"], seen["uplinks"])
                if args.watch:
                    print("\x1b[H\x1b[2J" if sys.stdout.isatty() else "", end="")
                output.show(args.json, seen, output.status_by_site)
                code = EXIT_FAILURE if seen["attention"] else EXIT_OK
            if not args.watch:
                return code
            sys.stdout.flush()
            await asyncio.sleep(args.watch)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return EXIT_OK


def explain(args: argparse.Namespace, exc: Exception) -> str:
    """What went wrong, for the operator: the command and the error, with a hint where one helps."""
    from labbridge.cli.client import DaemonUnreachable, OrderRefused

    if isinstance(exc, DaemonUnreachable):
        return f"{exc} (daemon stopped? use --store PATH or -c CONFIG)" if "store" in args else str(exc)
    if isinstance(exc, OrderRefused):
        return f"order refused: {exc}"
    command = " ".join(str(getattr(args, k)) for k in ("command", "action", "driver_command") if k in args)
    return f"labbridge {command}: {exc}"


def operator(action: Callable[[OperatorClient, argparse.Namespace], Awaitable[int]],
             ) -> Callable[[argparse.Namespace], int]:
    """A command acting through the client that ``--url``, ``--store`` or ``-c`` picks."""

    def command(args: argparse.Namespace) -> int:
        from labbridge.cli.client import HttpCredentials, open_client

        logs.configure("warning")  # stdout is the command's answer; only problems go to stderr

        async def main() -> int:
            async with open_client(url=args.url, store=args.store, config_path=args.config,
                                   credentials=HttpCredentials.from_args(args)) as client:
                return await action(client, args)

        return asyncio.run(main())

    return command


def _actor(args: argparse.Namespace) -> str:
    import getpass

    try:
        return str(args.by or getpass.getuser())
    except (KeyError, OSError):
        return "unknown"


@operator
async def outbox_list(client: OperatorClient, args: argparse.Namespace) -> int:
    rows = await client.outbox_items(state=args.state, destination=args.destination, limit=args.limit)
    output.show(args.json, rows, output.outbox_table)
    return EXIT_OK


@operator
async def outbox_retry(client: OperatorClient, args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all_dead):
        raise LabbridgeError("give item IDs or --all-dead")
    items = await client.retry(None if args.all_dead else args.ids, actor=_actor(args), reason=args.reason)
    output.show(args.json, items, output.retry_lines)
    return EXIT_FAILURE if any(i["outcome"] not in ("queued", "redecoded") for i in items) else EXIT_OK


@operator
async def outbox_purge(client: OperatorClient, args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.state):
        raise LabbridgeError("give item IDs or --state dead|delivered")
    actor = _actor(args)
    what = (f"outbox item(s) {', '.join(map(str, args.ids))}" if args.ids else f"every {args.state} outbox item"
            + (f" older than {args.older_than_days:g} days" if args.older_than_days else ""))
    if not args.yes:
        if not sys.stdin.isatty():
            raise LabbridgeError("a purge deletes for good: confirm with --yes when not at a terminal")
        answer = await asyncio.to_thread(input, f"Delete {what} for good (recorded in the audit trail as {actor})? "
                                                "Type yes: ")
        if answer.strip().lower() != "yes":
            print("nothing purged")
            return EXIT_FAILURE
    done = await client.purge(args.ids or None, state=args.state, actor=actor, reason=args.reason,
                              older_than_s=args.older_than_days * 86400 if args.older_than_days else None)
    output.show(args.json, done, output.purged)
    return EXIT_OK


@operator
async def orders_add(client: OperatorClient, args: argparse.Namespace) -> int:
    from labbridge.orders import NewOrder

    order = await client.add_order(NewOrder(
        sample_id=args.sample, test_codes=tuple(args.tests), instrument=args.instrument or "", site=args.site or "",
        priority=args.priority, patient_id=args.patient or "", source="cli"))
    print(json.dumps(order) if args.json else f"order {order['id']} added ({order['state']})")
    return EXIT_OK


@operator
async def orders_list(client: OperatorClient, args: argparse.Namespace) -> int:
    orders = await client.list_orders(instrument=args.instrument, site=args.site, sample_id=args.sample,
                                      state=args.state, limit=args.limit)
    output.show(args.json, orders, output.orders_table)
    return EXIT_OK


@operator
async def orders_cancel(client: OperatorClient, args: argparse.Namespace) -> int:
    order = await client.cancel_order(args.id)
    if order is None:
        print(f"no order {args.id}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(order) if args.json else f"order {order['id']} {order['state']}")
    return EXIT_OK


def drivers(args: argparse.Namespace) -> int:
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
    output.show(args.json, rows, output.drivers_table)
    return EXIT_OK


def replay(args: argparse.Namespace) -> int:
    from labbridge.cli.replay import run  # issue 20, parts 4-5: captures as they come from the field, --render

    return run(args)


def driver_new(args: argparse.Namespace) -> int:
    from labbridge.scaffold import scaffold

    target = Path(args.dir) if args.dir else Path(f"labbridge-driver-{args.name}")
    for path in scaffold(args.name, target):
        print(f"created {path}")
    print(f"next: pip install -e {target}; labbridge drivers; then replace the example capture with real ones "
          "and write their golden JSON (see docs/drivers.md)")
    return EXIT_OK


SIMULATORS = {"analyzer": "astm_analyzer", "hl7-analyzer": "hl7_analyzer", "astm-host": "astm_host", "lis": "lis"}


def simulate(args: argparse.Namespace) -> int:
    importlib.import_module(f"labbridge_simulators.{SIMULATORS[args.what]}").main(args.rest)
    return EXIT_OK
