"""The tamper-evident audit trail: a daemon's operator actions (orders, purge, campaign, reload, users and tokens)
appended to a hash chain; then the stopped daemon's store edited with sqlite3 (UPDATE, DELETE, an entry inserted
in the middle, the seal rewritten, the tail cut) and ``labbridge audit verify`` naming the first broken entry."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from labbridge.cli import main
from labbridge.cli.local import local_actor
from labbridge.store import audit
from labbridge.store.db import Store
from tests.conftest import run
from tests.integration.helpers import running_lab
from tests.integration.test_security import ORDER, base, bearer, call, make_token, secured

pytestmark = pytest.mark.usefixtures("logging_restored")


def acted_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A daemon requiring authentication; a technician adds and cancels an order, an admin purges, a stage
    changes, the config is reloaded; then it stops. Its store file."""

    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=secured(),
                               overrides={"an-0": {"stage": "cabled"}}) as lab, aiohttp.ClientSession() as http:
            url = base(lab)
            tech = await make_token(lab, "tech", "technician", capsys)
            admin = await make_token(lab, "admin", "admin", capsys)
            status, order = await call(http, "POST", url + "/api/orders", json=ORDER, headers=bearer(tech))
            assert status == 201
            assert (await call(http, "POST", url + f"/api/orders/{order['id']}/cancel", json={},
                               headers=bearer(tech)))[0] == 200
            assert (await call(http, "POST", url + "/api/instruments/an-0/stage", headers=bearer(tech),
                               json={"stage": "validating", "reason": "reference run", "by": "someone"}))[0] == 200
            assert (await call(http, "POST", url + "/api/outbox/purge", headers=bearer(admin),
                               json={"state": "dead", "confirm": True, "reason": "tidy"}))[0] == 200
            status, _ = await call(http, "POST", url + "/api/config/reload", json={}, headers=bearer(admin))
            assert status == 409  # this daemon has no config file: refused, and still audited

    run(body())
    return tmp_path / "labbridge.db"


