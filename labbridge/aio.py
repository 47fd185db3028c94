"""The event loop labbridge runs on: uvloop where it is installed (the default), else asyncio's own.

uvloop (libuv under asyncio's API) runs the per-frame work of every link (a read, the sans-I/O step, a
one-byte ACK ``send()``) several times cheaper than the selector loop: the benchmark's bare ACK server
needs ~5x less CPU per message on it (docs/performance.md). labbridge uses only asyncio's public API,
so both loops run it; ``event_loop = "asyncio"`` in the config (or ``LABBRIDGE_EVENT_LOOP=asyncio``)
picks the standard loop, e.g. to rule the loop out when chasing a problem.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from labbridge.errors import ConfigError

T = TypeVar("T")
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]
ENV = "LABBRIDGE_EVENT_LOOP"


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``choice`` (None: asyncio's default loop). ``auto``: uvloop if importable."""
    choice = os.environ.get(ENV, "") or choice
    if choice == "asyncio":
        return None
    if choice not in ("auto", "uvloop"):
        where = ENV if os.environ.get(ENV) else "config"
        raise ConfigError(where, [("event_loop", f"{choice!r}: expected auto, uvloop or asyncio")])
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            problem = ("event_loop", "uvloop is not installed (pip install uvloop), or use auto")
            raise ConfigError("config", [problem]) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, loop: str = "auto") -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)
