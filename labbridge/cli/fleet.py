"""``labbridge fleet`` (the fleet in the terminal) and ``labbridge fleet serve`` (its dashboard): every node, site
and instrument as an MQTT broker shows them (labbridge.fleet; docs/mqtt.md). Read-only: no store is opened.

Exit codes of ``labbridge fleet``: 0 nothing needs attention, 1 something does (each line printed), 2 the broker
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from labbridge.cli.commands import EXIT_FAILURE, EXIT_OK, _on_signals
from labbridge.config import TlsConfig

Command = Callable[..., argparse.ArgumentParser]
EXIT_UNREACHABLE = 2
PASSWORD_ENV = "LABBRIDGE_MQTT_PASSWORD"  # noqa: S105 (the name of the variable, not a password)


def add_commands(sub: Any, command: Command) -> None:
    """Register ``fleet`` with the parser's ``_command`` helper."""
    p = command(sub, "fleet", "every node, site and instrument as an MQTT broker shows them (read-only)", fleet,
                "fleet --broker mqtt://central.example.org:1883", "fleet --broker mqtt://127.0.0.1:1883 --json",
                "fleet --broker mqtts://central.example.org:8883 --ca ca.crt --username fleet --watch",
                "fleet serve --broker mqtt://127.0.0.1:1883 --port 8471   # the fleet dashboard")
    p.add_argument("action", nargs="?", choices=["serve"], help="serve: the fleet's dashboard over HTTP")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host[:1883] or mqtts://host[:8883]")
    p.add_argument("--username", default="")
    p.add_argument("--password-file", help=f"a file whose first line is the password (or set {PASSWORD_ENV})")
    p.add_argument("--ca", help="CA certificate to verify an mqtts:// broker (default: the system's)")
    p.add_argument("--cert", help="client certificate (mqtts://), with --key")
    p.add_argument("--key")
    p.add_argument("--json", action="store_true", help="the fleet as JSON (schema in docs/mqtt.md)")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                   help="follow the broker and show the fleet again every SECONDS (default 2) until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1", help="serve: the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8471, help="serve: the port (default 8471; 0: any free one)")


def _broker(args: argparse.Namespace) -> Any:
    from labbridge.fleet.broker import Broker

    password = os.environ.get(PASSWORD_ENV, "")
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().strip()
    tls = TlsConfig(ca=args.ca, cert=args.cert, key=args.key)
    return Broker.parse(args.broker, username=args.username, password=password, tls=tls)


def fleet(args: argparse.Namespace) -> int:
    from labbridge.fleet.view import needs_attention

    broker = _broker(args)
    if args.action == "serve":
        return _serve(args, broker)

    def show(data: dict[str, Any]) -> None:
        from labbridge.fleet.render import text

        if args.watch:
            print("\x1b[H\x1b[2J" if sys.stdout.isatty() else "", end="")
        print(json.dumps(data, indent=2) if args.json else text(data, broker=broker.url), flush=True)

    async def once() -> int:
        from labbridge.fleet.watch import BrokerUnreachable, snapshot

        try:
            view = await snapshot(broker)
        except BrokerUnreachable as exc:
            print(f"cannot read the fleet: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        data = view.to_json(time.time())
        show(data)
        return EXIT_FAILURE if needs_attention(data) else EXIT_OK

    async def watch() -> int:
        from labbridge.fleet.view import FleetView
        from labbridge.fleet.watch import follow

        view = FleetView()
        task = asyncio.create_task(follow(broker, view))
        _on_signals(task.cancel)
        try:
            while not task.done():
                await asyncio.sleep(args.watch)
                show(view.to_json(time.time()))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return EXIT_OK

    try:
        return asyncio.run(watch() if args.watch else once())
    except KeyboardInterrupt:
        return EXIT_OK


def _serve(args: argparse.Namespace, broker: Any) -> int:
    from labbridge.fleet.serve import FleetServer

    async def main() -> None:
        server = FleetServer(broker)
        stop = asyncio.Event()
        _on_signals(stop.set)
        host, port = await server.start(args.host, args.port)
        print(f"labbridge fleet: dashboard at http://{host}:{port}/ reading {broker.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return EXIT_OK
