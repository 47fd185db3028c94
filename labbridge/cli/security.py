"""The ``labbridge users``, ``tokens`` and ``audit`` commands (docs/security.md).

Users and tokens are kept in the store file: these commands act on it directly (``--store PATH`` or the
daemon's ``-c CONFIG``), running or not, as the OS account that may write it; each change is audited as
``local:<unix user>``. ``audit verify`` and ``audit export`` read the file (read-only) or ask a running
daemon (``--url``, with a token).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import getpass
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labbridge.cli.commands import EXIT_FAILURE, EXIT_OK
from labbridge.errors import LabbridgeError

Command = Callable[..., argparse.ArgumentParser]
EXPORT_COLUMNS = ("id", "at", "actor", "action", "target", "reason", "detail", "prev_hash", "hash")


def http_credentials(q: argparse.ArgumentParser) -> None:
    """``--token``, ``--token-file``, ``--ca-file`` for a command that may call a daemon's API."""
    q.add_argument("--token", help="API token for a daemon that requires one (better: env LABBRIDGE_TOKEN or "
                                   "--token-file, out of the process list)")
    q.add_argument("--token-file", help="read the API token from this file (env LABBRIDGE_TOKEN_FILE)")
    q.add_argument("--ca-file", help="CA certificate(s) that signed the daemon's TLS certificate, for https:// "
                                     "(env LABBRIDGE_CA_FILE)")


def _store_target(q: argparse.ArgumentParser) -> None:
    where = q.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="the store file")
    where.add_argument("-c", "--config", help="the daemon's config: its store file")


def add_commands(sub: Any, command: Command) -> None:
    """Register ``users``, ``tokens`` and ``audit`` with the parser's ``_command`` helper."""
    roles = ["viewer", "technician", "admin"]
    p = command(sub, "users", "people who may log in to the dashboard and API (kept in the store)", None,
                "users add anna --role technician -c /etc/labbridge/labbridge.toml", "users list --store lab.db")
    actions = p.add_subparsers(dest="action", required=True)
    q = command(actions, "add", "add a user (the password is asked for, or read from stdin)", users_add,
                "users add anna --role technician -c labbridge.toml",
                "users add ops --role admin --password-stdin --store lab.db < secret.txt")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=roles)
    q.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    _store_target(q)
    q = command(actions, "passwd", "set a user's password", users_passwd, "users passwd anna -c labbridge.toml")
    q.add_argument("name")
    q.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    _store_target(q)
    q = command(actions, "remove", "remove a user (their sessions end at their next request)", users_remove,
                "users remove anna -c labbridge.toml")
    q.add_argument("name")
    _store_target(q)
    q = command(actions, "list", "list the users and their roles", users_list, "users list -c labbridge.toml")
    q.add_argument("--json", action="store_true")
    _store_target(q)

    p = command(sub, "tokens", "API tokens for scripts and remote CLIs (only a hash is kept)", None,
                "tokens create prometheus --role viewer -c labbridge.toml", "tokens revoke prometheus --store lab.db")
    actions = p.add_subparsers(dest="action", required=True)
    q = command(actions, "create", "create a token: printed once, never shown again", tokens_create,
                "tokens create lis-export --role viewer -c labbridge.toml > lis-export.token")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=roles)
    _store_target(q)
    q = command(actions, "revoke", "revoke a token (refused from its next request)", tokens_revoke,
                "tokens revoke lis-export -c labbridge.toml")
    q.add_argument("name")
    _store_target(q)
    q = command(actions, "list", "list the tokens (names, roles, when revoked)", tokens_list,
                "tokens list -c labbridge.toml")
    q.add_argument("--json", action="store_true")
    _store_target(q)

    p = command(sub, "audit", "the tamper-evident audit trail: verify its hash chain, export it", None,
                "audit verify -c labbridge.toml", "audit export --format csv --store lab.db -o audit.csv")
    actions = p.add_subparsers(dest="action", required=True)
    q = command(actions, "verify", "check every entry's hash chain; names the first broken entry (exit 1)",
                audit_verify, "audit verify --store /var/lib/labbridge/labbridge.db",
                "audit verify --url https://lab-arlon:8470 --token-file ro.token --head 212:9f2c...")
    q.add_argument("--head", help="ID:HASH printed by an earlier verify: that entry must still be in the trail")
    q.add_argument("--json", action="store_true")
    _audit_target(q)
    q = command(actions, "export", "every entry with its hashes, oldest first, for an inspector", audit_export,
                "audit export -c labbridge.toml > audit.jsonl", "audit export --format csv -o audit.csv --store lab.db")
    q.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    q.add_argument("-o", "--output", help="write to this file (default: stdout)")
    _audit_target(q)


def _audit_target(q: argparse.ArgumentParser) -> None:
    where = q.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="the store file (read only)")
    where.add_argument("-c", "--config", help="the daemon's config: its store file")
    where.add_argument("--url", help="a running daemon's API")
    http_credentials(q)


def _store_path(args: argparse.Namespace) -> str:
    if args.store:
        return str(args.store)
    from labbridge.config import load_config

    return load_config(args.config).store.path


