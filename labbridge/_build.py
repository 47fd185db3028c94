"""Which build of labbridge's protocol cores runs: compiled by mypyc, or pure Python from the same sources.

``setup.py`` compiles the modules that ``pyproject.toml``'s ``[tool.labbridge] compiled`` lists (the pure
protocol cores and the result model: docs/performance.md "Compiled cores") into one extension, where a C
compiler and Python's headers are there, and writes beside them a manifest (``_compiled.json``) of each
source's SHA-256. When labbridge is imported, :func:`choose` takes the compiled modules only if every one is
there and was built from the source beside it; otherwise every one of them is imported from its source, so the
two builds are never mixed (a compiled module calls the others it was built with directly, not through the
module that Python would import). ``LABBRIDGE_PURE_PYTHON=1`` asks for the sources: the test command runs the
suite on both builds.

This module runs on every import of labbridge, before any other of its modules: it reads one small JSON file
and hashes the compiled modules' sources (a few hundred kilobytes), and imports nothing of labbridge.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

#: Set to 1 (or any of true/yes/on) to run the pure-Python sources even where a compiled build is installed.
PURE_ENV = "LABBRIDGE_PURE_PYTHON"
#: The build's manifest: {"group": ..., "modules": {module name: SHA-256 of its source}}.
MANIFEST = "_compiled.json"


@dataclass(frozen=True, slots=True)
class BuildState:
    """What runs: ``compiled`` (the manifest's modules, from the extension) or not, and why not."""

    compiled: bool
    modules: tuple[str, ...]  # what the build compiled (empty: nothing was built)
    reason: str  # why the sources run ("" when compiled)

    def describe(self) -> str:
        if self.compiled:
            return f"compiled (mypyc: {len(self.modules)} modules)"
        return f"pure Python ({self.reason})"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _extension_of(package_dir: Path, module: str) -> Path | None:
    """The compiled file of ``module`` (a dotted name under labbridge) for this interpreter, if built."""
    parts = module.split(".")[1:]
    folder = package_dir.joinpath(*parts[:-1])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"{parts[-1]}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _source_of(package_dir: Path, module: str) -> Path:
    parts = module.split(".")[1:]
    return package_dir.joinpath(*parts[:-1]) / f"{parts[-1]}.py"


def inspect(package_dir: Path, environ: Mapping[str, str] | None = None) -> BuildState:
    """The build that ``package_dir`` (labbridge's folder) holds, and whether its compiled modules can run."""
    env = os.environ if environ is None else environ
    manifest_path = package_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        hashes: dict[str, str] = dict(manifest["modules"])
    except FileNotFoundError:
        return BuildState(False, (), "not compiled: this installation was built without a C compiler or mypyc")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return BuildState(False, (), f"unreadable build manifest {manifest_path}: {exc}")
    modules = tuple(sorted(hashes))
    if _truthy(env.get(PURE_ENV)):
        return BuildState(False, modules, f"{PURE_ENV} is set")
    for module in modules:
        if _extension_of(package_dir, module) is None:
            return BuildState(False, modules, f"the compiled {module} is missing for this Python")
        source = _source_of(package_dir, module)
        try:
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError as exc:
            return BuildState(False, modules, f"cannot read {source}: {exc}")
        if digest != hashes[module]:
            return BuildState(False, modules, f"{source.name} changed since the build: rebuild "
                                              "(./dev test, or pip install -e .) to run it compiled")
    return BuildState(True, modules, "")


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds modules from their ``.py`` files where a compiled file would shadow one: the ``names`` given, or
    (None: no readable manifest says which were compiled) every module under ``prefix``."""

    def __init__(self, names: frozenset[str] | None, prefix: str = "labbridge.") -> None:
        self.names = names
        self.prefix = prefix

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        wanted = fullname in self.names if self.names is not None else fullname.startswith(self.prefix)
        if not wanted or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, f"{leaf}.py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def choose() -> BuildState:
    """Decide which build runs (labbridge's ``__init__`` calls this once, and keeps the answer as
    ``labbridge.BUILD``); install the finder that imports the sources when they are to run."""
    state = inspect(Path(__file__).parent)
    if not state.compiled:
        # Without a manifest (a pure build, or one whose manifest is gone or unreadable), any compiled file left
        # in the tree is shadowed all the same: the sources run, as BUILD says.
        sys.meta_path.insert(0, _SourcesFirst(frozenset(state.modules) if state.modules else None))
    return state
