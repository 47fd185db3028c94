"""The ``labbridge`` command line: every subcommand, its options, and examples in its help."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from labbridge import BUILD, __version__
from labbridge.cli import bundle, campaign, commands, fleet, security
from labbridge.cli import reload as reload_command
from labbridge.cli.security import http_credentials

DEFAULT_URL = "http://127.0.0.1:8470"


def _command(sub: Any, name: str, help_text: str, func: Callable[[argparse.Namespace], int] | None,
             *examples: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
        epilog="examples:\n" + "\n".join(f"  labbridge {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def _target(q: argparse.ArgumentParser) -> None:
    """Where ``outbox`` and ``orders`` act: the running daemon, or its store file when it is stopped."""
    where = q.add_mutually_exclusive_group()
    where.add_argument("--url", default=DEFAULT_URL, help="the running daemon's HTTP API (default)")
    where.add_argument("--store", help="the store file, when the daemon is stopped")
    where.add_argument("-c", "--config", help="the daemon's config: its HTTP API if it runs, else its store file "
                                              "(names checked against the config)")
    q.add_argument("--json", action="store_true")
    http_credentials(q)


def _audited(q: argparse.ArgumentParser) -> None:
    """An action on outbox items, recorded in the audit trail."""
    q.add_argument("ids", nargs="*", type=int, metavar="ID")
    q.add_argument("--reason", required=True, help="why (goes to the audit trail)")
    q.add_argument("--by", help="who, for a daemon without authentication (audited as unverified:NAME; default: "
                                "your OS user name); with a token, or on the store file, the trail names its owner")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labbridge", description="Lab instrument middleware.")
    parser.add_argument("--version", action="version",
                        version=f"labbridge {__version__} (protocol cores: {BUILD.describe()})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "run", "run the daemon", commands.run,
                 "run -c /etc/labbridge/labbridge.toml", "run -c labbridge.toml --ready-file /run/labbridge/ready.json")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--ready-file", help="write the bound addresses here as JSON once listening")

    p = _command(sub, "check-config", "validate a configuration file", commands.check_config,
                 "check-config /etc/labbridge/labbridge.toml")
    p.add_argument("config")

    p = _command(sub, "demo", "run the demo lab: simulated analyzers, simulated LIS, dashboard", commands.demo,
                 "demo                    # until Ctrl-C", "demo --for 60 --summary-json summary.json",
                 "demo --for 60 --store-dir /tmp/demo-store   # keep the store to look at afterwards",
                 "demo --mqtt mqtt://127.0.0.1:1883   # and: labbridge fleet --broker mqtt://127.0.0.1:1883")
    p.add_argument("-c", "--config", help="demo config (default: the one inside the package, labbridge/demo.toml)")
    p.add_argument("--for", dest="duration", type=float, help="stop after this many seconds and print a summary")
    p.add_argument("--summary-json", help="also write the summary as JSON to this file")
    p.add_argument("--port", type=int, help="dashboard port (default: from the config)")
    p.add_argument("--store-dir", help="keep the store in this folder (default: a temporary one, removed at the end)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument("--mqtt", metavar="URL", help="also publish the demo lab's health to this broker "  # [mqtt]
                                                 "(mqtt://127.0.0.1:1883): try `labbridge fleet` on it")

    p = _command(sub, "reload", "apply the config file to the running daemon without a restart", reload_command.reload,
                 "reload                  # the daemon at " + DEFAULT_URL, "reload -c /etc/labbridge/labbridge.toml",
                 "reload --ready-file /run/labbridge/ready.json   # its API, or SIGHUP without one")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default=DEFAULT_URL, help="the running daemon's HTTP API (default)")
    where.add_argument("-c", "--config", help="the daemon's config: its HTTP API")
    where.add_argument("--ready-file", help="the daemon's ready file: its HTTP API, else SIGHUP to its pid")
    p.add_argument("--by", help="who asks (for the log; default: your OS user name)")
    p.add_argument("--json", action="store_true")
    http_credentials(p)

    p = _command(sub, "status", "show link health by site from a running daemon (exit 0: all up or idle and no "
                                "dead letter; 1: something needs attention; 2: the daemon cannot be reached)",
                 commands.status, "status", "status -c /etc/labbridge/labbridge.toml --watch 5",
                 "status --url http://127.0.0.1:8470 --json")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default=DEFAULT_URL, help="the daemon's HTTP API (default)")
    where.add_argument("-c", "--config", help="the daemon's config: its HTTP API's address")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    http_credentials(p)

    p = _command(sub, "outbox", "list, retry or purge outbox items and dead letters", None,
                 "outbox list --state dead", "outbox retry --all-dead -c labbridge.toml --reason 'UREA mapped'")
    actions = p.add_subparsers(dest="action", required=True)
    q = _command(actions, "list", "list outbox items, newest first", commands.outbox_list,
                 "outbox list --state dead --destination lis", "outbox list --store labbridge.db --json")
    q.add_argument("--state", choices=["pending", "delivered", "dead", "held", "discarded"])
    q.add_argument("--destination")
    q.add_argument("--limit", type=int, default=200)
    _target(q)
    q = _command(actions, "retry", "retry dead letters (re-decoding those labbridge held)", commands.outbox_retry,
                 "outbox retry 812 813 --reason 'LIS test table fixed'",
                 "outbox retry --all-dead -c labbridge.toml --reason 'UREA mapped' --by anna")
    q.add_argument("--all-dead", action="store_true", help="every dead letter")
    _audited(q)
    _target(q)
    q = _command(actions, "purge", "delete dead or delivered items for good (never pending ones)",
                 commands.outbox_purge, "outbox purge 812 --reason 'sent to the LIS by hand'",
                 "outbox purge --state delivered --older-than-days 30 --reason tidy --yes")
    q.add_argument("--state", choices=["dead", "delivered"])
    q.add_argument("--older-than-days", type=float)
    _audited(q)
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    _target(q)

    p = _command(sub, "drivers", "list the drivers", commands.drivers, "drivers", "drivers --json")
    p.add_argument("--json", action="store_true")

    p = _command(sub, "replay", "decode a capture offline into canonical results (driver test kit)", commands.replay,
                 "replay --driver astm-generic captures/run1.astm",
                 "replay --driver hl7-generic --timezone Europe/Brussels --json captures/oru.hl7",
                 "replay --strict --driver astm-generic trace.log",
                 "replay -c labbridge.toml --instrument arlon-chem-1 --render oru --destination lis trace.log")
    p.add_argument("--driver", help="driver name (see `labbridge drivers`); with -c, the instrument's")
    p.add_argument("file", help="capture as it comes from the field: bytes, log lines, control tokens, hex dump "
                                "(docs/drivers.md, replay)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--instrument", default="replay",
                   help="instrument id to put in the results; with -c, the instrument whose settings apply")
    p.add_argument("--timezone", default="UTC", help="the analyzer's time zone (with -c: the instrument's)")
    p.add_argument("--encoding", default="latin-1", help="the analyzer's character set (with -c: the instrument's)")
    # ---- issue 20, part 4: conformance check, the instrument's config, what a LIS destination receives ----
    p.add_argument("--strict", action="store_true",
                   help="repair nothing and fail on any deviation (a conformance check of the capture)")
    p.add_argument("-c", "--config", help="the config whose instrument (--instrument) and destinations apply")
    p.add_argument("--render", choices=["oru", "oul", "astm", "json"],  # labbridge.replay.RENDER_FORMATS
                   help="print what the destination (--destination, with -c) would receive, in its format")
    p.add_argument("--destination", help="the LIS destination id (with --render)")

    p = _command(sub, "driver", "driver development tools", None, "driver new acme-chem")
    driver_sub = p.add_subparsers(dest="driver_command", required=True)
    d = _command(driver_sub, "new", "scaffold a new driver as its own plugin project", commands.driver_new,
                 "driver new acme-chem", "driver new acme-chem --dir ~/src/labbridge-driver-acme-chem")
    d.add_argument("name", help="driver name, e.g. acme-chem")
    d.add_argument("--dir", help="where to create it (default: ./labbridge-driver-NAME)")

    p = _command(sub, "orders", "add, list and cancel orders (the embedded order source)", None,
                 "orders add --instrument arlon-chem-1 --sample S1 --test GLUC", "orders list -c labbridge.toml")
    osub = p.add_subparsers(dest="action", required=True)
    q = _command(osub, "add", "add an order", commands.orders_add,
                 "orders add --instrument arlon-chem-1 --sample S1 --test GLUC --test K --priority stat",
                 "orders add --site arlon --sample S2 --test GLUC --store /var/lib/labbridge/labbridge.db --json")
    q.add_argument("--sample", required=True, help="sample (specimen) ID")
    q.add_argument("--test", dest="tests", action="append", required=True,
                   help="LIS test code (repeat for several tests)")
    q.add_argument("--instrument", help="the instrument that runs it (orders for one instrument are pushed)")
    q.add_argument("--site", help="any instrument of this site (answered when an analyzer asks)")
    q.add_argument("--priority", default="routine", choices=["routine", "asap", "stat"])
    q.add_argument("--patient", help="patient ID")
    _target(q)
    q = _command(osub, "list", "list orders, newest first", commands.orders_list,
                 "orders list --instrument arlon-chem-1 --state sent", "orders list --sample S1 --json")
    for name in ("--instrument", "--site", "--sample"):
        q.add_argument(name)
    q.add_argument("--state", choices=["pending", "sent", "accepted", "cancelled"])
    q.add_argument("--limit", type=int, default=200)
    _target(q)
    q = _command(osub, "cancel", "cancel an order", commands.orders_cancel,
                 "orders cancel 42", "orders cancel 42 -c /etc/labbridge/labbridge.toml")
    q.add_argument("id", type=int)
    _target(q)

    campaign.add_commands(sub, _command, _target)
    security.add_commands(sub, _command)  # users, tokens, audit (docs/security.md)

    # ---- [mqtt]: the fleet view (labbridge.cli.fleet; docs/mqtt.md) ----
    fleet.add_commands(sub, _command)
    # ---- end [mqtt] ----
    bundle.add_commands(sub, _command)  # signed bundles between zones (issue 18)

    p = _command(sub, "simulate", "run a simulated analyzer (ASTM or HL7), ASTM host, or LIS", commands.simulate,
                 "simulate lis --port 2575", "simulate analyzer --help")
    p.add_argument("what", choices=list(commands.SIMULATORS))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser
