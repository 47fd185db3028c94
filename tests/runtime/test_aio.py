"""labbridge.aio: which event loop the daemon runs on, and what it says when the one asked for is missing."""

from __future__ import annotations

import asyncio
import sys

import pytest

from labbridge import aio
from labbridge.errors import ConfigError


def test_auto_takes_uvloop_when_installed_and_asyncio_is_asked_for_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(aio.ENV, raising=False)
    pytest.importorskip("uvloop")
    assert aio.run(_loop_name(), loop="auto") == "uvloop"
    assert aio.run(_loop_name(), loop="uvloop") == "uvloop"
    assert aio.run(_loop_name(), loop="asyncio") == "asyncio"
    monkeypatch.setenv(aio.ENV, "asyncio")  # the environment wins over the config
    assert aio.run(_loop_name(), loop="auto") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(aio.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert aio.loop_factory("auto") is None
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        aio.loop_factory("uvloop")
    monkeypatch.setenv(aio.ENV, "libev")
    with pytest.raises(ConfigError, match="expected auto, uvloop or asyncio"):
        aio.loop_factory("auto")


async def _loop_name() -> str:
    return aio.loop_name(asyncio.get_running_loop())
