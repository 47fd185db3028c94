"""Read-only attributes for the classes of the compiled cores, on both builds.

A class of a compiled module (docs/performance.md "Compiled cores") that declares its attributes ``Final``
and sets them in ``__init__`` is read-only from Python once compiled: mypyc gives each such attribute a
getter and no setter, and builds the object natively (a frozen dataclass stays a Python class under mypyc,
its generated ``__init__`` some twenty times slower than a native one). :func:`read_only_from_source` gives the
same class run from its source (the pure-Python fallback) the same rule: once made, an object's attributes
are never set again nor deleted. ``mypy --strict`` rejects any assignment to a ``Final`` attribute on both.
Such a class's ``__init__`` only stores each parameter in the attribute of its name (anything derived is a
property), so that from the source it can be replaced by one generated from its signature.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def _refuse(self: Any, name: str, value: object) -> None:
    raise AttributeError(f"{type(self).__name__}.{name} is read-only")


def _no_delete(self: Any, name: str) -> None:
    _refuse(self, name, None)


def _storing_init(cls: type) -> Callable[..., None]:
    """An ``__init__`` with the signature of ``cls``'s that stores each parameter in the attribute of its name
    past ``__setattr__`` (as a frozen dataclass's does), for a class whose own ``__init__`` does just that."""
    original = cls.__init__  # type: ignore[misc]
    params = list(inspect.signature(original).parameters.values())[1:]
    names = [p.name for p in params]
    if sorted(names) != sorted(getattr(cls, "__slots__", ())):
        raise TypeError(f"{cls.__name__}.__init__ must take exactly its attributes ({names})")
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    args = ", ".join(f"{n}=_defaults[{n!r}]" if n in defaults else n for n in names)
    body = "".join(f"    _set(self, {n!r}, {n})\n" for n in names)
    namespace: dict[str, Any] = {"_set": object.__setattr__, "_defaults": defaults}
    exec(f"def __init__(self, {args}):\n{body}", namespace)  # noqa: S102 - generated from the class's own signature
    init: Callable[..., None] = namespace["__init__"]
    return functools.update_wrapper(init, original)


def read_only_from_source(cls: type, module_file: str) -> None:
    """When ``cls``'s module runs from source (``module_file`` ends in ``.py``), refuse to set or delete its
    attributes, and make it with an ``__init__`` that stores its parameters past the refusal (as fast as a
    frozen dataclass's). Nothing for a compiled module: its ``Final`` attributes are read-only already."""
    if not module_file.endswith(".py"):
        return
    setattr(cls, "__init__", _storing_init(cls))  # noqa: B010 - on a class the type checker sees as compiled
    setattr(cls, "__setattr__", _refuse)  # noqa: B010
    setattr(cls, "__delattr__", _no_delete)  # noqa: B010
