"""The layers of labbridge point one way: a walk of every module's imports keeps them so.

Every ``import`` statement counts, wherever it stands: at module level, inside a function (a cycle
hidden in a function is still a cycle) and under ``if TYPE_CHECKING:`` (the types of a layer are part
of what it depends on). An import names the module it reads (``from labbridge.protocols import mllp``
is ``labbridge.protocols.mllp``; ``from labbridge.orders import NewOrder`` is ``labbridge.orders``);
the packages a module sits in are not counted as its imports.

The rules:

* no cycle between modules;
* ``labbridge/protocols/`` (the sans-I/O cores) imports no I/O or clock module and nothing of
  labbridge outside protocols/, errors, model and readonly;
* ``labbridge/runtime/`` (the daemon) imports neither the web surface nor the CLI: they are composed
  with the daemon by whoever runs it;
* ``labbridge/store/`` imports nothing of the layers above it (links, relay, web, cli, runtime);
* ``labbridge/web/`` reads the daemon through ``labbridge.runtime.api``, never ``labbridge.runtime.daemon``;
* ``labbridge.config`` reaches no driver plugin: parsing a config loads nothing.
* ``labbridge/fleet/`` (MQTT) imports none of runtime, links, relay, web, cli, and reaches no store.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "labbridge"

IO_AND_CLOCK = frozenset({"asyncio", "socket", "ssl", "selectors", "serial", "time", "threading", "subprocess",
                          "os", "sqlite3", "aiohttp"})
PROTOCOLS_MAY_IMPORT = ("labbridge.protocols", "labbridge.errors", "labbridge.model", "labbridge.readonly")
ABOVE_THE_STORE = ("labbridge.links", "labbridge.relay", "labbridge.web", "labbridge.cli", "labbridge.runtime")

Graph = dict[str, set[str]]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package at ``root``."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(tree: ast.Module, package: str, modules: dict[str, Path]) -> Iterator[str]:
    """Every module an import statement of ``tree`` names, relative imports resolved against ``package``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in modules else base


