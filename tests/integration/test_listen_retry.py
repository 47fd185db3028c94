"""A listener whose port is taken shows `failed` with the reason, and binds by itself once the port is free."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab


def test_busy_port_is_reported_then_bound_when_freed(tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]

    async def body() -> None:
        overrides = {"an-1": {"transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": port}}}
        async with running_lab(tmp_path, instruments=2, overrides=overrides) as lab:
            busy = lab.daemon.runners["an-1"].health
            await eventually(lambda: busy.state == "failed", what="the busy port reported")
            assert f"cannot listen on 127.0.0.1:{port}" in busy.reason
            assert "already uses this port" in busy.reason
            assert lab.daemon.runners["an-0"].health.state == "down"  # the other link is unaffected
            squatter.close()
            await eventually(lambda: busy.state == "down" and busy.listening == f"127.0.0.1:{port}",
                             timeout=15, what="the listener bound once the port was free")
            sim = lab.analyzer("an-1", messages=1)
            await sim.run(asyncio.Event())
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="delivery through it")

    try:
        run(body())
    finally:
        squatter.close()
