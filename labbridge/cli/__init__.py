"""The ``labbridge`` command: the command line in :mod:`.parser`, one function per command in
:mod:`.commands`, the operator client (running daemon or stopped store) in :mod:`.client`, and what the
commands print in :mod:`.output`."""

from __future__ import annotations

import sys

from labbridge.cli.commands import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, explain
from labbridge.cli.parser import build_parser
from labbridge.errors import ConfigError, LabbridgeError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # e.g. `labbridge status | head`
        sys.stderr.close()
        return EXIT_OK
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except (LabbridgeError, ValueError, OSError) as exc:
        print(explain(args, exc), file=sys.stderr)
        return EXIT_FAILURE
    return result
