"""The dashboard's server side on a real daemon over loopback: the server-sent events (snapshot, changes,
keep-alive comments, the bounded per-client queue, a clean end at shutdown), the instrument page's reads
(recent messages with patients' identifiers masked by default, dead letters) and their refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from labbridge.web import events
from labbridge.web.events import QUEUE_SIZE
from labbridge.web.instrument_page import MASK
from labbridge.web.server import WebServer
from tests.conftest import run
from tests.integration.helpers import eventually, running_lab

pytestmark = pytest.mark.slow


class EventReader:
    """Reads a text/event-stream as the browser's EventSource would: events and comment lines."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[tuple[str, Any]] = []
        self.comments: list[str] = []
        self.ended = False

    async def run(self) -> None:
        name, data = "message", ""
        while True:
            line = await self.response.content.readline()
            if not line:
                self.ended = True  # the server ended the stream (EOF), no error
                return
            text = line.decode().rstrip("\n")
            if text.startswith(":"):
                self.comments.append(text)
            elif text.startswith("event: "):
                name = text.removeprefix("event: ")
            elif text.startswith("data: "):
                data = text.removeprefix("data: ")
            elif text == "" and data:
                self.events.append((name, json.loads(data)))
                name, data = "message", ""

    def named(self, name: str) -> list[Any]:
        return [data for n, data in self.events if n == name]


def test_events_stream_snapshot_changes_keepalive_and_a_clean_end(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_S", 0.5)

    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            async with running_lab(tmp_path, instruments=2, http=True) as lab:
                assert lab.daemon.http_address is not None
                host, port = lab.daemon.http_address
                base = f"http://{host}:{port}"
                response = await session.get(f"{base}/api/events")
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                reader = EventReader(response)
                task = asyncio.create_task(reader.run())
                await eventually(lambda: bool(reader.named("snapshot")), what="the snapshot")
                first = reader.named("snapshot")[0]
                assert {i["id"] for i in first["instruments"]} == {"an-0", "an-1"}
                assert {s["id"] for s in first["sites"]} == {"arlon", "virton"}
                assert [d["id"] for d in first["destinations"]] == ["lis"]
                assert {s["id"] for s in first["campaign"]["sites"]} == {"arlon", "virton"}
                # Nothing happens: comment lines keep the stream open.
                await eventually(lambda: ": keep-alive" in reader.comments, what="a keep-alive comment")

                sim = lab.analyzer("an-0", messages=2)
                await sim.run(asyncio.Event())
                await eventually(lambda: any(i["id"] == "an-0" and i["messages_received"] == 2
                                             for i in reader.named("instrument")), what="the instrument's event")
                await eventually(lambda: any(t.get("an-0", {}).get("messages") == 2 for t in reader.named("today")),
                                 what="today's figures")
                async with session.post(f"{base}/api/instruments/an-1/rollback",
                                        json={"by": "test", "reason": "wrong results seen"}) as done:
                    assert done.status == 200, await done.text()
                await eventually(lambda: any(r["id"] == "an-1" and r["stage"] == "rolled-back"
                                             for c in reader.named("campaign") for s in c["sites"]
                                             for r in s["instruments"]), what="the campaign's event")
            # The daemon stopped with the stream open: it was ended, not cut, and did not hold the shutdown.
            await asyncio.wait_for(task, 30)
            assert reader.ended
            response.release()

    run(body(), timeout=120)


def test_a_client_that_does_not_read_gets_a_snapshot_instead_of_an_unbounded_queue(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            server = WebServer(lab.daemon)
            await server.start("127.0.0.1", 0)
            try:
                hub = server.events
                client, books = await hub.join()
                assert [i["id"] for i in books["instruments"]] == ["an-0"]
                for n in range(QUEUE_SIZE + 10):
                    hub.publish("instrument", {"id": "an-0", "n": n})
                assert client.queue.qsize() <= QUEUE_SIZE
                assert hub.overflows == 1
                head = client.queue.get_nowait().decode()
                assert "event: snapshot" in head and '"instruments"' in head
            finally:
                await server.stop()
            # Shut down with the client still there: its stream is told to end.
            assert client.queue.get_nowait() == b"" and client.queue.empty()

    run(body(), timeout=60)


def test_recent_messages_mask_patient_identifiers_unless_the_config_allows(tmp_path: Path) -> None:
    async def body(show: bool) -> None:
        extra = {"dashboard": {"show_patient_identifiers": True}} if show else None
        async with aiohttp.ClientSession() as session, \
                running_lab(tmp_path / str(show), instruments=1, http=True, extra=extra) as lab:
            assert lab.daemon.http_address is not None
            host, port = lab.daemon.http_address
            base = f"http://{host}:{port}"
            sim = lab.analyzer("an-0", messages=3)
            await sim.run(asyncio.Event())
            async with session.get(f"{base}/api/instruments/an-0/messages?limit=2") as r:
                assert r.status == 200
                got = await r.json()
            assert got["identifiers"] == ("shown" if show else "masked")
            assert len(got["messages"]) == 2  # newest first, at most the limit
            results = [res for m in got["messages"] for res in m["results"]]
            assert results and all(m["status"] == "decoded" for m in got["messages"])
            sent = {identity[1] for identity in sim.acked}
            for res in results:
                if show:
                    assert res["sample_id"] in sent and res["patient_id"] not in ("", MASK)
                else:
                    assert res["sample_id"] not in sent and res["sample_id"].startswith("•••")
                    assert res["patient_id"] == MASK
                    assert any(s.endswith(res["sample_id"].removeprefix("•••")) for s in sent)
            async with session.get(f"{base}/api/instruments/an-0/dead-letters") as r:
                assert r.status == 200 and (await r.json()) == {"instrument": "an-0", "items": []}
            for url, status in ((f"{base}/api/instruments/nope/messages", 404),
                                (f"{base}/api/instruments/an-0/messages?limit=0", 400),
                                (f"{base}/api/instruments/an-0/messages?limit=x", 400),
                                (f"{base}/api/instruments/nope/dead-letters", 404),
                                (f"{base}/instruments/an-0", 200), (f"{base}/instruments/nope", 404),
                                (f"{base}/static/dashboard.js", 200), (f"{base}/static/..%2Fserver.py", 404)):
                async with session.get(url) as r:
                    assert r.status == status, url

    run(body(False), timeout=60)
    run(body(True), timeout=60)
