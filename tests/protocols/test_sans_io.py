"""The protocol cores never do I/O: nothing under labbridge/protocols imports an I/O or clock module."""

from __future__ import annotations

import ast
from pathlib import Path

import labbridge.protocols

FORBIDDEN = {"asyncio", "socket", "serial", "time", "threading", "selectors", "ssl", "subprocess", "os"}


def test_protocol_cores_import_no_io_module() -> None:
    root = Path(labbridge.protocols.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders
    assert len(list(root.rglob("*.py"))) >= 4
