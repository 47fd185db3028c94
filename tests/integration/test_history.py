"""Link history over a real daemon: written off the data path, read over HTTP, kept across restarts, pruned."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from labbridge.store import history as stored
from labbridge.store.db import Store
from labbridge.store.history import DayFigures, HistoryBatch, StateChange
from tests.conftest import run
from tests.integration.helpers import Lab, eventually, running_lab

FAST = {"history": {"sample_interval_s": 0.2}}


async def get(lab: Lab, path: str) -> tuple[int, Any]:
    assert lab.daemon.http_address is not None
    host, port = lab.daemon.http_address
    async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}{path}") as response:
        return response.status, await response.json()


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def seconds_from_changes(history: dict[str, Any]) -> dict[str, float]:
    """Each state's time from the timeline of changes, up to ``now``; ``stopped`` starts a gap (not counted)."""
    timeline = [(epoch(c["at"]), c["state"]) for c in history["changes"]] + [(epoch(history["now"]), "")]
    out: dict[str, float] = {}
    for (at, state), (until, _) in itertools.pairwise(timeline):
        if state != "stopped":
            out[state] = out.get(state, 0.0) + until - at
    return out


def daily_total(history: dict[str, Any], group: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in history["daily"]:
        for name, value in row[group].items():
            out[name] = out.get(name, 0) + value
    return out


async def send_and_disconnect(lab: Lab, messages: int) -> None:
    sim = lab.analyzer("an-0", messages=messages)
    await asyncio.wait_for(sim.run(asyncio.Event()), 60)
    assert sim.done()  # every message acknowledged, so committed
    health = lab.daemon.runners["an-0"].health
    await eventually(lambda: health.peer is None and health.state in ("down", "idle"), what="the analyzer gone")


def test_history_is_read_over_http_adds_up_and_survives_a_restart(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=2, http=True, extra=FAST) as lab:
            await send_and_disconnect(lab, 3)
            status, first = await get(lab, "/api/instruments/an-0/history?days=1")
            assert status == 200 and first["id"] == "an-0" and first["days"] == 1 and first["before"] is None
            states = [c["state"] for c in first["changes"]]
            assert states[0] == "connecting" and "up" in states and states[-1] in ("down", "idle")
            assert daily_total(first, "counters")["messages_received"] == 3
            assert daily_total(first, "counters")["results_received"] == 15  # 3 samples x 5 tests
            # Time in each state per day is the timeline of changes summed (to the milliseconds they are shown in).
            by_changes = seconds_from_changes(first)
            by_day = {s: v for s, v in daily_total(first, "seconds").items() if v}
            assert by_day.keys() == by_changes.keys()
            for state, seconds in by_changes.items():
                assert abs(by_day[state] - seconds) < 0.005 * len(states), (state, by_day, by_changes)

            # The other instrument has its own history; an unknown one and bad days are refused.
            status, other = await get(lab, "/api/instruments/an-1/history")
            assert status == 200 and other["days"] == 7
            assert daily_total(other, "counters").get("messages_received", 0) == 0
            assert (await get(lab, "/api/instruments/nope/history"))[0] == 404
            for bad in ("0", "367", "a-week"):
                status, answer = await get(lab, f"/api/instruments/an-0/history?days={bad}")
                assert status == 400 and "days" in answer["error"]

        # Same store, new daemon: counters restart at 0 in memory, the store adds to the day.
        async with running_lab(tmp_path, instruments=2, http=True, extra=FAST) as lab:
            await send_and_disconnect(lab, 2)
            status, second = await get(lab, "/api/instruments/an-0/history?days=1")
            assert status == 200
            assert second["changes"][:len(first["changes"])] == first["changes"]  # the old ones are still there
            added = [c["state"] for c in second["changes"][len(first["changes"]):]]
            # Then its states as judged this time (traffic is now learned from the store: up, or idle at once).
            assert added[0] == "stopped" and added[1] == "connecting" and len(added) >= 3
            assert added[-1] in ("down", "idle")
            counters = daily_total(second, "counters")
            assert counters["messages_received"] == 5
            assert counters["results_received"] + counters["duplicate_results"] == 25
            by_changes = seconds_from_changes(second)  # the gap while stopped counts for no state
            by_day = {s: v for s, v in daily_total(second, "seconds").items() if v}
            for state, seconds in by_changes.items():
                assert abs(by_day[state] - seconds) < 0.005 * len(second["changes"]), (state, by_day, by_changes)

    run(body())


def test_a_history_store_failure_is_logged_retried_and_never_holds_up_results(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=FAST) as lab:
            history = lab.daemon.history
            await eventually(lambda: history.writes >= 1, what="a first history write")
            side = sqlite3.connect(lab.config.store.path, timeout=30)
            with structlog.testing.capture_logs() as logs:
                # A real SQLite failure of the history's writes only: its table is gone.
                side.execute("ALTER TABLE link_states RENAME TO link_states_away")
                side.commit()
                await send_and_disconnect(lab, 4)  # every message stored and acknowledged meanwhile
                await eventually(lambda: history.write_failures >= 3, what="history writes refused")
                assert (await lab.daemon.store.counts())["messages"] == 4
                side.execute("ALTER TABLE link_states_away RENAME TO link_states")
                side.commit()
                await eventually(lambda: history.failing is None, what="history writes again")
            events = [e["event"] for e in logs]
            assert events.count("history_write_failed") == 1  # logged once, not on every retry
            assert "history_write_recovered" in events
            found = await lab.daemon.instrument_history("an-0", 1)
            assert found is not None
            assert daily_total(found, "counters")["messages_received"] == 4  # nothing lost while refused
            states = [c["state"] for c in found["changes"]]
            assert "up" in states and states[-1] in ("down", "idle")
            side.close()

    run(body())


def test_retention_prunes_old_history(tmp_path: Path) -> None:
    now = time.time()
    old_day = datetime.fromtimestamp(now - 5 * 86400).date().isoformat()

    async def seed() -> None:
        async with Store(tmp_path / "labbridge.db") as store:
            await store.write_relaxed(stored.record, HistoryBatch(
                [StateChange("an-0", now - 5 * 86400, "up", "old"), StateChange("an-0", now - 3600, "down", "recent")],
                [DayFigures("an-0", old_day, {"up": 100.0}, {"messages_received": 7})]))

    async def body() -> None:
        await seed()
        async with running_lab(tmp_path, instruments=1, extra={**FAST, "retention": {"history_days": 2}}) as lab:
            def reasons() -> list[str]:
                with sqlite3.connect(lab.config.store.path) as conn:
                    return [r[0] for r in conn.execute("SELECT reason FROM link_states ORDER BY at")]

            await eventually(lambda: "old" not in reasons(), what="old state changes pruned")
            assert reasons()[0] == "recent"
            found = await lab.daemon.instrument_history("an-0", 30)
            assert found is not None
            assert old_day not in [row["day"] for row in found["daily"]]
            assert found["before"] is None and found["changes"][0]["reason"] == "recent"

    run(body())
