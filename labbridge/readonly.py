"""Read-only attributes for the classes of the compiled cores, on both builds.

A class of a compiled module (docs/performance.md "Compiled cores") that declares its attributes ``Final``
and sets them in ``__init__`` is read-only from Python once compiled: mypyc gives each such attribute a
getter and no setter, and builds the object natively (a frozen dataclass stays a Python class under mypyc,
its ``__init__`` twenty times slower than a native one). :func:`read_only_from_source` gives the same class run
from its source (the pure-Python fallback) the same rule: an attribute may be set once (by ``__init__``), then
never set again nor deleted. ``mypy --strict`` rejects any assignment to a ``Final`` attribute on both.
"""

from __future__ import annotations

from typing import Any


def _set_once(self: Any, name: str, value: object) -> None:
    if hasattr(self, name):
        raise AttributeError(f"{type(self).__name__}.{name} is read-only")
    object.__setattr__(self, name, value)


def _no_delete(self: Any, name: str) -> None:
    raise AttributeError(f"{type(self).__name__}.{name} is read-only")


def read_only_from_source(cls: type, module_file: str) -> None:
    """Make ``cls``'s attributes settable once when its module runs from source (``module_file`` ends in
    ``.py``); nothing for a compiled module, whose ``Final`` attributes are read-only already."""
    if module_file.endswith(".py"):
        setattr(cls, "__setattr__", _set_once)  # noqa: B010 - on a class the type checker sees as compiled
        setattr(cls, "__delattr__", _no_delete)  # noqa: B010
