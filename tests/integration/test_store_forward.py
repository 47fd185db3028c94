"""Store and forward over real sockets: dead letters an operator can act on (CLI and HTTP API, daemon
running or stopped), backlog pacing, file and HTTP destinations, a LIS dying mid-ACK, a full store."""

from __future__ import annotations

import asyncio
import getpass
import json
import sqlite3
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import hl7
from aiohttp import web
from labbridge_simulators.lis import SimulatedLis

from labbridge.cli.local import local_actor
from tests.conftest import run
from tests.integration.helpers import eventually, lab_config, running_lab
from tests.integration.test_crash import write_toml

MAPPED = {"GLU": "GLUC", "CREA": "CREAT"}  # the panel's third test, UREA, is not mapped


async def labbridge(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run the real `labbridge` command in a subprocess (without blocking the daemon in this process)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "labbridge.cli", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_unmapped_code_is_dead_lettered_then_redecoded_offline_after_the_mapping_is_fixed(tmp_path: Path) -> None:
    async def body() -> None:
        lis = SimulatedLis()
        await lis.start()
        try:
            unmapped = {"unmapped_tests": "dead-letter", "test_map": MAPPED}
            async with running_lab(tmp_path, instruments=1, extra_instrument=unmapped, lis=lis) as lab:
                sim = lab.analyzer("an-0", messages=2, tests=3)
                await sim.run(asyncio.Event())
                assert len(sim.acked) == 6  # stored (raw included), so acknowledged
                mapped = {r for r in sim.acked if r[2] in MAPPED}
                await eventually(lambda: mapped <= lis.delivered, what="the mapped results")
                assert not any(r[2] == "UREA" for r in lis.delivered)
                dead = await lab.daemon.store.outbox_rows(state="dead")
                assert len(dead) == 2 and {d["dead_kind"] for d in dead} == {"unmapped"}
                assert "unmapped test code(s) UREA from instrument an-0" in dead[0]["last_error"]
            # The daemon is stopped. A technician adds the mapping and retries from the store file.
            fixed = lab_config(tmp_path, instruments=1, lis_port=lis.port,
                               extra_instrument={"unmapped_tests": "dead-letter",
                                                 "test_map": {**MAPPED, "UREA": "UREA"}})
            config = tmp_path / "fixed.toml"
            write_toml(config, fixed)
            code, out, err = await labbridge("outbox", "list", "-c", str(config), "--state", "dead", "--json")
            assert code == 0, err
            assert [r["dead_kind"] for r in json.loads(out)] == ["unmapped", "unmapped"]
            code, out, err = await labbridge("outbox", "retry", "--all-dead", "-c", str(config),
                                             "--reason", "UREA mapped", "--by", "tech-anna")
            assert code == 0, out + err
            assert out.count("redecoded") == 2
            # Retried again by mistake: nothing left to retry, nothing queued twice.
            code, out, _ = await labbridge("outbox", "retry", "--all-dead", "--store", str(tmp_path / "labbridge.db"),
                                           "--reason", "again")
            assert code == 0 and out == ""
            async with running_lab(tmp_path, instruments=1, extra_instrument={"test_map": fixed["instruments"][0]
                                                                              ["test_map"]}, lis=lis):
                await eventually(lambda: set(sim.acked) <= lis.delivered, what="the re-decoded results")
            assert lis.duplicates == 0 and lis.delivered == set(sim.acked)
        finally:
            await lis.stop()
        conn = sqlite3.connect(tmp_path / "labbridge.db")
        audit = conn.execute("SELECT actor, action, reason FROM audit ORDER BY id").fetchall()
        # On the store file the trail names the OS account that ran the command, not --by's free text.
        assert audit == [(local_actor(), "retry", "UREA mapped")] * 2

    run(body(), timeout=90)


def test_operator_tools_against_a_running_daemon_and_the_lis_rejection_reason(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, http=True) as lab:
            assert lab.daemon.http_address is not None
            url = "http://{}:{}".format(*lab.daemon.http_address)
            lab.lis.mode = "AE"
            lab.lis.error_text = "unknown test code GLU"
            sim = lab.analyzer("an-0", messages=2)
            await sim.run(asyncio.Event())
            await eventually(lambda: lab.daemon.relays[0].health.dead_lettered == 2, what="dead letters")
            code, out, err = await labbridge("outbox", "list", "--url", url, "--state", "dead")
            assert code == 0, err
            assert out.count("[lis-rejected] LIS answered AE: unknown test code GLU") == 2
            dead = json.loads((await labbridge("outbox", "list", "--url", url, "--state", "dead", "--json"))[1])
            lab.lis.mode = "AA"
            code, out, err = await labbridge("outbox", "retry", str(dead[0]["id"]), "--url", url,
                                             "--reason", "LIS test table fixed", "--by", "it-bob")
            assert code == 0 and "queued" in out, out + err
            await eventually(lambda: len(lab.lis.booked) == 1, what="the retried item at the LIS")
            code, out, _ = await labbridge("outbox", "retry", "--all-dead", "--url", url, "--reason", "all")
            assert code == 0
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="every result")
            code, out, err = await labbridge("outbox", "purge", "--state", "delivered", "--url", url,
                                             "--reason", "tidy", "--by", "it-bob")
            assert code != 0 and "--yes" in err  # no terminal, no --yes: refused
            code, out, err = await labbridge("outbox", "purge", "--state", "delivered", "--url", url,
                                             "--reason", "tidy", "--by", "it-bob", "--yes")
            assert code == 0 and "purged 2 item(s)" in out, out + err
            code, out, err = await labbridge("status", "--url", url)  # exit codes: tests/integration/test_status_cli.py
            assert code in (0, 1) and "store " in out and "MB" in out, err
            async with aiohttp.ClientSession() as http:  # in-loop client: the daemon runs in this loop
                async with http.get(f"{url}/api/audit") as resp:
                    audit = await resp.json()
                async with http.get(f"{url}/metrics") as resp:
                    metrics = await resp.text()
                # State-changing routes take JSON only and a purge must be confirmed.
                async with http.post(f"{url}/api/outbox/purge", data=b"state=dead",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
                    assert resp.status == 415
                unconfirmed = {"state": "dead", "by": "x", "reason": "y"}
                async with http.post(f"{url}/api/outbox/purge", json=unconfirmed) as resp:
                    assert resp.status == 400 and "confirm" in (await resp.json())["error"]
            # Authentication off (loopback): the name given, marked as nobody having checked it.
            assert [(a["actor"], a["action"]) for a in audit][::-1] == [
                ("unverified:it-bob", "retry"), (audit[1]["actor"], "retry"), ("unverified:it-bob", "purge")]
            assert audit[1]["actor"] == f"unverified:{getpass.getuser()}"  # the OS user when --by is not given
            assert "labbridge_store_commit_group_size_bucket" in metrics
            assert 'labbridge_store_bytes{file="db"}' in metrics and "labbridge_store_commits_total" in metrics
            assert "labbridge_store_writer_restarts_total 0.0" in metrics
            assert "labbridge_store_checkpoints_total" in metrics
            assert "labbridge_store_checkpoint_seconds_total" in metrics
            assert "labbridge_store_wal_restarts_total" in metrics
            assert "labbridge_store_intake_waits_total 0.0" in metrics

    run(body(), timeout=90)


def test_backlog_is_labelled_paced_and_live_results_go_first(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=2, http=False, extra_lis={"backlog_per_minute": 300.0},
                               extra={"backlog": {"older_than_s": 4 * 3600.0}}) as lab:
            await lab.lis.go_down()
            old = lab.analyzer("an-0", messages=8, tests=2)
            old.factory.measured_age = timedelta(hours=20)  # kept by the analyzer during an outage
            await old.run(asyncio.Event())
            live = lab.analyzer("an-1", messages=3, tests=2)
            await live.run(asyncio.Event())
            counts = await lab.daemon.store.counts()
            assert counts["outbox"]["lis"]["backlog_pending"] == 8 and counts["backlog_results"] == 16
            await lab.lis.come_back()
            started = time.monotonic()
            await eventually(lambda: set(old.acked) | set(live.acked) <= lab.lis.delivered, what="everything")
            elapsed = time.monotonic() - started
            # Live results first (one backlog item may already be in the relay's hands when the LIS returns).
            order = [b.results[0][0] for b in lab.lis.booked.values()]
            assert order[:4].count("an-1") == 3, order
            assert elapsed >= 7 * 0.2 * 0.9  # 300 per minute: one backlog item every 0.2 s
            assert lab.lis.duplicates == 0
            # The relay counts a delivery once the LIS's ACK is recorded, just after the LIS booked it.
            await eventually(lambda: lab.daemon.relays[0].health.backlog_delivered == 8, what="backlog counted")
            counts = await lab.daemon.store.counts()
            assert counts["outbox"]["lis"]["backlog_delivered"] == 8

    run(body(), timeout=60)


class HttpLis:
    """A real aiohttp server on loopback port 0, answering like a REST LIS would."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.fail_next = 1  # first request: 503
        self.refuse_sample = ""
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503, text="maintenance")
        if body["sample_id"] == self.refuse_sample:
            return web.json_response({"reason": "specimen not registered"}, status=422)
        self.received.append((request.headers["Idempotency-Key"], body))
        return web.json_response({"ok": True}, status=201)

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/results", self.handle)])
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def test_file_drop_and_http_destinations_with_the_same_outbox_semantics(tmp_path: Path) -> None:
    async def body() -> None:
        http_lis = HttpLis()
        await http_lis.start()
        drops = {fmt: tmp_path / f"drop-{fmt}" for fmt in ("json", "hl7", "astm")}
        for folder in drops.values():
            folder.mkdir()
        fast = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}
        lis = [{"id": f"files-{fmt}", "kind": "file", "directory": str(folder), "format": fmt, **fast}
               for fmt, folder in drops.items()]
        lis.append({"id": "rest", "kind": "http", "url": f"http://127.0.0.1:{http_lis.port}/results",
                    "timeout_s": 5.0, **fast})
        try:
            async with running_lab(tmp_path, instruments=1, extra={"lis": lis}) as lab:
                sim = lab.analyzer("an-0", messages=4, tests=3)
                http_lis.refuse_sample = "an-0-000003"
                await sim.run(asyncio.Event())
                samples = {r[1] for r in sim.acked}
                await eventually(lambda: all(len(list(f.iterdir())) == 4 for f in drops.values()), what="files")
                relay = next(r for r in lab.daemon.relays if r.dest.id == "rest")
                await eventually(lambda: len(http_lis.received) == 3 and relay.health.dead_lettered == 1,
                                 what="HTTP deliveries")
                # The relay marks an accepted item delivered without holding the next send for that commit.
                rows = await lab.daemon.store.outbox_rows(destination="files-json")
                for _ in range(100):
                    if all(r["state"] == "delivered" for r in rows):
                        break
                    await asyncio.sleep(0.05)
                    rows = await lab.daemon.store.outbox_rows(destination="files-json")
                assert all(r["state"] == "delivered" for r in rows)
                # One file per message, named by its stable control ID; no temporary file left behind.
                assert {p.name for p in drops["json"].iterdir()} == {f"{r['control_id']}.json" for r in rows}
                booked = set()
                for path in drops["json"].iterdir():
                    data = json.loads(path.read_text())
                    assert data["control_id"] == path.stem
                    booked |= {(r["instrument"], r["sample_id"], r["instrument_test_code"], r["value"])
                               for r in data["results"]}
                assert booked == set(sim.acked)
                for path in drops["hl7"].iterdir():
                    message = hl7.parse(path.read_text(encoding="utf-8"))
                    assert str(message.segment("MSH")[10]) == path.stem
                for path in drops["astm"].iterdir():
                    records = path.read_bytes().split(b"\r")
                    assert records[0].startswith(b"H|\\^&|") and records[-2] == b"L|1|N"
                    assert sum(1 for rec in records if rec.startswith(b"R|")) == 3
                # HTTP: the control ID is the Idempotency-Key; 503 was retried; 422 is a dead letter with the reason.
                assert {key for key, b in http_lis.received} == {b["control_id"] for _, b in http_lis.received}
                assert {b["sample_id"] for _, b in http_lis.received} == samples - {"an-0-000003"}
                dead = await lab.daemon.store.outbox_rows(state="dead", destination="rest")
                assert dead[0]["last_error"] == "LIS answered HTTP 422: specimen not registered"
        finally:
            await http_lis.stop()

    run(body(), timeout=60)


def test_file_drop_into_a_missing_folder_waits_and_reports_why(tmp_path: Path) -> None:
    async def body() -> None:
        folder = tmp_path / "share"
        lis = [{"id": "files", "kind": "file", "directory": str(folder), "format": "json",
                "backoff_initial_s": 0.05, "backoff_max_s": 0.2}]
        async with running_lab(tmp_path, instruments=1, extra={"lis": lis}) as lab:
            sim = lab.analyzer("an-0", messages=2, tests=2)
            await sim.run(asyncio.Event())
            health = lab.daemon.relays[0].health
            await eventually(lambda: health.state == "down", what="destination down")
            assert "does not exist (is the share mounted?)" in health.reason
            folder.mkdir()  # the share is mounted again
            await eventually(lambda: len(list(folder.iterdir())) == 2, what="files after the share is back")

    run(body(), timeout=30)


def test_a_lis_that_dies_mid_ack_books_each_result_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            lab.lis.mode = "drop-ack"  # accepts and books, then closes before answering
            sim = lab.analyzer("an-0", messages=3)
            await sim.run(asyncio.Event())
            await eventually(lambda: lab.lis.acks_dropped >= 4, what="ACKs lost")
            assert lab.lis.delivered  # the LIS booked them, labbridge could not know
            lab.lis.mode = "AA"
            await eventually(lambda: lab.daemon.relays[0].health.delivered >= 3, what="delivery confirmed")
            assert lab.lis.delivered == set(sim.acked)
            assert lab.lis.redeliveries >= 1 and lab.lis.duplicates == 0  # same control ID: booked once
            counts = await lab.daemon.store.counts()
            assert counts["outbox"]["lis"]["delivered"] == 3

    run(body(), timeout=60)


def test_a_full_store_refuses_the_message_the_analyzer_retries_and_it_recovers(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            store = lab.daemon.store
            health = lab.daemon.runners["an-0"].health
            first = lab.analyzer("an-0", messages=1)
            await first.run(asyncio.Event())
            # The disk fills up: SQLite itself runs out of pages (max_page_count), as on a full filesystem.
            await store.set_size_limit(0)
            for size in (65536, 8192, 1024, 128, 16):
                for _ in range(1000):
                    try:
                        await store.commit_message(instrument="filler", protocol="astm", raw=b"f" * size,
                                                   received_at=1.0, results=[], destinations=[])
                    except Exception:
                        break
            failures = health.counters.store_failures
            sim = lab.analyzer("an-0", messages=1)
            sim.factory.counter = 100
            task = asyncio.create_task(sim.run(asyncio.Event()))
            await eventually(lambda: health.counters.store_failures > failures, what="a refused commit")
            assert sim.acked == [] and sim.stats.naks_received >= 1
            state = health.to_json()
            assert state["state"] == "degraded" and "the store is full" in state["reason"]
            await store.set_size_limit(None)  # space returns
            await asyncio.wait_for(task, 30)
            assert len(sim.acked) == 5
            await eventually(lambda: set(first.acked) | set(sim.acked) <= lab.lis.delivered, what="delivery")
            assert lab.lis.duplicates == 0
        conn = sqlite3.connect(tmp_path / "labbridge.db")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM messages WHERE instrument = 'an-0'").fetchone()[0] == 2

    run(body(), timeout=60)


def test_a_delivered_mark_that_fails_to_commit_resends_under_the_same_control_id(tmp_path: Path) -> None:
    # The relay does not wait for the "delivered" commit before sending on; when that commit fails the item
    # stays pending, the relay backs off (supervisor) and sends it again: the LIS books it once.
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            await lab.lis.go_down()
            sim = lab.analyzer("an-0", messages=2)
            await sim.run(asyncio.Event())
            store = lab.daemon.store
            store.fail_commits = True
            await lab.lis.come_back()
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="the LIS booked both")
            assert (await store.counts())["outbox"]["lis"].get("delivered", 0) == 0
            store.fail_commits = False
            await eventually(lambda: lab.lis.redeliveries >= 1, timeout=30, what="a resend")
            await eventually(lambda: lab.daemon.relays[0].health.delivered == 2, timeout=30, what="marked")
            assert (await store.counts())["outbox"]["lis"]["delivered"] == 2
            assert lab.lis.duplicates == 0 and lab.lis.delivered == set(sim.acked)

    run(body(), timeout=60)
