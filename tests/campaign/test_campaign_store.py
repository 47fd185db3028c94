"""The campaign on a real store: stages kept with history and audit, the gate in the commit, sign-off, rollback."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from labbridge.campaign.service import Campaign
from labbridge.campaign.stages import CampaignRefused
from labbridge.campaign.validation import Reference
from labbridge.config import Config, parse_config
from labbridge.model import Result
from labbridge.outbox import DEAD_UNMAPPED, Held, Retention
from labbridge.store.db import Store
from tests.conftest import run


def config(tmp_path: Path, *, stages: dict[str, str], lis: list[dict[str, Any]] | None = None) -> Config:
    return parse_config({
        "store": {"path": str(tmp_path / "store.db")},
        "sites": [{"id": "arlon", "name": "Arlon"}, {"id": "virton", "name": "Virton"}],
        "instruments": [{"id": ident, "site": "arlon" if n % 2 == 0 else "virton", "driver": "astm-generic",
                         "transport": {"kind": "tcp-server", "port": 0}, **({"stage": s} if s else {})}
                        for n, (ident, s) in enumerate(stages.items())],
        "lis": lis or [{"id": "lis", "host": "127.0.0.1", "port": 1}],
    })


def result(instrument: str, sample: str, test: str, value: str) -> Result:
    return Result(instrument=instrument, sample_id=sample, test_code=test, instrument_test_code=test, value=value,
                  measured_at="2026-11-23T10:00:00+01:00")


async def store_message(store: Store, instrument: str, *results: Result) -> tuple[int, ...]:
    stored = await store.commit_message(instrument=instrument, protocol="astm", raw=b"raw", received_at=1000.0,
                                        results=list(results), destinations=["lis"])
    return stored.outbox_ids


def states(path: Path, instrument: str) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    return [(r[0], r[1]) for r in conn.execute("SELECT id, state FROM outbox WHERE instrument = ? ORDER BY id",
                                                (instrument,))]


def test_a_config_without_stages_stays_live_and_its_results_flow(tmp_path: Path) -> None:
    cfg = config(tmp_path, stages={"chem-1": ""})

    async def body() -> None:
        async with Store(cfg.store.path) as store:
            await Campaign(store, cfg).start()
            assert await store_message(store, "chem-1", result("chem-1", "S1", "GLU", "5.1"))
            items, _ = await store.due_items("lis", now=2000.0)
            assert len(items) == 1
            status = await Campaign(store, cfg).status()
            row = status["sites"][0]["instruments"][0]
            assert (row["stage"], row["pending"], row["held"], row["live_since"] is not None) == ("live", 1, 0, True)

    run(body())


def test_a_validating_instrument_is_held_until_signed_off_then_released_in_order(tmp_path: Path) -> None:
    cfg = config(tmp_path, stages={"chem-1": "validating", "chem-2": "live"})

    async def body() -> None:
        async with Store(cfg.store.path) as store:
            campaign = Campaign(store, cfg)
            await campaign.start()
            for n in range(3):
                assert await store_message(store, "chem-1", result("chem-1", f"S{n}", "GLU", "5.1")) == ()
            await store_message(store, "chem-2", result("chem-2", "X", "GLU", "5.1"))
            items, _ = await store.due_items("lis", now=2000.0)
            assert [i.instrument for i in items] == ["chem-2"]  # the held ones are never due
            assert [s for _, s in states(Path(cfg.store.path), "chem-1")] == ["held"] * 3
            # A result the mapping held (a dead letter), released by an outbox retry, meets the gate again.
            await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw", received_at=1000.0,
                                       results=[], destinations=["lis"],
                                       held_results=[result("chem-1", "S3", "HBA1C", "6.1")], hold_reason="hold")
            assert [o["outcome"] for o in await store.retry_dead(None, actor="anna", reason="all", now=2000.0)] \
                == ["queued"]
            assert len((await store.due_items("lis", now=3000.0))[0]) == 1
            assert [s for _, s in states(Path(cfg.store.path), "chem-1")] == ["held"] * 4

            with pytest.raises(CampaignRefused, match="no reference values"):
                await campaign.sign_off("chem-1", release=True, override=False, actor="anna", reason="")
            await campaign.import_references("chem-1", [Reference("S0", "GLU", "5.0", "0.2"),
                                                        Reference("S1", "GLU", "5.0", "1%")], actor="anna")
            compared = await campaign.compare("chem-1")
            assert [r["verdict"] for r in compared["rows"]] == ["within", "outside"]
            with pytest.raises(CampaignRefused, match="1 outside tolerance, 0 missing"):
                await campaign.sign_off("chem-1", release=True, override=False, actor="anna", reason="")
            with pytest.raises(CampaignRefused, match="reason"):
                await campaign.sign_off("chem-1", release=True, override=True, actor="anna", reason=" ")
            done = await campaign.sign_off("chem-1", release=True, override=True, actor="anna",
                                           reason="S1 within the analyzer's known bias")
            assert (done["stage"], done["items"], done["override"]) == ("live", 4, True)
            items, _ = await store.due_items("lis", now=time.time() + 1)  # released at the sign-off's time
            held_ids = [i for i, _ in states(Path(cfg.store.path), "chem-1")]
            assert [i.id for i in items if i.instrument == "chem-1"] == held_ids  # in the order stored
            # Live now: the next message flows at once.
            assert await store_message(store, "chem-1", result("chem-1", "S9", "GLU", "5.1"))

    run(body())
    conn = sqlite3.connect(cfg.store.path)
    audit = conn.execute("SELECT actor, action, target, reason FROM audit WHERE action != 'retry'"
                         " ORDER BY id").fetchall()
    assert audit == [("anna", "references", "instrument:chem-1", "reference values imported"),
                     ("anna", "sign-off", "instrument:chem-1", "S1 within the analyzer's known bias")]
    history = conn.execute("SELECT from_stage, stage, actor FROM campaign_history WHERE instrument = 'chem-1'"
                           " ORDER BY id").fetchall()
    assert history == [(None, "validating", "config"), ("validating", "live", "anna")]


def test_discard_keeps_the_held_results_and_sends_none(tmp_path: Path) -> None:
    cfg = config(tmp_path, stages={"chem-1": "validating"})

    async def body() -> None:
        async with Store(cfg.store.path) as store:
            campaign = Campaign(store, cfg)
            await campaign.start()
            await store_message(store, "chem-1", result("chem-1", "S1", "GLU", "5.1"))
            await campaign.import_references("chem-1", [Reference("S1", "GLU", "5.1", "0")], actor="anna")
            done = await campaign.sign_off("chem-1", release=False, override=False, actor="anna", reason="")
            assert (done["held"], done["items"]) == ("discarded", 1)
            assert (await store.due_items("lis", now=time.time() + 1))[0] == []
            row = (await campaign.status())["sites"][0]["instruments"][0]
            assert (row["stage"], row["discarded"], row["held"], row["delivered"]) == ("live", 1, 0, 0)

    run(body())
    assert states(Path(cfg.store.path), "chem-1") == [(1, "discarded")]


def test_stages_move_by_hand_and_by_themselves_and_rollback_holds_again(tmp_path: Path) -> None:
    cfg = config(tmp_path, stages={"chem-1": "cabled"})

    async def body() -> None:
        async with Store(cfg.store.path) as store:
            campaign = Campaign(store, cfg)
            await campaign.start()
            await campaign.start()  # a restart keeps the stored stage
            await campaign.reconfigure(config(tmp_path, stages={"chem-1": "validating", "chem-3": "inventoried"}))
            assert {r["id"]: r["stage"] for s in (await campaign.status())["sites"] for r in s["instruments"]} == {
                "chem-1": "cabled", "chem-3": "inventoried"}  # kept; the new one from the new config
            assert await campaign.link_up("chem-1", "analyzer connected")
            assert not await campaign.link_up("chem-1", "again")  # forward only, once
            await store_message(store, "chem-1", result("chem-1", "S1", "GLU", "5.1"))
            with pytest.raises(CampaignRefused, match="sign-off"):
                await campaign.set_stage("chem-1", "live", actor="anna", reason="looks fine")
            with pytest.raises(CampaignRefused, match="reason"):
                await campaign.set_stage("chem-1", "mapping-verified", actor="anna", reason="")
            with pytest.raises(CampaignRefused, match="unknown stage"):
                await campaign.set_stage("chem-1", "Live", actor="anna", reason="x")
            with pytest.raises(CampaignRefused, match="no instrument"):
                await campaign.set_stage("chem-9", "cabled", actor="anna", reason="x")
            await campaign.set_stage("chem-1", "mapping-verified", actor="anna", reason="test codes checked")
            await campaign.set_stage("chem-1", "validating", actor="anna", reason="reference run")
            await campaign.import_references("chem-1", [Reference("S1", "GLU", "5.1", "0.1")], actor="anna")
            await campaign.sign_off("chem-1", release=True, override=False, actor="bob", reason="")
            await store_message(store, "chem-1", result("chem-1", "S2", "GLU", "5.2"))  # live: pending
            rolled = await campaign.rollback("chem-1", actor="bob", reason="calibration drift")
            assert rolled["held_again"] == 2  # the released one and the new one, neither sent yet
            assert (await store.due_items("lis", now=time.time() + 1))[0] == []
            await store_message(store, "chem-1", result("chem-1", "S3", "GLU", "5.3"))
            assert [s for _, s in states(Path(cfg.store.path), "chem-1")] == ["held"] * 3
            history = await campaign.history("chem-1")
            assert [(h["stage"], h["by"]) for h in reversed(history)] == [
                ("cabled", "config"), ("link-up", "labbridge"), ("first-message", "labbridge"),
                ("mapping-verified", "anna"), ("validating", "anna"), ("live", "bob"), ("rolled-back", "bob")]
            status = await campaign.status()
            row = status["sites"][0]["instruments"][0]
            assert row["blocked"] == "rolled back: calibration drift"
            assert status["sites"][0]["progress"]["stages"]["rolled-back"] == 1

    run(body())


def test_send_test_destinations_get_the_results_at_once_flagged_as_test(tmp_path: Path) -> None:
    cfg = config(tmp_path, stages={"chem-1": "validating"},
                 lis=[{"id": "lis", "host": "127.0.0.1", "port": 1, "validating": "send-test"}])

    async def body() -> None:
        async with Store(cfg.store.path) as store:
            await Campaign(store, cfg).start()
            assert await store_message(store, "chem-1", result("chem-1", "S1", "GLU", "5.1"))
            items, _ = await store.due_items("lis", now=2000.0)
            assert [i.test for i in items] == [True]

    run(body())


def test_retention_never_prunes_held_or_discarded_results(tmp_path: Path) -> None:
    cfg = config(tmp_path, stages={"chem-1": "validating", "chem-2": "validating"})

    async def body() -> None:
        async with Store(cfg.store.path) as store:
            campaign = Campaign(store, cfg)
            await campaign.start()
            await store_message(store, "chem-1", result("chem-1", "S1", "GLU", "5.1"))
            await store_message(store, "chem-2", result("chem-2", "S2", "GLU", "5.1"))
            await campaign.sign_off("chem-2", release=False, override=True, actor="anna", reason="bad run")
            pruned = await store.prune(Retention(raw_messages_s=1, delivered_s=1, incomplete_s=1), now=10**10)
            assert (pruned["results"], pruned["messages"]) == (0, 0)
            assert (await store.counts())["results"] == 2

    run(body())


def test_results_queued_by_a_redecode_meet_the_gate_too(tmp_path: Path) -> None:
    cfg = config(tmp_path, stages={"chem-1": "validating"})

    async def body() -> None:
        async with Store(cfg.store.path) as store:
            await Campaign(store, cfg).start()
            await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw", received_at=1000.0,
                                       results=[], destinations=["lis"],
                                       held=[Held(DEAD_UNMAPPED, "unmapped test code(s) GLU")])
            dead = await store.outbox_rows(state="dead")
            done = await store.apply_redecode(dead[0]["id"], results=[result("chem-1", "S1", "GLU", "5.1")], held=[],
                                              actor="anna", reason="GLU mapped", now=2000.0)
            assert done["outcome"] == "redecoded" and len(done["queued_items"]) == 1
            assert [s for _, s in states(Path(cfg.store.path), "chem-1")] == ["held"]
            assert (await store.due_items("lis", now=3000.0))[0] == []

    run(body())


def test_qc_held_by_the_destination_is_counted_apart_and_blocks_nothing(tmp_path: Path) -> None:
    """A live instrument's QC results, held by the LIS destination's qc = "hold" (the default), are kept by
    design: the campaign counts them as qc_held, not as dead letters a person must act on, and neither blocks
    the instrument nor leaves its results unreconciled; a real dead letter still does."""
    from labbridge.campaign.report import build_report

    cfg = config(tmp_path, stages={"chem-1": ""})
    qc = Result(instrument="chem-1", sample_id="QC-1", test_code="GLU", instrument_test_code="GLU", value="5.0",
                measured_at="2026-11-23T10:00:00+01:00", kind="qc")

    async def body() -> None:
        async with Store(cfg.store.path) as store:
            campaign = Campaign(store, cfg)
            await campaign.start()
            await store_message(store, "chem-1", qc)
            status = await campaign.status()
            row = status["sites"][0]["instruments"][0]
            assert (row["qc_held"], row["dead"], row["blocked"]) == (1, 0, None)
            assert status["sites"][0]["progress"]["qc_held"] == 1
            report = build_report(status, node="n", generated_at=0.0, group=True)
            backlog = report["sites"][0]["backlog"]
            assert backlog["reconciled"] and backlog["qc_held"] == 1
            await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw", received_at=1000.0,
                                       results=[], held_results=[result("chem-1", "S9", "NA", "140")],
                                       hold_reason="held: NA (hold_tests)", destinations=["lis"])
            row = (await campaign.status())["sites"][0]["instruments"][0]
            assert (row["qc_held"], row["dead"]) == (1, 1) and "dead letters" in (row["blocked"] or "")

    run(body())
