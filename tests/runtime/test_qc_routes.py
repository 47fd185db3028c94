"""QC is never taken for a patient result (issue 20, part 2): per destination, decided in the transaction that
stores the results (labbridge.store.sql), the same on a live link and on an operator's re-decode."""

from __future__ import annotations

import time
from pathlib import Path

from labbridge.config import InstrumentConfig
from labbridge.driver import load_driver
from labbridge.links.intake import InstrumentDecoder, decode_context
from labbridge.model import Result
from labbridge.outbox import DEAD_HELD, DEAD_UNMAPPED, Held, Route
from labbridge.protocols.e1381 import build_frames
from labbridge.relay.operations import Operations
from labbridge.store.db import Store
from tests.conftest import run


def result(sample: str, test: str, kind: str = "patient") -> Result:
    return Result(instrument="chem-1", sample_id=sample, test_code=test, instrument_test_code=test, value="1.0",
                  measured_at="2026-11-23T10:00:00+01:00", kind="qc" if kind == "qc" else "patient")


ROUTES = [Route("hold"), Route("marked", qc="send-marked"), Route("drop", qc="drop"),
          Route("qc-only", qc="send-marked", results="qc")]


def test_each_destination_gets_qc_held_sent_or_not_at_all_and_a_qc_feed_only_qc(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            stored = await store.commit_message(
                instrument="chem-1", protocol="astm", raw=b"raw", received_at=time.time(), destinations=ROUTES,
                results=[result("S1", "GLU"), result("S1", "K"), result("QC-L1", "GLU", "qc")])
            assert stored.new_results == 3
            rows = await store.outbox_rows(limit=50)
            got = {(r["destination"], r["state"], r["dead_kind"]) for r in rows}
            assert got == {("hold", "pending", None), ("hold", "dead", DEAD_HELD),
                           ("marked", "pending", None), ("marked", "pending", None),
                           ("drop", "pending", None),
                           ("qc-only", "pending", None)}
            assert len(rows) == 6  # S1 to hold, marked, drop; QC-L1 to hold (held), marked, qc-only
            held = next(r for r in rows if r["state"] == "dead")
            assert "QC result held for destination hold" in held["last_error"]
            for dest, samples in (("marked", {"S1", "QC-L1"}), ("drop", {"S1"}), ("qc-only", {"QC-L1"})):
                items = await store.due_items(dest, time.time() + 1)
                assert {i.results[0].sample_id for i in items[0]} == samples, dest
            # Released by an operator: it goes as it is, a QC result (marked when rendered).
            outcome = await store.retry_dead([held["id"]], actor="qa", reason="QC reviewed", now=time.time())
            assert outcome == [{"id": held["id"], "outcome": "queued"}]
            (item,), _ = await store.due_items("hold", time.time() + 1, exclude=frozenset(
                r["id"] for r in rows if r["destination"] == "hold" and r["state"] == "pending"))
            assert [r.kind for r in item.results] == ["qc"]

    run(body())


def test_a_plain_destination_id_takes_the_default_route_qc_held() -> None:
    assert Route.of("lis") == Route("lis", qc="hold", results="all")
    route = Route("x", qc="drop")
    assert Route.of(route) is route


def test_results_the_mapping_holds_stay_held_but_only_where_the_route_takes_them(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            await store.commit_message(
                instrument="chem-1", protocol="astm", raw=b"raw", received_at=time.time(),
                destinations=[Route("drop", qc="drop"), Route("qc-only", qc="send-marked", results="qc")],
                results=[], held_results=[result("S1", "HIV"), result("QC-1", "HIV", "qc")], hold_reason="held: HIV")
            rows = await store.outbox_rows(limit=50)
            assert {(r["destination"], r["dead_kind"], r["last_error"]) for r in rows} == {
                ("drop", DEAD_HELD, "held: HIV"), ("qc-only", DEAD_HELD, "held: HIV")}
            assert len(rows) == 2

    run(body())


def test_a_redecode_queues_by_the_destinations_route_as_configured_now(tmp_path: Path) -> None:
    """An unmapped QC result fixed by an operator: re-decoded, it is held for a "hold" destination, never
    queued for a "drop" one."""
    records = b"\x05" + b"".join(build_frames([b"H|\\^&", b"P|1", b"O|1|QC-1||^^^GLU|R||||||Q", b"R|1|^^^GLU|5.0",
                                              b"L|1|N"])) + b"\x04"
    cfg = InstrumentConfig.model_validate({"id": "chem-1", "site": "arlon", "driver": "astm-generic",
                                           "transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0},
                                           "test_map": {"GLU": "GLUC"}, "unmapped_tests": "dead-letter"})
    driver = load_driver("astm-generic")

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            await store.commit_message(instrument="chem-1", protocol="astm", raw=records, received_at=time.time(),
                                       results=[], destinations=["hold", "drop"],
                                       held=[Held(DEAD_UNMAPPED, "unmapped test code(s) GLU")])
            routes = {"hold": Route("hold"), "drop": Route("drop", qc="drop")}
            ops = Operations(store, lambda _: InstrumentDecoder.from_config(cfg, driver, decode_context(cfg)),
                             route_for=routes.get)
            outcomes = await ops.retry(None, actor="qa", reason="test map fixed")
            assert {o["outcome"] for o in outcomes} == {"redecoded"}
            rows = await store.outbox_rows(limit=50)
            assert [(r["destination"], r["state"], r["dead_kind"]) for r in rows] == [("hold", "dead", DEAD_HELD)]

    run(body())
