"""The ``labbridge campaign`` and ``labbridge validate`` commands: where each analyzer stands in the
reconnection, the validation gate's reference values and comparison, the sign-off and rollback, the report.
Each acts through the :class:`~labbridge.cli.client.OperatorClient` that ``--url``, ``--store`` or ``-c``
picks (the running daemon, or a stopped one's store with its config)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labbridge.campaign.report import FORMATS, render_html, render_markdown
from labbridge.campaign.stages import STAGES
from labbridge.cli import output
from labbridge.cli.commands import EXIT_FAILURE, EXIT_OK, _actor, operator
from labbridge.errors import LabbridgeError
from labbridge.store.files import private_file

if TYPE_CHECKING:
    from labbridge.cli.client import OperatorClient

Json = dict[str, Any]
Command = Callable[..., argparse.ArgumentParser]


def add_commands(sub: Any, command: Command, target: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``campaign`` and ``validate`` with the parser's helpers (``_command``, ``_target``)."""
    p = command(sub, "campaign", "the reconnection campaign: stages, sign-off, rollback, report", None,
                "campaign status --site arlon", "campaign report --format html -o arlon.html --site arlon")
    actions = p.add_subparsers(dest="action", required=True)
    q = command(actions, "status", "each instrument's stage, link state and results held/delivered, per site",
                campaign_status, "campaign status", "campaign status --site arlon --json")
    q.add_argument("--site")
    target(q)
    q = command(actions, "set", "set an instrument's stage (recorded with who and why)", campaign_set,
                "campaign set arlon-chem-1 cabled --by anna --reason 'serial cable to port 3'",
                "campaign set arlon-chem-1 validating --by anna --reason 'reference run 12 samples'")
    q.add_argument("instrument")
    q.add_argument("stage", choices=list(STAGES))
    _who_why(q, reason_required=True)
    target(q)
    q = command(actions, "sign-off", "validated: the instrument goes live; its held results are released or "
                "discarded", campaign_sign_off,
                "campaign sign-off arlon-chem-1 --by anna --release",
                "campaign sign-off arlon-chem-1 --by anna --discard --override --reason 'K bias accepted by Dr X'")
    q.add_argument("instrument")
    held = q.add_mutually_exclusive_group(required=True)
    held.add_argument("--release", action="store_true", help="send the held results to the LIS, in order, once")
    held.add_argument("--discard", action="store_true", help="never send the held results (they are kept)")
    q.add_argument("--override", action="store_true",
                   help="sign off although results are outside tolerance or missing (needs --reason)")
    _who_why(q, reason_required=False)
    target(q)
    q = command(actions, "rollback", "take an instrument out of service: its results are held again",
                campaign_rollback, "campaign rollback arlon-chem-1 --by anna --reason 'calibration drift on K'")
    q.add_argument("instrument")
    _who_why(q, reason_required=True)
    target(q)
    q = command(actions, "report", "the campaign report per site or for the group (Markdown, HTML or JSON)",
                campaign_report, "campaign report --format md", "campaign report --site virton --format html -o v.html")
    q.add_argument("--site")
    q.add_argument("--format", choices=list(FORMATS), default="md")
    q.add_argument("-o", "--output", help="write the report to this file (default: standard output)")
    target(q)
    q = command(actions, "history", "the stage changes, newest first", campaign_history,
                "campaign history arlon-chem-1")
    q.add_argument("instrument", nargs="?")
    target(q)

    p = command(sub, "validate", "reference values for the validation gate, compared side by side", None,
                "validate import arlon-chem-1 refs.csv --by anna", "validate compare arlon-chem-1")
    actions = p.add_subparsers(dest="action", required=True)
    q = command(actions, "import", "import reference values (CSV: sample, test, expected, tolerance) for an "
                "instrument, replacing its previous ones", validate_import,
                "validate import arlon-chem-1 refs.csv --by anna")
    q.add_argument("instrument")
    q.add_argument("file", help="CSV with a header: sample, test, expected, tolerance (unit, note optional)")
    _who_why(q, reason_required=False)
    target(q)
    q = command(actions, "compare", "the references beside the instrument's results: within or outside "
                "tolerance, or missing (exit 1 unless all within)", validate_compare,
                "validate compare arlon-chem-1", "validate compare arlon-chem-1 --json")
    q.add_argument("instrument")
    target(q)


def _who_why(q: argparse.ArgumentParser, *, reason_required: bool) -> None:
    q.add_argument("--by", help="who, for a daemon without authentication (audited as unverified:NAME; default: "
                                "your OS user name); with a token, or on the store file, the trail names its owner")
    q.add_argument("--reason", required=reason_required, default="", help="why (goes to the audit trail)")


# ---- what they print ---------------------------------------------------------------------------


