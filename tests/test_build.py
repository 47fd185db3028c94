"""The two builds of the protocol cores (labbridge/_build.py): compiled by mypyc, or pure Python, never mixed.

The whole suite runs on both (./dev test: once as built, then with LABBRIDGE_PURE_PYTHON=1); these tests check
that the build asked for is the one that runs, and how a build that does not match its sources is refused.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import labbridge
from labbridge import _build

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(labbridge.__file__).parent


def _compiled_list() -> list[str]:
    sources = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["labbridge"]["compiled"]
    return [s.removesuffix(".py").replace("/", ".") for s in sources]


def _fake_build(root: Path, modules: dict[str, bytes], *, extensions: bool = True) -> Path:
    """A labbridge folder with these modules' sources, a manifest of them, and (if asked) an extension file
    for each (empty: inspect() only looks for it)."""
    package = root / "labbridge"
    hashes = {}
    for module, source in modules.items():
        parts = module.split(".")[1:]
        path = package.joinpath(*parts[:-1]) / f"{parts[-1]}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source)
        hashes[module] = hashlib.sha256(source).hexdigest()
        if extensions:
            path.with_name(parts[-1] + importlib.machinery.EXTENSION_SUFFIXES[0]).write_bytes(b"")
    (package / _build.MANIFEST).write_text(json.dumps({"group": "labbridge._compiled", "modules": hashes}))
    return package


MODULES = {"labbridge.protocols.e1381": b"X = 1\n", "labbridge.model": b"Y = 2\n"}


def test_a_build_that_matches_its_sources_runs_compiled(tmp_path: Path) -> None:
    state = _build.inspect(_fake_build(tmp_path, MODULES), {})
    assert state.compiled and state.modules == ("labbridge.model", "labbridge.protocols.e1381")
    assert state.describe() == "compiled (mypyc: 2 modules)"


def test_the_sources_run_when_asked(tmp_path: Path) -> None:
    package = _fake_build(tmp_path, MODULES)
    for value in ("1", "true", "YES", "on"):
        state = _build.inspect(package, {_build.PURE_ENV: value})
        assert not state.compiled and state.modules and _build.PURE_ENV in state.reason
    assert _build.inspect(package, {_build.PURE_ENV: "0"}).compiled


def test_an_edited_source_makes_every_module_run_from_source(tmp_path: Path) -> None:
    """One module changed since the build: none of the compiled ones run (a compiled module calls the others
    of its build directly, so a mix would run two versions of the same code)."""
    package = _fake_build(tmp_path, MODULES)
    (package / "protocols" / "e1381.py").write_bytes(b"X = 3\n")
    state = _build.inspect(package, {})
    assert not state.compiled and "e1381.py changed since the build" in state.reason
    assert state.modules == ("labbridge.model", "labbridge.protocols.e1381")  # the finder takes every one


def test_a_missing_extension_or_manifest_means_pure(tmp_path: Path) -> None:
    state = _build.inspect(_fake_build(tmp_path / "a", MODULES, extensions=False), {})
    assert not state.compiled and "is missing for this Python" in state.reason
    bare = tmp_path / "b" / "labbridge"
    bare.mkdir(parents=True)
    state = _build.inspect(bare, {})
    assert not state.compiled and state.modules == () and state.reason.startswith("not compiled")
    (bare / _build.MANIFEST).write_text("{not json")
    assert "unreadable build manifest" in _build.inspect(bare, {}).reason


def test_the_finder_imports_a_source_where_an_extension_would_shadow_it(tmp_path: Path) -> None:
    package = tmp_path / "pkg_lb_finder"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text("WHERE = 'source'\n")
    finder = _build._SourcesFirst(frozenset({"pkg_lb_finder.core"}))
    spec = finder.find_spec("pkg_lb_finder.core", [str(package)])
    assert spec is not None and spec.origin == str(package / "core.py")
    assert finder.find_spec("pkg_lb_finder.other", [str(package)]) is None
    assert finder.find_spec("pkg_lb_finder.core", None) is None
    # No manifest to name the compiled modules: every module under the package comes from its source.
    anywhere = _build._SourcesFirst(None, prefix="pkg_lb_finder.")
    spec = anywhere.find_spec("pkg_lb_finder.core", [str(package)])
    assert spec is not None and spec.origin == str(package / "core.py")
    assert anywhere.find_spec("pkg_lb_finder.missing", [str(package)]) is None
    assert anywhere.find_spec("other_pkg.core", [str(package)]) is None


def test_the_build_that_runs_here_is_the_one_asked_for() -> None:
    """In this test run: with LABBRIDGE_PURE_PYTHON=1 every compiled-list module comes from its source; without
    it, an installed build that compiled runs compiled (a stale build fails here: rebuild with ./dev test)."""
    state = labbridge.BUILD
    asked_pure = _build._truthy(os.environ.get(_build.PURE_ENV))
    manifest = PACKAGE / _build.MANIFEST
    if manifest.exists():
        assert sorted(json.loads(manifest.read_text())["modules"]) == sorted(_compiled_list())
        assert state.compiled is not asked_pure, state.describe()
    for name in _compiled_list():
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(".py") is not state.compiled, (name, module.__file__, state.describe())


def test_a_process_asking_for_the_sources_gets_them_all() -> None:
    """Another process (the daemon, the store writer) with LABBRIDGE_PURE_PYTHON=1 imports every module of the
    compiled list from its source; without it, from the build (when this installation is compiled)."""
    if not (PACKAGE / _build.MANIFEST).exists():
        pytest.skip("this installation was built without a C compiler: there is only the pure-Python build")
    script = ("import importlib, json, sys, labbridge; "
              "print(json.dumps([labbridge.BUILD.compiled, "
              "[importlib.import_module(m).__file__ for m in sys.argv[1:]]]))")
    for pure in (True, False):
        env = {k: v for k, v in os.environ.items() if k != _build.PURE_ENV}
        if pure:
            env[_build.PURE_ENV] = "1"
        out = subprocess.run([sys.executable, "-c", script, *_compiled_list()], env=env, capture_output=True,
                             text=True, check=True, timeout=60).stdout
        compiled, files = json.loads(out)
        assert compiled is not pure
        assert all(f.endswith(".py") is pure for f in files), files


def _copy_for_build(tmp_path: Path) -> Path:
    """What setup.py needs to build labbridge: its pyproject.toml, setup.py and the package's sources."""
    import shutil

    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(REPO / "labbridge", tree / "labbridge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", _build.MANIFEST))
    return tree


