"""The embedded order source (SQLite), the schema 1 -> 2 migration, and the pure query answer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from labbridge.errors import StoreError
from labbridge.model import HostQuery
from labbridge.orders import NewOrder, OrderSource, answer_query, push_lines
from labbridge.store.db import Store
from labbridge.store.orders import SqliteOrderSource
from labbridge.store.schema import SCHEMA, SCHEMA_VERSION
from tests.conftest import run


def test_order_lifecycle_and_who_may_run_what(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            src = SqliteOrderSource(store)
            assert isinstance(src, OrderSource)
            mine = await src.add_order(NewOrder("S1", ("GLUC", "K"), instrument="chem-1", site="arlon",
                                                patient_id="P1"), now=10.0)
            other = await src.add_order(NewOrder("S1", ("NA",), instrument="chem-2", site="arlon"), now=11.0)
            site_wide = await src.add_order(NewOrder("S2", ("CRP",), site="arlon", priority="stat"), now=12.0)
            elsewhere = await src.add_order(NewOrder("S3", ("CRP",), site="virton"), now=13.0)
            assert (mine.state, mine.created_at, mine.test_codes) == ("pending", 10.0, ("GLUC", "K"))

            found = await src.orders_for_samples(instrument="chem-1", site="arlon", sample_ids=["S1", "S2", "S3"])
            assert [o.id for o in found] == [mine.id, site_wide.id]  # not chem-2's, not another site's
            # Only orders addressed to the instrument itself are pushed; site-wide ones wait for a query.
            assert [o.id for o in await src.orders_to_push(instrument="chem-1")] == [mine.id]
            every = await src.orders_for_instrument(instrument="chem-1", site="arlon", states=["pending"])
            assert [o.id for o in every] == [site_wide.id, mine.id]  # stat first

            await src.mark_sent([mine.id], instrument="chem-1", now=20.0)
            sent = await src.get(mine.id)
            assert sent is not None and (sent.state, sent.sent_at, sent.sent_to) == ("sent", 20.0, "chem-1")
            assert await src.orders_to_push(instrument="chem-1") == []
            await src.mark_sent([mine.id], instrument="chem-1", now=30.0)  # a resend keeps the first time
            again = await src.get(mine.id)
            assert again is not None and again.sent_at == 20.0
            await src.mark_accepted([mine.id], instrument="chem-1", now=40.0)
            accepted = await src.get(mine.id)
            assert accepted is not None and accepted.state == "accepted"

            cancelled = await src.cancel(other.id, now=50.0)
            assert cancelled is not None and cancelled.state == "cancelled"
            await src.mark_sent([other.id], instrument="chem-2", now=60.0)  # too late: stays cancelled
            still = await src.get(other.id)
            assert still is not None and still.state == "cancelled" and still.sent_at is None
            assert await src.cancel(9999, now=1.0) is None
            assert [o.id for o in await src.list_orders(state="pending")] == [elsewhere.id, site_wide.id]
            assert [o.id for o in await src.list_orders(sample_id="S1")] == [other.id, mine.id]

    run(body())


def test_a_schema_1_store_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)  # exactly what labbridge with schema 1 created
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO messages (instrument, protocol, received_at, raw, status) "
                 "VALUES ('chem-1', 'astm', 1.0, x'48', 'decoded')")
    conn.commit()
    conn.close()

    async def body() -> None:
        async with Store(path) as store:
            assert (await store.counts())["messages"] == 1
            src = SqliteOrderSource(store)
            order = await src.add_order(NewOrder("S1", ("GLUC",), instrument="chem-1"), now=1.0)
            assert order.id == 1
        # Opening again is a no-op migration.
        async with Store(path):
            pass

    run(body())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1


def test_a_store_from_a_newer_labbridge_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()

    async def body() -> None:
        with pytest.raises(StoreError, match="newer than this labbridge"):
            await Store(path).open()

    run(body())


def _order(oid: int, sample: str, tests: tuple[str, ...], *, state: str = "pending", priority: str = "routine",
           patient: str = "") -> object:
    from labbridge.orders import Order

    return Order(id=oid, sample_id=sample, test_codes=tests, instrument="chem-1", site="arlon",
                 priority=priority, patient_id=patient, state=state, source="t", created_at=0.0)  # type: ignore[arg-type]


def test_answer_query_lists_orders_and_says_y_or_z_for_the_rest() -> None:
    orders = [_order(1, "S1", ("GLUC", "K"), patient="P1"), _order(2, "S1", ("K", "NA"), priority="stat"),
              _order(3, "S2", ("CRP",)), _order(4, "S4", ("CRP",), state="cancelled")]
    query = HostQuery("chem-1", ("S1", "S2", "S3", "S4"))
    lines = answer_query(query, orders)  # type: ignore[arg-type]
    assert [(ln.sample_id, ln.status, ln.test_codes) for ln in lines] == [
        ("S1", "ordered", ("GLUC", "K", "NA")), ("S2", "ordered", ("CRP",)),
        ("S3", "unknown_sample", ()), ("S4", "unknown_sample", ())]
    assert lines[0].priority == "stat" and lines[0].patient_id == "P1" and lines[0].order_ids == (1, 2)

    named = answer_query(HostQuery("chem-1", ("S1", "S2"), test_codes=("GLUC", "TSH")), orders)  # type: ignore[arg-type]
    assert [(ln.sample_id, ln.status, ln.test_codes) for ln in named] == [
        ("S1", "ordered", ("GLUC",)), ("S1", "no_order", ("TSH",)), ("S2", "no_order", ("GLUC", "TSH"))]
    assert named[0].order_ids == (1,)

    everything = answer_query(HostQuery("chem-1", (), all_samples=True), orders)  # type: ignore[arg-type]
    assert [ln.sample_id for ln in everything] == ["S1", "S2"]
    pushed = push_lines(orders)  # type: ignore[arg-type]
    assert [(ln.sample_id, ln.priority) for ln in pushed] == [("S1", "stat"), ("S2", "routine")]


def test_new_order_problems_are_named() -> None:
    assert NewOrder("S1", ("GLUC",), instrument="chem-1").problems() == []
    problems = NewOrder("", (), priority="urgent").problems()  # type: ignore[arg-type]
    assert any(p.startswith("sample_id") for p in problems)
    assert any(p.startswith("instrument or site") for p in problems)
    assert any(p.startswith("test_codes") for p in problems)
    assert any(p.startswith("priority") for p in problems)
    assert any("control characters" in p for p in NewOrder("S\r1", ("GLUC",), site="a").problems())


def test_refused_orders_go_back_to_pending_with_the_reason_and_are_not_pushed_again(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            src = SqliteOrderSource(store)
            order = await src.add_order(NewOrder("S1", ("GLUC",), instrument="chem-1", site="arlon"), now=1.0)
            await src.mark_sent([order.id], instrument="chem-1", now=2.0)
            await src.mark_refused([order.id], instrument="chem-1", reason="GLU not on board", now=3.0)
            refused = await src.get(order.id)
            assert refused is not None and (refused.state, refused.note) == ("pending", "GLU not on board")
            assert await src.orders_to_push(instrument="chem-1") == []  # no loop of refusals
            # Still answered when the analyzer asks for the sample; accepted later clears the note.
            assert await src.orders_for_samples(instrument="chem-1", site="arlon", sample_ids=["S1"])
            await src.mark_accepted([order.id], instrument="chem-1", now=4.0)
            accepted = await src.get(order.id)
            assert accepted is not None and (accepted.state, accepted.note) == ("accepted", "")

    run(body())


def test_orders_from_a_message_are_stored_with_it_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            src = SqliteOrderSource(store)
            new = [NewOrder("S1", ("GLUC",), instrument="chem-1", site="arlon", source="lis:in")]
            added, duplicate = await src.add_orders_from_message(new, origin="lis:in", raw=b"MSH|1",
                                                                 sender_id=("M1", "d1"), now=1.0)
            assert len(added) == 1 and not duplicate
            again, duplicate = await src.add_orders_from_message(new, origin="lis:in", raw=b"MSH|1",
                                                                 sender_id=("M1", "d1"), now=2.0)
            assert again == [] and duplicate
            none, duplicate = await src.add_orders_from_message(new, origin="lis:in", raw=b"MSH|2",
                                                                sender_id=("M2", "d2"), now=3.0, error="bad")
            assert none == [] and not duplicate
            assert len(await src.list_orders()) == 1

    run(body())
