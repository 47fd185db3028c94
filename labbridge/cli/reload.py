"""``labbridge reload``: have the running daemon apply its config file without a restart.

The daemon is asked over its HTTP API (``--url``, the API ``-c CONFIG`` names, or the one its
``--ready-file`` lists), which answers with the reload's report. A daemon running without HTTP is sent
SIGHUP (the pid in its ready file): it reloads the same way and logs the report (``config_reloaded``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from labbridge import logs
from labbridge.cli.commands import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, _actor
from labbridge.errors import LabbridgeError


def reload(args: argparse.Namespace) -> int:
    from labbridge.cli.client import HttpCredentials, HttpOperatorClient, daemon_url

    logs.configure("warning")
    url = args.url
    if args.config:
        from labbridge.config import load_config

        config = load_config(args.config)
        if not config.http.enabled:
            raise LabbridgeError(f"{args.config} has no HTTP API ([http] enabled = false): use --ready-file, or send "
                                 "the daemon SIGHUP")
        url = daemon_url(config.http.host, config.http.port, config.http.tls_cert is not None)
    elif args.ready_file:
        try:
            endpoints = json.loads(Path(args.ready_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LabbridgeError(f"cannot read the ready file {args.ready_file}: {exc} (is the daemon running?)") \
                from None
        http = endpoints.get("http")
        if not isinstance(http, dict):
            pid = int(endpoints["pid"])
            os.kill(pid, signal.SIGHUP)
            print(f"SIGHUP sent to labbridge (pid {pid}): it reloads its config file and logs the outcome "
                  "(event config_reloaded)")
            return EXIT_OK
        url = daemon_url(str(http["host"]), int(http["port"]))

    async def ask() -> dict[str, Any]:
        async with contextlib.aclosing(HttpOperatorClient(url, HttpCredentials.from_args(args))) as daemon:
            return await daemon.reload_config(actor=_actor(args))

    report = asyncio.run(ask())
    print(json.dumps(report, indent=2) if args.json else "\n".join(report_lines(report)))
    outcome = report.get("outcome")
    return EXIT_OK if outcome in ("applied", "unchanged") else EXIT_CONFIG if outcome == "refused" else EXIT_FAILURE


def report_lines(report: dict[str, Any]) -> list[str]:
    """A reload's report for a person: what started, stopped, restarted, was updated, or why it was refused."""
    outcome = report["outcome"]
    where = f" (config {report['config']}, by {report['by']})" if report.get("config") else ""
    if outcome in ("refused", "unavailable"):
        lines = [f"reload {outcome}: nothing changed{where}"]
        lines += [f"  {p['key'] or '(file)'}: {p['problem']}" for p in report["refused"]]
        return lines
    lines = [f"reload {outcome}{where}"]
    for action in ("started", "stopped", "restarted", "updated"):
        for change in report.get(action, []):
            aborted = change.get("aborted", 0)
            cut = f" ({aborted} connection(s) still busy after the drain timeout were aborted: their unfinished " \
                  "transfer is sent again)" if aborted else ""
            lines.append(f"  {action:<10} {change['kind']} {change['id']}: {change['why']}{cut}")
    kept = report.get("unchanged", {})
    lines.append(f"  unchanged  {kept.get('instrument', 0)} instrument(s), {kept.get('lis', 0)} LIS destination(s), "
                 f"{kept.get('lis_orders', 0)} LIS order listener(s): not touched")
    lines += [f"  needs a restart: {n['key']}: {n['why']}" for n in report.get("needs_restart", [])]
    return lines
