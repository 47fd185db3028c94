"""``labbridge fleet serve``: the fleet's dashboard, read from a broker (read-only; it opens no store).

Routes: ``/`` the page (:func:`labbridge.fleet.render.page`), ``/api/fleet`` the JSON of ``labbridge fleet --json``.
Bound to 127.0.0.1 by default, like the node's own dashboard.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from labbridge.fleet import render
from labbridge.fleet.broker import Broker
from labbridge.fleet.view import FleetView
from labbridge.fleet.watch import follow


class FleetServer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.view = FleetView()
        self.link = ("connecting", f"connecting to {broker.url}")
        self.app = web.Application()
        self.app.add_routes([web.get("/", self.index), web.get("/api/fleet", self.fleet)])
        self.runner: web.AppRunner | None = None
        self._follow: asyncio.Task[None] | None = None

    def _state(self, state: str, reason: str) -> None:
        self.link = (state, reason)

    def snapshot(self) -> dict[str, object]:
        return {**self.view.to_json(time.time()), "broker": {"url": self.broker.url, "state": self.link[0],
                                                               "reason": self.link[1]}}

    async def index(self, _request: web.Request) -> web.Response:
        return web.Response(text=render.page(self.view.to_json(time.time()), broker=self.broker.url,
                                             link=f"{self.link[0]}: {self.link[1]}"), content_type="text/html")

    async def fleet(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._follow = asyncio.create_task(follow(self.broker, self.view, on_state=self._state))
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sockname = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        return str(sockname[0]), int(sockname[1])

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