def import_graph(root: Path) -> tuple[Graph, dict[str, set[str]]]:
    """(imports between the package's own modules, top-level names of the other modules each imports)."""
    modules = module_names(root)
    inside: Graph = {}
    outside: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        inside[name], outside[name] = set(), set()
        for target in _imported(tree, package, modules):
            top = target.partition(".")[0]
            if top != root.name:
                outside[name].add(top)
            elif target != name:
                inside[name].add(target)
    return inside, outside


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def reachable(graph: Graph, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def layer_violations(graph: Graph, outside: dict[str, set[str]], package: str = "labbridge") -> list[str]:
    """Each broken layering rule, as "module: what it must not import"."""
    p = package + "."
    out: list[str] = []
    for module, targets in sorted(graph.items()):
        if _in(module, p + "protocols"):
            out += [f"{module}: I/O or clock module {name}" for name in sorted(outside[module] & IO_AND_CLOCK)]
            allowed = tuple(package + name.removeprefix("labbridge") for name in PROTOCOLS_MAY_IMPORT)
            out += [f"{module}: {t} (protocols/ may import only protocols/, errors, model, readonly)"
                    for t in sorted(targets) if not _in(t, *allowed)]
        if _in(module, p + "runtime"):
            out += [f"{module}: {t} (runtime sits below the surfaces and the CLI that compose it)"
                    for t in sorted(targets) if _in(t, p + "web", p + "cli")]
        if _in(module, p + "store"):
            above = tuple(package + name.removeprefix("labbridge") for name in ABOVE_THE_STORE)
            out += [f"{module}: {t} (the store sits below it)" for t in sorted(targets) if _in(t, *above)]
        if _in(module, p + "web"):
            out += [f"{module}: {t} (read the daemon through {p}runtime.api)"
                    for t in sorted(targets) if _in(t, p + "runtime.daemon")]
    out += _fleet_violations(graph, p)  # [mqtt]
    config = p + "config"
    if config in graph and p + "driver" in reachable(graph, config):
        out.append(f"{config}: {p}driver (parsing a config loads no driver plugin)")
    return out


# ---- [mqtt]: labbridge/fleet/ (issue 19) -------------------------------------------------------------------------
def _fleet_violations(graph: Graph, p: str) -> list[str]:
    """``labbridge/fleet/`` is given what it publishes (the daemon composes it) and reads a broker: it imports none
    of runtime, links, relay, web or cli, and reaches no store (the fleet view needs no access to any)."""
    out: list[str] = []
    for module, targets in sorted(graph.items()):
        if not _in(module, p + "fleet"):
            continue
        out += [f"{module}: {t} (the fleet is given what it publishes; it never reaches into the daemon)"
                for t in sorted(targets) if _in(t, p + "runtime", p + "links", p + "relay", p + "web", p + "cli")]
        out += [f"{module}: {t} (the fleet opens no store)" for t in sorted(reachable(graph, module))
                if _in(t, p + "store")]
    return out
# ---- end [mqtt] -----------------------------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    graph, _ = import_graph(PACKAGE)
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join("{" + ", ".join(c) + "}" for c in found)


def test_layers_point_one_way() -> None:
    graph, outside = import_graph(PACKAGE)
    broken = layer_violations(graph, outside)
    assert not broken, "layering broken:\n" + "\n".join(broken)


def test_the_walk_sees_every_kind_of_import() -> None:
    """The rules see the real imports: the graph of labbridge itself has the edges we know of."""
    graph, outside = import_graph(PACKAGE)
    assert "labbridge.protocols.mllp" in graph["labbridge.protocols.hl7_ack"]  # from package import module
    assert "labbridge.store.db" in graph["labbridge.store.orders"]  # under TYPE_CHECKING
    assert "labbridge.transports.tls" in graph["labbridge.links.lis_orders"]  # inside a function
    assert "asyncio" in outside["labbridge.runtime.daemon"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_each_rule_catches_a_planted_break(tmp_path: Path) -> None:
    root = tmp_path / "fakepkg"
    _write(root, {
        "__init__.py": "",
        "errors.py": "",
        "driver.py": "",
        "config.py": "def load():\n    from fakepkg import plugins\n",
        "plugins.py": "from fakepkg.driver import x\n",
        "protocols/__init__.py": "",
        "protocols/core.py": "import time\nfrom . import other\nfrom ..errors import E\nfrom fakepkg.store import db\n",
        "protocols/other.py": "",
        "runtime/__init__.py": "",
        "runtime/daemon.py": "def run():\n    from fakepkg.web.server import WebServer\n",
        "runtime/api.py": "",
        "store/__init__.py": "",
        "store/db.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fakepkg.relay import relay\n",
        "relay/__init__.py": "",
        "relay/relay.py": "",
        "web/__init__.py": "",
        "web/server.py": "from fakepkg.runtime import api, daemon\n",
        "fleet/__init__.py": "",  # [mqtt]
        "fleet/view.py": "from fakepkg.relay import relay\nfrom fakepkg.store import db\n",
    })
    graph, outside = import_graph(root)
    assert layer_violations(graph, outside, package="fakepkg") == [
        "fakepkg.protocols.core: I/O or clock module time",
        "fakepkg.protocols.core: fakepkg.store.db (protocols/ may import only protocols/, errors, model, readonly)",
        "fakepkg.runtime.daemon: fakepkg.web.server (runtime sits below the surfaces and the CLI that compose it)",
        "fakepkg.store.db: fakepkg.relay.relay (the store sits below it)",
        "fakepkg.web.server: fakepkg.runtime.daemon (read the daemon through fakepkg.runtime.api)",
        "fakepkg.fleet.view: fakepkg.relay.relay (the fleet is given what it publishes; it never reaches into the "
        "daemon)",
        "fakepkg.fleet.view: fakepkg.store.db (the fleet opens no store)",
        "fakepkg.config: fakepkg.driver (parsing a config loads no driver plugin)",
    ]
    assert cycles(graph) == [["fakepkg.runtime.daemon", "fakepkg.web.server"]]


def test_a_daemon_without_http_imports_no_web_stack() -> None:
    """Import only what the configured features need: the daemon and the `run` command, with [http] off, load
    neither aiohttp nor the Prometheus client (~12 MiB of a small site PC), nor what only the `bundle` commands
    use (cryptography and tarfile: ~8 MiB), though the command line that starts the daemon registers them."""
    code = """
import sys
import labbridge.cli.commands, labbridge.runtime.daemon
from labbridge.cli.parser import build_parser
build_parser().parse_args(["run", "-c", "x.toml"])
from labbridge.config import parse_config
from labbridge.web import surfaces_for
config = parse_config({"node": "n", "store": {"path": "x.db"}, "http": {"enabled": False},
                       "sites": [{"id": "s", "name": "S"}]})
assert surfaces_for(config) == []
print(sorted(m for m in ("aiohttp", "prometheus_client", "cryptography", "tarfile", "labbridge.bundles")
             if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
