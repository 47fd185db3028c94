from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog

from labbridge import aio

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0, *, loop: str = "auto") -> T:
    """Run one async test body with a hard time limit (a hang fails, it never blocks CI).

    On the daemon's own loop (labbridge.aio: uvloop where installed; LABBRIDGE_EVENT_LOOP=asyncio
    runs the suite on asyncio's loop; ``loop`` picks one for a test that runs on both)."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return aio.run(bounded(), loop=loop)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def logging_restored() -> Any:
    """For tests that call the CLI's main(), which points the logs at this test's captured stderr: later tests
    log elsewhere."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


LOOPS = ["asyncio", "uvloop"]  # tests of the loop-sensitive paths run on both


@pytest.fixture(params=LOOPS)
def event_loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
