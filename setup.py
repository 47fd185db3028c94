"""labbridge's build step beyond pyproject.toml: compile the protocol cores with mypyc where it can.

The modules that pyproject.toml's ``[tool.labbridge] compiled`` lists are compiled by mypyc (from mypy, which
the lock file pins) into one extension group, ``labbridge._compiled``, and a manifest of their sources'
SHA-256 is written beside them (``labbridge/_compiled.json``): labbridge/_build.py runs the compiled modules
only if they match their sources. Without mypyc, or with ``LABBRIDGE_COMPILE=0``, or where the C compiler
fails, labbridge installs as pure Python (a warning says why) and runs the same sources.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
GROUP = "labbridge._compiled"
MANIFEST = HERE / "labbridge" / "_compiled.json"
SOURCES: list[str] = tomllib.loads((HERE / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["labbridge"][
    "compiled"]


def module_of(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


def say(message: str) -> None:
    print(f"labbridge build: {message}", file=sys.stderr)


def remove_in_tree_build() -> None:
    """Remove a compiled build left in the source tree (an editable install's), so that no stale extension
    shadows a source once the build is pure."""
    for path in [MANIFEST, *HERE.joinpath("labbridge").glob("_compiled__mypyc.*")]:
        path.unlink(missing_ok=True)
    for source in SOURCES:
        src = HERE / source
        for path in src.parent.glob(f"{src.stem}.cpython-*"):
            path.unlink(missing_ok=True)


class BuildCompiled(build_ext):
    """build_ext that writes the manifest after the build, and falls back to pure Python when the C compiler
    fails (the compiled files it made are removed: never a partial build)."""

    def _outputs(self) -> list[Path]:
        """Where this build puts each extension: the build folder, and the source tree for an in-place build
        (setuptools builds in the one and copies to the other, and is left pointing at the first on failure)."""
        inplace = self.inplace
        paths: list[Path] = []
        for mode in (0, 1):
            self.inplace = mode
            paths += [Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions]
        self.inplace = inplace
        return paths

    def run(self) -> None:
        target = Path(self.get_ext_fullpath(GROUP + "__mypyc")).parent / MANIFEST.name
        target.unlink(missing_ok=True)  # an earlier build's manifest never outlives its extensions
        if not self.extensions:  # nothing to compile (LABBRIDGE_COMPILE=0, or no mypyc): no manifest
            return
        try:
            super().run()
        except Exception as exc:  # distutils' compiler errors have no common base but Exception
            say(f"compiling failed ({type(exc).__name__}: {exc}); installing the pure-Python sources")
            for path in self._outputs():
                path.unlink(missing_ok=True)
            return
        modules = {module_of(source): hashlib.sha256((HERE / source).read_bytes()).hexdigest()
                   for source in SOURCES}
        target.write_text(json.dumps({"group": GROUP, "modules": modules}, indent=1, sort_keys=True) + "\n",
                          encoding="utf-8")
        say(f"compiled {len(modules)} modules with mypyc ({target})")


def extensions() -> list[Any]:
    if os.environ.get("LABBRIDGE_COMPILE", "1").strip().lower() in {"0", "false", "no", "off"}:
        say("LABBRIDGE_COMPILE=0: installing the pure-Python sources")
        remove_in_tree_build()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        say("mypyc (from mypy) is not installed: installing the pure-Python sources")
        remove_in_tree_build()
        return []
    cwd = os.getcwd()
    os.chdir(HERE)  # mypycify takes paths relative to the project, and reads mypy's config from pyproject.toml
    try:
        return list(mypycify(SOURCES, opt_level="3", debug_level="0", group_name=GROUP))
    except (Exception, SystemExit) as exc:  # a mypy that rejects the sources exits; never fail the install for it
        say(f"mypyc could not compile the sources ({type(exc).__name__}: {exc}); installing the pure-Python sources")
        remove_in_tree_build()
        return []
    finally:
        os.chdir(cwd)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildCompiled})