def copy_of(store: Path, name: str) -> Path:
    """A consistent copy (WAL included) to tamper with."""
    target = store.parent / name
    with sqlite3.connect(store) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def verify(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "verify", "--store", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out + err


def test_order_actions_are_audited_with_the_authenticated_account_and_the_chain_holds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = acted_on(tmp_path, capsys)
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT id, actor, action, target FROM audit ORDER BY id").fetchall()
    me = local_actor()
    assert rows == [(1, me, "token-create", "token:tech"), (2, me, "token-create", "token:admin"),
                    (3, "token:tech", "order-add", "order:1"), (4, "token:tech", "order-cancel", "order:1"),
                    (5, "token:tech", "stage", "instrument:an-0"), (6, "token:admin", "purge", "outbox:state=dead"),
                    (7, "token:admin", "reload", "config")]
    code, out = verify(store, capsys)
    assert code == 0 and "audit trail intact: 7 entries; head 7:" in out
    head = out.split("head ")[1].split(" ")[0]
    assert verify(store, capsys, "--head", head)[0] == 0
    # The export, for an inspector: every entry with its hashes, oldest first.
    capsys.readouterr()
    assert main(["audit", "export", "--store", str(store)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["id"] for e in lines] == list(range(1, 8)) and lines[0]["prev_hash"] == audit.GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(lines))
    assert main(["audit", "export", "--store", str(store), "--format", "csv", "-o", str(tmp_path / "a.csv")]) == 0
    table = list(csv.DictReader(io.StringIO((tmp_path / "a.csv").read_text())))
    assert [r["action"] for r in table][2:4] == ["order-add", "order-cancel"] and table[6]["hash"] == head.split(":")[1]


def test_an_update_is_named_with_the_field_that_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = acted_on(tmp_path, capsys)
    edited = copy_of(store, "edited.db")
    with sqlite3.connect(edited) as conn:
        conn.execute("UPDATE audit SET actor = 'anna' WHERE id = 6")
    code, out = verify(edited, capsys)
    assert code == 1
    assert "audit trail BROKEN at entry 6: edited: actor is 'anna', sealed as 'token:admin'" in out
    # Rewriting the seal as well: the hash no longer matches it.
    resealed = copy_of(store, "resealed.db")
    with sqlite3.connect(resealed) as conn:
        conn.execute("UPDATE audit SET actor = 'anna', sealed = replace(sealed, '\"token:admin\"', '\"anna\"')"
                     " WHERE id = 6")
    code, out = verify(resealed, capsys)
    assert (code, "entry 6: its hash does not match its sealed content" in out) == (1, True)


def test_a_delete_or_an_insert_in_the_middle_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = acted_on(tmp_path, capsys)
    deleted = copy_of(store, "deleted.db")
    with sqlite3.connect(deleted) as conn:
        conn.execute("DELETE FROM audit WHERE id = 4")  # the order's cancellation
    code, out = verify(deleted, capsys)
    assert code == 1
    assert "BROKEN at entry 5: its previous-entry hash is not that of entry 3: an entry was removed" in out

    # A forged entry slipped in after entry 2, sealed and chained properly by someone who knows the scheme;
    # the later entries moved up one id to make room.
    inserted = copy_of(store, "inserted.db")
    with sqlite3.connect(inserted) as conn:
        for (entry_id,) in conn.execute("SELECT id FROM audit WHERE id > 2 ORDER BY id DESC").fetchall():
            conn.execute("UPDATE audit SET id = id + 1 WHERE id = ?", (entry_id,))
        audit_record_at(conn, 3)
    code, out = verify(inserted, capsys)
    assert code == 1 and "BROKEN at entry 4: edited: id is 4, sealed as 3" in out

    # Appended with an id of its own, without a seal: named too.
    appended = copy_of(store, "appended.db")
    with sqlite3.connect(appended) as conn:
        conn.execute("INSERT INTO audit (id, at, actor, action, target, reason) VALUES"
                     " (5000, 1, 'anna', 'purge', 'outbox:1', 'x')")
    code, out = verify(appended, capsys)
    assert code == 1 and "BROKEN at entry 5000: not sealed" in out


def audit_record_at(conn: sqlite3.Connection, entry_id: int) -> None:
    """A forged entry at ``entry_id`` chained onto the entry before it, as :func:`audit.record` would."""
    prev = conn.execute("SELECT hash FROM audit WHERE id = ?", (entry_id - 1,)).fetchone()[0]
    entry: dict[str, Any] = {"id": entry_id, "at": 2.0, "actor": "anna", "action": "purge", "target": "outbox:9",
                             "reason": "x", "detail": None}
    sealed = audit._canonical(entry)
    conn.execute("INSERT INTO audit (id, at, actor, action, target, reason, detail, prev_hash, hash, sealed)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (*entry.values(), prev, audit._digest(prev, sealed), sealed))


def test_a_cut_tail_is_caught_by_the_head_noted_earlier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = acted_on(tmp_path, capsys)
    head = verify(store, capsys)[1].split("head ")[1].split(" ")[0]
    cut = copy_of(store, "cut.db")
    with sqlite3.connect(cut) as conn:
        conn.execute("DELETE FROM audit WHERE id >= 6")  # the purge and the reload, gone
    assert verify(cut, capsys)[0] == 0  # the chain alone cannot tell a shorter trail
    code, out = verify(cut, capsys, "--head", head)
    assert code == 1 and f"BROKEN at entry 7: the head noted earlier ({head}) is not in the trail" in out


def test_verify_and_export_through_a_running_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=secured()) as lab:
            token = await make_token(lab, "inspector", "viewer", capsys)
            url = base(lab)
            capsys.readouterr()
            code = await asyncio.to_thread(main, ["audit", "verify", "--url", url, "--token", token, "--json"])
            verdict = json.loads(capsys.readouterr().out)
            assert code == 0 and (verdict["ok"], verdict["entries"]) == (True, 1)
            with sqlite3.connect(lab.config.store.path) as conn:
                conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE id = 1")
            code = await asyncio.to_thread(main, ["audit", "verify", "--url", url, "--token", token])
            assert code == 1 and "BROKEN at entry 1: edited: reason is 'nothing to see', sealed as ''" in \
                capsys.readouterr().err
            assert await asyncio.to_thread(main, ["audit", "export", "--url", url, "--token", token]) == 0
            assert json.loads(capsys.readouterr().out)["action"] == "token-create"
            assert await asyncio.to_thread(main, ["audit", "verify", "--url", url]) == 1  # no token: refused
            assert "log in, or send Authorization: Bearer <token>" in capsys.readouterr().err

    run(body())


def test_the_migration_seals_the_entries_written_before_the_chain(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.db"

    async def make() -> None:
        async with Store(path) as store:
            await store.purge(state="dead", actor="ops", reason="tidy", now=1.0)
            await store.purge(state="delivered", actor="ops", reason="tidy", now=2.0)

    run(make())
    with sqlite3.connect(path) as conn:  # as a schema-7 store had them: no chain columns filled, user_version 7
        conn.execute("UPDATE audit SET prev_hash = NULL, hash = NULL, sealed = NULL")
        conn.execute("PRAGMA user_version = 7")
    assert verify(path, capsys)[0] == 1  # unsealed
    run(make())  # opened by this labbridge: migrated (8 seals, 9 is already there), two more entries chained on
    code, out = verify(path, capsys)
    assert code == 0 and "4 entries" in out
