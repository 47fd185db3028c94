"""Build a lab on loopback for a test: config, daemon, simulated LIS and analyzers (all on port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory
from labbridge_simulators.lis import SimulatedLis

from labbridge.config import Config, MllpDestination, parse_config
from labbridge.relay.relay import Relay
from labbridge.runtime.daemon import Daemon
from labbridge.store.db import Store
from labbridge.web import surfaces_for


def lab_config(tmp_path: Path, *, instruments: int, lis_port: int, http: bool = False,
               extra_lis: dict[str, Any] | None = None, drivers: list[str] | None = None,
               extra_instrument: dict[str, Any] | None = None,
               overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``overrides`` maps an instrument id (``an-0``...) to keys replacing its defaults (``link``, ``transport``)."""
    return {
        "node": "test",
        "store": {"path": str(tmp_path / "labbridge.db")},
        "http": {"enabled": http, "host": "127.0.0.1", "port": 0},
        "sites": [{"id": "arlon", "name": "Arlon"}, {"id": "virton", "name": "Virton"}],
        "instruments": [
            {"id": f"an-{i}", "site": "arlon" if i % 2 == 0 else "virton",
             "driver": drivers[i] if drivers else "astm-generic",
             "transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0}, **(extra_instrument or {}),
             **(overrides or {}).get(f"an-{i}", {})}
            for i in range(len(drivers) if drivers else instruments)
        ],
        "lis": [{"id": "lis", "host": "127.0.0.1", "port": lis_port, "ack_timeout_s": 2.0,
                 "connect_timeout_s": 2.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.3,
                 **(extra_lis or {})}],
    }


@dataclass
class Lab:
    daemon: Daemon
    lis: SimulatedLis
    config: Config

    def analyzer(self, instrument: str, *, messages: int, tests: int = 5, **kwargs: Any) -> AstmAnalyzerSim:
        runner = self.daemon.runners[instrument]
        assert runner.bound is not None
        return AstmAnalyzerSim(instrument, runner.bound,
                               MessageFactory(instrument, sample_prefix=f"{instrument}-", panel_size=tests, seed=1),
                               interval=(0.0, 0.01), max_messages=messages, **kwargs)


@contextlib.asynccontextmanager
async def running_lab(tmp_path: Path, *, instruments: int = 2, http: bool = False,
                      extra_lis: dict[str, Any] | None = None, drivers: list[str] | None = None,
                      extra_instrument: dict[str, Any] | None = None,
                      overrides: dict[str, dict[str, Any]] | None = None,
                      extra: dict[str, Any] | None = None, lis: SimulatedLis | None = None) -> AsyncIterator[Lab]:
    own_lis = lis is None
    lis = lis or SimulatedLis()
    if own_lis:
        await lis.start()
    config = parse_config({**lab_config(tmp_path, instruments=instruments, lis_port=lis.port, http=http,
                                        extra_lis=extra_lis, drivers=drivers, extra_instrument=extra_instrument,
                                        overrides=overrides), **(extra or {})})
    try:
        async with daemon_running(Daemon(config), config) as daemon:
            yield Lab(daemon, lis, config)
    finally:
        if own_lis:
            await lis.stop()


@contextlib.asynccontextmanager
async def daemon_running(daemon: Daemon, config: Config) -> AsyncIterator[Daemon]:
    """``daemon`` running with the surfaces ``config`` asks for, from once it started to the end of the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop, surfaces=surfaces_for(config)))
    try:
        started = asyncio.create_task(daemon.started.wait())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield daemon
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


async def eventually(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def free_port() -> int:
    """A loopback port free right now, for tests where several instruments must share one known port.

    (A port-0 listener cannot be shared by configuration.) Another process could take it before the
    daemon binds; the daemon then reports the port as busy and the test fails loudly, never silently.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def relaying(store: Store, port: int, *, connections: int = 1, timeout_s: float = 5.0) -> AsyncIterator[Relay]:
    """A relay to the MLLP LIS on ``port`` of this host, running until the block ends (quick backoff)."""
    dest = MllpDestination(id="lis", host="127.0.0.1", port=port, connections=connections, ack_timeout_s=timeout_s,
                           connect_timeout_s=timeout_s, backoff_initial_s=0.05, backoff_max_s=0.2)
    relay = Relay(dest, store, asyncio.Event())
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