async def _write(args: argparse.Namespace, fn: Callable[..., Any], *fn_args: Any, **kwargs: Any) -> Any:
    from labbridge.cli.local import local_actor
    from labbridge.store.db import Store

    async with Store(_store_path(args)) as store:
        return await store.write(fn, *fn_args, actor=local_actor(), now=time.time(), **kwargs)


def _read_store(args: argparse.Namespace, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """``fn`` on a read-only connection to the store file (nothing migrated or written)."""
    path = Path(_store_path(args))
    if not path.is_file():
        raise LabbridgeError(f"no store at {path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return fn(conn)
    except sqlite3.OperationalError as exc:
        raise LabbridgeError(f"{path}: {exc} (a store from before users and the audit chain: start labbridge "
                             "once to bring it up to date)") from None
    finally:
        conn.close()


def _password(args: argparse.Namespace) -> str:
    from labbridge.store.users import password_problem

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise LabbridgeError("the two passwords differ")
    problem = password_problem(password)
    if problem:
        raise LabbridgeError(f"password refused: {problem}")
    return password


def _checked_name(name: str) -> str:
    from labbridge.store.users import name_problem

    problem = name_problem(name)
    if problem:
        raise LabbridgeError(problem)
    return name


def users_add(args: argparse.Namespace) -> int:
    from labbridge.store import users

    name = _checked_name(args.name)
    hashed = users.hash_password(_password(args))
    asyncio.run(_write(args, users.add_user, name, args.role, hashed))
    print(f"user {name} added ({args.role})")
    return EXIT_OK


def users_passwd(args: argparse.Namespace) -> int:
    from labbridge.store import users

    hashed = users.hash_password(_password(args))
    asyncio.run(_write(args, users.set_password, args.name, hashed))
    print(f"password of {args.name} changed")
    return EXIT_OK


def users_remove(args: argparse.Namespace) -> int:
    from labbridge.store import users

    asyncio.run(_write(args, users.remove_user, args.name))
    print(f"user {args.name} removed")
    return EXIT_OK


def users_list(args: argparse.Namespace) -> int:
    from labbridge.store import users

    rows = _read_store(args, users.list_users)
    if args.json:
        print(json.dumps(rows))
    for row in rows if not args.json else ():
        print(f"{row['name']:<24} {row['role']:<11} changed {_when(row['changed_at'])}")
    return EXIT_OK


def tokens_create(args: argparse.Namespace) -> int:
    from labbridge.store import users

    name = _checked_name(args.name)
    token = users.new_token()
    asyncio.run(_write(args, users.add_token, name, args.role, users.token_hash(token)))
    print(token)
    print(f"token {name} ({args.role}) created: the line above is shown once; keep it in a file only its user can "
          "read (labbridge --token-file, or env LABBRIDGE_TOKEN)", file=sys.stderr)
    return EXIT_OK


def tokens_revoke(args: argparse.Namespace) -> int:
    from labbridge.store import users

    asyncio.run(_write(args, users.revoke_token, args.name))
    print(f"token {args.name} revoked")
    return EXIT_OK


def tokens_list(args: argparse.Namespace) -> int:
    from labbridge.store import users

    rows = _read_store(args, users.list_tokens)
    if args.json:
        print(json.dumps(rows))
    for row in rows if not args.json else ():
        state = f"revoked {_when(row['revoked_at'])}" if row["revoked_at"] else "in use"
        print(f"{row['name']:<24} {row['role']:<11} created {_when(row['created_at'])}  {state}")
    return EXIT_OK


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


async def _from_daemon(args: argparse.Namespace, path: str) -> Any:
    from labbridge.cli.client import HttpCredentials, HttpOperatorClient

    async with contextlib.aclosing(HttpOperatorClient(args.url, HttpCredentials.from_args(args))) as daemon:
        return await daemon.read(path)


def audit_verify(args: argparse.Namespace) -> int:
    if args.url:
        from urllib.parse import urlencode

        query = f"?{urlencode({'head': args.head})}" if args.head else ""
        verdict = asyncio.run(_from_daemon(args, f"/api/audit/verify{query}"))
    else:
        from labbridge.store import audit

        verdict = _read_store(args, lambda conn: audit.verify(conn, args.head).to_json())
    if args.json:
        print(json.dumps(verdict))
    elif verdict["broken"] is None:
        print(f"audit trail intact: {verdict['entries']} entries; head {verdict['head'] or '(empty)'} "
              "(note it: --head checks it is still there later)")
    else:
        broken = verdict["broken"]
        print(f"audit trail BROKEN at entry {broken['id']}: {broken['problem']}", file=sys.stderr)
    return EXIT_OK if verdict["broken"] is None else EXIT_FAILURE


def audit_export(args: argparse.Namespace) -> int:
    if args.url:
        rows = asyncio.run(_from_daemon(args, "/api/audit/export"))
    else:
        from labbridge.store import audit

        rows = _read_store(args, audit.export)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(Path(args.output).open("w", encoding="utf-8", newline="")) if args.output \
            else sys.stdout
        if args.format == "jsonl":
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return EXIT_OK
