"""Credentials in an HTTP LIS destination's URL are used to connect (the LIS checks them) but never shown: not by
/api/outbox, not in the errors kept in the store, not in logs, not by check-config (the password is ***)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from labbridge import logs
from labbridge.cli import main
from tests.conftest import run
from tests.integration.helpers import eventually, running_lab

SECRET = "s3cret-Pw"
BASIC = "Basic " + base64.b64encode(f"lab:{SECRET}".encode()).decode()


def test_a_lis_password_is_used_but_never_served_or_logged(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           logging_restored: Any) -> None:
    logs.configure("info", json=True)
    posts: list[str] = []

    async def results(request: web.Request) -> web.Response:
        posts.append(request.headers.get("Authorization", ""))
        if len(posts) == 1:
            return web.Response(status=503, text="busy")  # the first try fails: an error naming the URL
        return web.Response(status=200 if request.headers.get("Authorization") == BASIC else 401)

    async def body() -> None:
        app = web.Application()
        app.router.add_post("/results", results)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://lab:{SECRET}@127.0.0.1:{port}/results"
        extra = {"lis": [{"id": "his", "kind": "http", "url": url, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}]}
        try:
            async with running_lab(tmp_path, instruments=1, http=True, extra=extra) as lab:
                sim = lab.analyzer("an-0", messages=1)
                await asyncio.wait_for(sim.run(asyncio.Event()), 30)
                await eventually(lambda: len(posts) >= 2, what="the results posted again after the 503")
                assert posts[-1] == BASIC  # the configured credentials went to the LIS
                http = lab.daemon.http_address
                assert http is not None
                async with aiohttp.ClientSession() as client:
                    base = f"http://{http[0]}:{http[1]}"
                    async with client.get(f"{base}/api/outbox") as resp:
                        outbox = await resp.text()
                    async with client.get(f"{base}/api/outbox/items") as resp:
                        items = await resp.text()
                assert SECRET not in outbox and SECRET not in items
                assert f"lab:***@127.0.0.1:{port}" in outbox
        finally:
            await runner.cleanup()

    run(body())
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "lab:***@" in captured.err  # the failed first try was logged, without the password

    config = tmp_path / "lab.toml"
    config.write_text(f"""
[[sites]]
id = "arlon"
name = "Arlon"

[[lis]]
id = "his"
kind = "http"
url = "https://lab:{SECRET}@lis.example/results"
""", encoding="utf-8")
    assert main(["check-config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "https://lab:***@lis.example/results" in shown and SECRET not in shown
    config.write_text(config.read_text(encoding="utf-8").replace("https://", "ftp://"), encoding="utf-8")
    assert main(["check-config", str(config)]) == 2
    refused = capsys.readouterr()
    assert "ftp://lab:***@lis.example" in refused.err and SECRET not in refused.out + refused.err
