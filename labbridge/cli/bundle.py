"""The ``labbridge bundle`` commands: make a signing key, sign config and driver files into a bundle, and
check or unpack a bundle against trusted public keys (:mod:`labbridge.bundles`) so a clean zone refuses
one that was altered on the way."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labbridge.cli.commands import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from labbridge import bundles

# labbridge.bundles (tarfile, and cryptography's ~8 MiB of RSS) is imported by each command when it runs: the
# parser registers these commands in every labbridge process, the daemon's included (issue 15: import only
# what the configured features need).

Command = Callable[..., argparse.ArgumentParser]


def add_commands(sub: Any, command: Command) -> None:
    """Register ``bundle keygen|create|verify|extract`` with the parser's ``_command`` helper."""
    p = command(sub, "bundle", "sign config and driver files into a bundle, and check one before use", None,
                "bundle keygen --out /root/keys/arlon-it.key",
                "bundle verify arlon-2026-12.tar --trusted /etc/labbridge/trusted/arlon-it.pub")
    actions = p.add_subparsers(dest="action", required=True)
    q = command(actions, "keygen", "make an Ed25519 signing key (private key mode 0600; public key beside it)",
                keygen, "bundle keygen --out arlon-it.key            # also writes arlon-it.key.pub",
                "bundle keygen --out arlon-it.key --pub /media/usb/arlon-it.pub")
    q.add_argument("--out", required=True, type=Path, help="the private key file to create (kept by IT, offline)")
    q.add_argument("--pub", type=Path, help="the public key file to create (default: OUT.pub)")
    q = command(actions, "create", "sign files (a config TOML, driver wheels or folders) into a bundle", create,
                "bundle create --key arlon-it.key --out arlon-2026-12.tar labbridge.toml",
                "bundle create --key arlon-it.key --out drivers.tar dist/labbridge_driver_acme-1.0-py3-none-any.whl")
    q.add_argument("--key", required=True, type=Path, help="the private key (from `bundle keygen`)")
    q.add_argument("--out", required=True, type=Path, help="the bundle to create (.tar)")
    q.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files and folders to carry")
    for name, func, text, examples in (
        ("verify", verify, "check a bundle's signature and every file against trusted keys (exit 1 if refused)",
         ("bundle verify arlon-2026-12.tar --trusted arlon-it.pub",
          "bundle verify arlon-2026-12.tar -c /etc/labbridge/labbridge.toml   # its [bundles] trusted_keys")),
        ("extract", extract, "verify a bundle, then unpack it into a new folder (nothing is written if refused)",
         ("bundle extract arlon-2026-12.tar --trusted arlon-it.pub --to /etc/labbridge/incoming/2026-12",)),
    ):
        q = command(actions, name, text, func, *examples)
        q.add_argument("bundle", type=Path)
        q.add_argument("--trusted", action="append", default=[], type=Path, metavar="PUBKEY",
                       help="a trusted public key file (repeat for several)")
        q.add_argument("-c", "--config", help="also trust the config's [bundles] trusted_keys")
        if name == "extract":
            q.add_argument("--to", required=True, type=Path, help="the folder to create (or an empty one)")


def keygen(args: argparse.Namespace) -> int:
    from labbridge import bundles

    public_path: Path = args.pub or args.out.with_name(args.out.name + ".pub")
    public = bundles.keygen(args.out, public_path)
    print(f"private key {args.out} (mode 0600: keep it offline, with IT)")
    print(f"public key  {public_path} (key id {bundles.key_id(public)}: copy it to each clean zone's trusted keys)")
    sys.stdout.write(bundles.public_pem(public).decode("ascii"))
    return EXIT_OK


def create(args: argparse.Namespace) -> int:
    from labbridge import bundles

    manifest = bundles.create(bundles.load_private_key(args.key), args.files, args.out)
    print(f"{args.out}: {len(manifest.files)} file(s) signed by key {manifest.signer} at {manifest.created}")
    for entry in manifest.files:
        print(f"  {entry.sha256}  {entry.size:>10}  {entry.name}")
    return EXIT_OK


def _trusted(args: argparse.Namespace) -> bundles.TrustedKeys:
    """The keys given with ``--trusted`` and those of the config's ``[bundles] trusted_keys``."""
    from labbridge import bundles

    paths: list[Path] = list(args.trusted)
    if args.config:
        from labbridge.config import load_config

        paths += [Path(p) for p in load_config(args.config).bundles.trusted_keys]
    if not paths:
        raise bundles.BundleError(str(args.bundle), ["no trusted key: give --trusted PUBKEY, or -c CONFIG with "
                                                      "[bundles] trusted_keys"])
    return bundles.load_public_keys(paths)


def _refused(exc: bundles.BundleError) -> int:
    print(f"{exc.what}: REFUSED ({len(exc.problems)} problem(s))", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_FAILURE


def verify(args: argparse.Namespace) -> int:
    from labbridge import bundles

    try:
        manifest = bundles.verify(args.bundle, _trusted(args))
    except bundles.BundleError as exc:
        return _refused(exc)
    print(f"{args.bundle}: OK, signed by key {manifest.signer} at {manifest.created}; {len(manifest.files)} file(s)")
    for entry in manifest.files:
        print(f"  {entry.sha256}  {entry.size:>10}  {entry.name}")
    return EXIT_OK


def extract(args: argparse.Namespace) -> int:
    from labbridge import bundles

    try:
        manifest = bundles.extract(args.bundle, _trusted(args), args.to)
    except bundles.BundleError as exc:
        return _refused(exc)
    print(f"{args.bundle}: verified (key {manifest.signer}); {len(manifest.files)} file(s) written to {args.to}")
    return EXIT_OK
