"""The hashed lock files (docs/security.md, "Supply chain"): every dependency pinned with its SHA-256, the
runtime lock a subset of the full one at the same versions, and every dependency pyproject.toml names in it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile --generate-hashes file."""
    out: dict[str, tuple[str, int]] = {}
    current = ""
    for line in path.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;]+)", line)
        if pin:
            current = pin.group(1).lower().replace("_", "-")
            out[current] = (pin.group(2), 0)
        elif "--hash=sha256:" in line and current:
            version, n = out[current]
            out[current] = (version, n + 1)
    return out


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_the_locks_pin_every_dependency_with_hashes(repo: Path) -> None:
    full = pins(repo / "requirements" / "lock.txt")
    runtime = pins(repo / "requirements" / "runtime.txt")
    assert full and runtime and all(n > 0 for _, n in [*full.values(), *runtime.values()])
    assert {name: v for name, (v, _) in runtime.items()} == {name: full[name][0] for name in runtime}
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    direct = names(project["dependencies"])
    assert direct <= set(runtime), direct - set(runtime)
    test = names(project["optional-dependencies"]["test"]) - {"labbridge"}
    assert test <= set(full), test - set(full)
    assert "pytest" not in runtime and "selenium" not in runtime
