"""API inputs are checked and bounded over real HTTP: limits 1..1000, ids positive and within SQLite's 64-bit
range, seconds finite and not negative; each bad value is a 400 naming the parameter, never a 500, a silent
clamp or a read of the whole store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import run
from tests.integration.helpers import running_lab

HUGE = "9" * 30


async def call(client: aiohttp.ClientSession, method: str, path: str, body: Any = None,
               raw: str | None = None) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {}
    if raw is not None:
        kwargs = {"data": raw, "headers": {"Content-Type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    async with client.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


def test_bad_api_inputs_are_400s_that_name_the_parameter(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, http=True) as lab:
            sim = lab.analyzer("an-0", messages=2)
            await sim.run(asyncio.Event())
            http = lab.daemon.http_address
            assert http is not None
            async with aiohttp.ClientSession(base_url=f"http://{http[0]}:{http[1]}") as client:
                bad_gets = {
                    "/api/outbox/items?limit=-1": "limit", "/api/outbox/items?limit=0": "limit",
                    "/api/outbox/items?limit=1001": "limit", "/api/outbox/items?limit=abc": "limit",
                    "/api/outbox/items?limit=%D9%A1%D9%A2": "limit",  # Arabic-Indic digits: int() would take them
                    f"/api/outbox/items?limit={HUGE}": "limit", "/api/outbox/items?state=gone": "state",
                    "/api/audit?limit=-1": "limit", "/api/orders?limit=-1": "limit",
                    f"/api/orders/{HUGE}": "id", "/api/orders/0": "id", "/api/orders/-3": "id",
                    f"/api/instruments/an-0/history?days={HUGE}": "days",
                }
                for path, name in bad_gets.items():
                    status, answer = await call(client, "GET", path)
                    assert status == 400 and answer["parameter"] == name and name in answer["error"], (path, answer)
                status, rows = await call(client, "GET", "/api/outbox/items?limit=1000")
                assert status == 200 and len(rows) == 2
                status, rows = await call(client, "GET", "/api/outbox/items?limit=1")
                assert status == 200 and len(rows) == 1
                status, answer = await call(client, "POST", f"/api/orders/{HUGE}/cancel", {})
                assert status == 400 and answer["parameter"] == "id"
                status, answer = await call(client, "GET", "/api/orders/12345")
                assert status == 404

                for ids in ([2**70], [-1], [0], [], [True], ["1"], list(range(1, 1003))):
                    status, answer = await call(client, "POST", "/api/outbox/retry", {"ids": ids, "by": "t"})
                    assert status == 400 and answer["parameter"] == "ids", (ids, answer)
                purge = '{"confirm": true, "by": "t", "reason": "r", "state": "dead", "older_than_s": %s}'
                for older in ("NaN", "Infinity", "-Infinity", "-1", "1e400", '"3600"', "true"):
                    status, answer = await call(client, "POST", "/api/outbox/purge", raw=purge % older)
                    assert status == 400 and answer["parameter"] == "older_than_s", (older, answer)
                status, answer = await call(client, "POST", "/api/outbox/purge", raw=purge % "0")
                assert status == 200, answer
                status, answer = await call(client, "POST", "/api/outbox/retry",
                                            {"ids": [1], "by": "t" * 201})
                assert status == 400 and answer["parameter"] == "by"
            assert (await lab.daemon.store.counts())["messages"] == 2

    run(body())
