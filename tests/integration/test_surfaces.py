"""The daemon runs with the surfaces its caller gives it, and shows them in its ready file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from labbridge.config import parse_config
from labbridge.runtime.api import DaemonApi
from labbridge.runtime.daemon import Daemon
from tests.conftest import run
from tests.integration.helpers import lab_config


class Probe:
    """A surface that reads the daemon through its API when started and remembers what it saw."""

    name = "probe"

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}
        self.stopped = False

    async def start(self, api: DaemonApi) -> tuple[str, int]:
        self.seen = {"node": api.node, "instruments": [i["id"] for i in api.instruments_json()],
                     "destinations": [d["id"] for d in api.destinations_json()],
                     "orders": await api.orders.list_orders()}
        return "127.0.0.1", 4321

    async def stop(self) -> None:
        self.stopped = True


def test_the_daemon_starts_and_stops_the_surfaces_it_is_given_and_lists_them(tmp_path: Path) -> None:
    # [http] is enabled, but no HTTP surface is given: the daemon itself serves nothing over HTTP.
    config = parse_config(lab_config(tmp_path, instruments=2, lis_port=9, http=True))
    ready = tmp_path / "ready.json"
    probe = Probe()

    async def body() -> None:
        daemon = Daemon(config, ready_file=ready)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop, surfaces=[probe]))
        started = asyncio.create_task(daemon.started.wait())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done()
        endpoints = json.loads(ready.read_text())
        assert endpoints["probe"] == {"host": "127.0.0.1", "port": 4321}
        assert endpoints["http"] is None and daemon.http_address is None
        assert probe.seen == {"node": "test", "instruments": ["an-0", "an-1"], "destinations": ["lis"], "orders": []}
        assert not probe.stopped
        stop.set()
        await task
        assert probe.stopped and not ready.exists()

    run(body(), timeout=30)