def status_table(status: Json) -> None:
    for site in status["sites"]:
        prog = site["progress"]
        print(f"{site['name']} ({site['id']}): {prog['live']}/{prog['instruments']} live, {prog['validating']} "
              f"validating, {prog['blocked']} blocked; {prog['held']} results held")
        print(f"  {'INSTRUMENT':<22} {'STAGE':<17} {'LINK':<10} {'HELD':>6} {'DELIVERED':>9}  SINCE / BLOCKED")
        for r in site["instruments"]:
            since = r["live_since"] if r["stage"] == "live" else r["stage_since"]
            print(f"  {r['id']:<22} {r['stage']:<17} {r['state'] or '-':<10} {r['held']:>6} {r['delivered']:>9}  "
                  f"{r['blocked'] or since or ''}")


def change_line(done: Json) -> None:
    line = f"{done['instrument']}: {done.get('from')} -> {done['stage']}"
    if "held" in done:
        line += f"; {done['items']} held item(s) {done['held']}" + (" (override)" if done.get("override") else "")
    if "held_again" in done:
        line += f"; {done['held_again']} unsent item(s) held again"
    print(line)


def compare_table(compared: Json) -> None:
    print(f"{'SAMPLE':<16} {'TEST':<10} {'EXPECTED':>10} {'TOL':>6} {'VALUE':>10} {'DIFF':>8}  VERDICT")
    for r in compared["rows"]:
        diff = "" if r["difference"] is None else f"{r['difference']:+.3g}"
        print(f"{r['sample']:<16} {r['test']:<10} {r['expected']:>10} {r['tolerance'] or '0':>6} "
              f"{r['value'] if r['value'] is not None else '-':>10} {diff:>8}  {r['verdict']}")
    print(f"{compared['within']} within, {compared['outside']} outside, {compared['missing']} missing of "
          f"{compared['references']} reference(s): " + ("ready for sign-off" if compared["ok"] else "not ready"))


# ---- the commands --------------------------------------------------------------------------------


@operator
async def campaign_status(client: OperatorClient, args: argparse.Namespace) -> int:
    output.show(args.json, await client.campaign_status(site=args.site), status_table)
    return EXIT_OK


@operator
async def campaign_set(client: OperatorClient, args: argparse.Namespace) -> int:
    done = await client.campaign_set(args.instrument, args.stage, actor=_actor(args), reason=args.reason)
    output.show(args.json, done, change_line)
    return EXIT_OK


@operator
async def campaign_sign_off(client: OperatorClient, args: argparse.Namespace) -> int:
    if args.override and not args.reason.strip():
        raise LabbridgeError("--override needs --reason (it goes to the audit trail)")
    done = await client.campaign_sign_off(args.instrument, release=args.release, override=args.override,
                                          actor=_actor(args), reason=args.reason)
    output.show(args.json, done, change_line)
    return EXIT_OK


@operator
async def campaign_rollback(client: OperatorClient, args: argparse.Namespace) -> int:
    done = await client.campaign_rollback(args.instrument, actor=_actor(args), reason=args.reason)
    output.show(args.json, done, change_line)
    return EXIT_OK


@operator
async def campaign_report(client: OperatorClient, args: argparse.Namespace) -> int:
    import json

    report = await client.campaign_report(site=args.site)
    text = {"md": render_markdown, "html": render_html}.get(args.format, lambda r: json.dumps(r, indent=2))(report)
    if args.output:
        await asyncio.to_thread(private_file, args.output, text + "\n")  # it may name samples: owner only
    else:
        sys.stdout.write(text + "\n")
    return EXIT_OK


@operator
async def campaign_history(client: OperatorClient, args: argparse.Namespace) -> int:
    rows = await client.campaign_history(instrument=args.instrument)

    def table(rows: list[Json]) -> None:
        for h in rows:
            print(f"{h['at']}  {h['instrument']:<22} {h['from'] or '-':>16} -> {h['stage']:<17} {h['by']}: "
                  f"{h['reason']}")

    output.show(args.json, rows, table)
    return EXIT_OK


@operator
async def validate_import(client: OperatorClient, args: argparse.Namespace) -> int:
    from labbridge.campaign.validation import parse_references

    refs, problems = parse_references(await asyncio.to_thread(Path(args.file).read_text, encoding="utf-8-sig"))
    if problems:
        raise LabbridgeError(f"{args.file}: " + "; ".join(problems))
    done = await client.validate_import(args.instrument, refs, actor=_actor(args), reason=args.reason)
    output.show(args.json, done, lambda d: print(f"{d['instrument']}: {d['references']} reference value(s) imported"))
    return EXIT_OK


@operator
async def validate_compare(client: OperatorClient, args: argparse.Namespace) -> int:
    compared = await client.validate_compare(args.instrument)
    output.show(args.json, compared, compare_table)
    return EXIT_OK if compared["ok"] else EXIT_FAILURE
