"""Every subcommand's help has examples that the parser itself accepts."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from labbridge import BUILD, __version__
from labbridge.cli.parser import build_parser


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                          argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(((*path, name), sub))
                out += _subcommands(sub, (*path, name))
    return out


SUBCOMMANDS = _subcommands(build_parser())


def test_there_are_subcommands() -> None:
    assert len(SUBCOMMANDS) >= 20


@pytest.mark.parametrize(("path", "parser"), SUBCOMMANDS, ids=[" ".join(p) for p, _ in SUBCOMMANDS])
def test_every_subcommand_has_examples_the_parser_accepts(path: tuple[str, ...],
                                                          parser: argparse.ArgumentParser) -> None:
    has_own_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    epilog = parser.epilog or ""
    if has_own_subcommands and "examples:" not in epilog:
        return  # a group (``outbox``): each of its subcommands has its own examples
    assert "examples:" in epilog, f"labbridge {' '.join(path)} --help has no examples"
    examples = [line.strip() for line in epilog.split("examples:", 1)[1].splitlines() if line.strip()]
    assert examples
    for example in examples:
        assert example.startswith("labbridge "), example
        command = re.split(r"\s[|<>]", example.split("  #", 1)[0], maxsplit=1)[0]  # without a pipe or redirection
        argv = shlex.split(command, comments=True)[1:]
        build_parser().parse_args(argv)  # exits (SystemExit) if an example is wrong


def test_version_says_which_build_of_the_protocol_cores_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"labbridge {__version__} (protocol cores: {BUILD.describe()})"