def _stale_build(package: Path) -> list[Path]:
    """Files an earlier compiled build left in the tree: a manifest and an extension per compiled module."""
    made = [package / _build.MANIFEST]
    made[0].write_text(json.dumps({"group": "labbridge._compiled", "modules": {}}))
    for module in _compiled_list():
        parts = module.split(".")[1:]
        path = package.joinpath(*parts[:-1]) / f"{parts[-1]}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
        path.write_bytes(b"not an extension")
        made.append(path)
    return made


def _build_state(tree: Path) -> str:
    out = subprocess.run([sys.executable, "-c", "import labbridge; print(labbridge.BUILD.describe())"],
                         cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.slow
def test_a_build_whose_compiler_fails_installs_the_sources_alone(tmp_path: Path) -> None:
    """No working C compiler (here: one that always fails): the build says so, leaves no compiled file of this
    or an earlier build behind, and labbridge runs from its sources."""
    pytest.importorskip("mypyc")
    tree = _copy_for_build(tmp_path)
    stale = _stale_build(tree / "labbridge")
    env = {k: v for k, v in os.environ.items() if k != "LABBRIDGE_COMPILE"} | {"CC": "/bin/false"}
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], check=False, cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "labbridge build: compiling failed" in done.stderr
    assert not [p for p in stale if p.exists()]
    assert _build_state(tree).startswith("pure Python (not compiled")


def test_an_extension_left_without_its_manifest_does_not_run(tmp_path: Path) -> None:
    """A compiled file in the tree but no manifest (deleted by hand, say): labbridge says it runs the sources,
    and it does (the file here is not even a valid extension: importing it would fail)."""
    tree = _copy_for_build(tmp_path)
    stale = _stale_build(tree / "labbridge")
    stale[0].unlink()  # the manifest
    script = ("import importlib, json, sys, labbridge; "
              "print(json.dumps([labbridge.BUILD.describe(), importlib.import_module(sys.argv[1]).__file__]))")
    out = subprocess.run([sys.executable, "-c", script, "labbridge.protocols.e1381"], cwd=tree,
                         env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True,
                         timeout=60).stdout
    described, file = json.loads(out)
    assert described.startswith("pure Python (not compiled") and file.endswith("e1381.py")


@pytest.mark.slow
def test_sources_mypyc_rejects_install_as_python(tmp_path: Path) -> None:
    """A mypy (hence mypyc) that finds a type error in a compiled module (a newer mypy, say) exits: the install
    goes on with the sources instead of failing."""
    pytest.importorskip("mypyc")
    tree = _copy_for_build(tmp_path)
    with (tree / "labbridge" / "protocols" / "mllp.py").open("a", encoding="utf-8") as source:
        source.write('\n_NOT_AN_INT: int = "a type error"\n')
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], check=False, cwd=tree,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "labbridge build: mypyc could not compile the sources" in done.stderr
    assert not list((tree / "labbridge").rglob("*.so"))
    assert _build_state(tree).startswith("pure Python (not compiled")


@pytest.mark.slow
def test_a_build_told_not_to_compile_removes_an_earlier_build(tmp_path: Path) -> None:
    tree = _copy_for_build(tmp_path)
    stale = _stale_build(tree / "labbridge")
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], check=False, cwd=tree,
                          env={**os.environ, "LABBRIDGE_COMPILE": "0"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LABBRIDGE_COMPILE=0" in done.stderr
    assert not [p for p in stale if p.exists()]
    assert _build_state(tree).startswith("pure Python (not compiled")
