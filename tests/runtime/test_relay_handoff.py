"""The relay's hand-off (labbridge.relay.relay): items a commit queued are sent as handed over, without being
read back from the store, while the relay is caught up; never twice, never lost, in the order stored.
Real store, real sockets, the simulated LIS (python-hl7 parsing, books per control ID)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from labbridge_simulators.lis import SimulatedLis

from labbridge.model import Result
from labbridge.outbox import OutboxItem, handed_off
from labbridge.relay import relay as relay_module
from labbridge.relay.relay import Relay
from labbridge.store.db import Store
from tests.conftest import run
from tests.integration.helpers import eventually, relaying


@contextlib.asynccontextmanager
async def _lis_and_store(tmp_path: Path, **lis_options: Any) -> AsyncIterator[tuple[SimulatedLis, Store]]:
    """The simulated LIS listening and a store on disk (the LIS stopped on the way out)."""
    lis = SimulatedLis(**lis_options)
    await lis.start()
    try:
        async with Store(tmp_path / "s.db") as store:
            yield lis, store
    finally:
        await lis.stop()


def _result(sample: str, value: str) -> Result:
    return Result(instrument="chem-1", sample_id=sample, test_code="GLU", instrument_test_code="GLU", value=value,
                  measured_at="2026-11-23T10:00:00+01:00")


async def _commit(store: Store, sample: str, value: str) -> list[OutboxItem]:
    """Commit one result as a link's sink does; the items it hands the relay."""
    results = [_result(sample, value)]
    at = time.time()
    stored = await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw", received_at=at,
                                        results=results, destinations=["lis"])
    return handed_off(stored, instrument="chem-1", received_at=at, results=results)


def _count_reads(store: Store) -> list[int]:
    """Count the relay's reads of the outbox (each ``due_items_above`` once it returned: a test that waits for
    the first read then commits must not commit while that read is under way, or the read may see the item
    not yet due, and the relay rightly reads again)."""
    reads: list[int] = []
    real = store.due_items_above

    async def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return await real(*args, **kwargs)
        finally:
            reads.append(1)

    store.due_items_above = counted  # type: ignore[method-assign]
    return reads


async def _delivered_and_no_more(relay: Relay, count: int, timeout: float = 20.0) -> None:
    await eventually(lambda: relay.health.delivered == count, what=f"{count} delivered", timeout=timeout)
    await asyncio.sleep(0.2)
    assert relay.health.delivered == count  # nothing sent twice meanwhile


def _booked_once(lis: SimulatedLis, count: int) -> None:
    assert len(lis.booked) == count
    assert lis.duplicates == 0 and lis.redeliveries == 0


def _values_in_order(lis: SimulatedLis) -> list[str]:
    return [value for booked in lis.booked.values() for _i, _s, _t, value in booked.results]


def test_items_handed_off_go_to_the_lis_without_being_read_back(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "IDLE_POLL_S", 60.0)

    async def body() -> None:
        async with _lis_and_store(tmp_path) as (lis, store):
            reads = _count_reads(store)
            async with relaying(store, lis.port) as relay:
                await eventually(lambda: len(reads) >= 1, what="the first read (nothing due: caught up)")
                for i in range(40):
                    relay.offer(await _commit(store, "S1", str(i)))
                await eventually(lambda: relay.health.delivered == 40, what="all delivered")
                assert len(reads) <= 2  # the first read, at most one more (not one per item)
            counts = await store.counts()
        assert counts["outbox"]["lis"]["delivered"] == 40
        assert lis.duplicates == 0 and lis.redeliveries == 0
        assert _values_in_order(lis) == [str(i) for i in range(40)]  # in the order stored

    run(body(), timeout=60)


def test_an_item_handed_off_while_a_read_finds_it_is_sent_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit's answer can land while a read that sees its items is under way: the relay sends those
    items from the read, and drops them from the hand-off."""
    monkeypatch.setattr(relay_module, "IDLE_POLL_S", 60.0)  # the later ones go from the hand-off, not a poll

    async def body() -> None:
        async with _lis_and_store(tmp_path) as (lis, store):
            relay_box: list[Relay] = []
            real = store.due_items_above
            late: list[list[OutboxItem]] = []

            async def read_racing_a_commit(*args: Any, **kwargs: Any) -> Any:
                answer = await real(*args, **kwargs)
                for items in late:  # handed off after the read saw them (as a commit in the same group)
                    relay_box[0].offer(items)
                late.clear()
                return answer

            late.extend([await _commit(store, f"S{i}", "1") for i in range(10)])
            store.due_items_above = read_racing_a_commit  # type: ignore[method-assign]
            async with relaying(store, lis.port) as relay:
                relay_box.append(relay)
                await eventually(lambda: relay.health.delivered == 10, what="all delivered")
                for i in range(10, 15):  # and then the hand-off carries on, alone
                    relay.offer(await _commit(store, f"S{i}", "1"))
                await _delivered_and_no_more(relay, 15)
        _booked_once(lis, 15)

    run(body(), timeout=60)


def test_more_handed_off_than_the_relay_keeps_are_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "MAX_HANDED_OFF", 4)
    monkeypatch.setattr(relay_module, "IDLE_POLL_S", 60.0)  # not found by the periodic read: by the overflow's

    async def body() -> None:
        async with _lis_and_store(tmp_path, delay=0.005) as (lis, store), relaying(store, lis.port) as relay:
            await asyncio.sleep(0.1)
            batches = [await _commit(store, f"S{i}", "1") for i in range(30)]
            for items in batches:  # all at once: the hand-off overflows, its items are in the store
                relay.offer(items)
            await _delivered_and_no_more(relay, 30, timeout=5)
        _booked_once(lis, 30)

    run(body(), timeout=60)


def test_an_outage_while_caught_up_loses_doubles_and_reorders_nothing(tmp_path: Path) -> None:
    """The LIS goes away while items are being handed off: the relay goes back to reading, and every item
    reaches the LIS once, in the order stored."""

    async def body() -> None:
        async with _lis_and_store(tmp_path, delay=0.002) as (lis, store):
            async with relaying(store, lis.port) as relay:
                await asyncio.sleep(0.1)
                await _feed(relay, store, 0, 10)
                await eventually(lambda: relay.health.delivered == 10, what="the first ten")
                await lis.go_down()
                await _feed(relay, store, 10, 20)
                await eventually(lambda: relay.health.state == "down", what="the relay sees the outage")
                await lis.come_back()
                await _feed(relay, store, 20, 30)
                await eventually(lambda: relay.health.delivered == 30, what="all delivered", timeout=30)
            counts = await store.counts()
        assert counts["outbox"]["lis"]["delivered"] == 30
        assert lis.duplicates == 0
        assert _values_in_order(lis) == [str(i) for i in range(30)]

    run(body(), timeout=90)


@pytest.mark.parametrize("connections", [1, 4])
def test_refused_items_go_to_the_dead_letters_and_the_hand_off_goes_on(tmp_path: Path, connections: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal sends the relay back to reading the store; every connection stops and goes on at once (not
    at the next periodic read)."""
    monkeypatch.setattr(relay_module, "IDLE_POLL_S", 60.0)

    async def body() -> None:
        async with _lis_and_store(tmp_path, delay=0.002) as (lis, store):
            async with relaying(store, lis.port, connections=connections) as relay:
                await asyncio.sleep(0.1)
                lis.mode = "AR"  # refused for good (AR is a dead-letter code by default)
                await _feed(relay, store, 0, 5)
                await eventually(lambda: relay.health.dead_lettered == 5, what="five refused")
                lis.mode = "AA"
                await _feed(relay, store, 5, 15)
                await eventually(lambda: relay.health.delivered == 10, what="the rest delivered", timeout=5)
                await asyncio.sleep(0.2)
                assert relay.health.delivered == 10 and relay.health.dead_lettered == 5
            counts = await store.counts()
        assert counts["outbox"]["lis"]["delivered"] == 10 and counts["outbox"]["lis"]["dead"] == 5
        assert lis.rejected == 5 and lis.redeliveries == 0
        assert _values_in_order(lis) == [str(i) for i in range(5, 15)]

    run(body(), timeout=60)


def test_an_outage_met_by_one_connection_stops_them_all_at_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One item meets the outage on its connection while the others wait for work: they all stop, the relay
    backs off and reads the store, and the item goes once the LIS is back (not at the next periodic read)."""
    monkeypatch.setattr(relay_module, "IDLE_POLL_S", 60.0)

    async def body() -> None:
        async with _lis_and_store(tmp_path) as (lis, store):
            reads = _count_reads(store)
            async with relaying(store, lis.port, connections=4) as relay:
                await _feed(relay, store, 0, 4)
                await eventually(lambda: relay.health.delivered == 4, what="the first ones", timeout=5)
                await lis.go_down()
                await _feed(relay, store, 4, 5)  # one item, nothing after it
                await eventually(lambda: relay.health.state == "down", what="the outage seen", timeout=5)
                await lis.come_back()
                await eventually(lambda: relay.health.delivered == 5, what="the item delivered", timeout=5)
                assert len(reads) >= 2  # it went back to reading the store
        assert _values_in_order(lis) == [str(i) for i in range(5)]

    run(body(), timeout=60)


async def _feed(relay: Relay, store: Store, first: int, last: int) -> None:
    """Sample S1's results ``first`` .. ``last - 1``, committed and handed off one after the other."""
    for i in range(first, last):
        relay.offer(await _commit(store, "S1", str(i)))
        await asyncio.sleep(0.002)


def test_handed_off_items_go_over_every_connection_each_sample_in_order(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Several connections: each takes its samples' handed-off items as they come, without waiting for the
    others; a sample's items all go over one connection, in the order stored."""
    monkeypatch.setattr(relay_module, "IDLE_POLL_S", 60.0)

    async def body() -> None:
        async with _lis_and_store(tmp_path, delay=0.005) as (lis, store):
            reads = _count_reads(store)
            async with relaying(store, lis.port, connections=4) as relay:
                await eventually(lambda: len(reads) >= 1, what="the first read (nothing due: caught up)")
                for rerun in range(3):
                    for i in range(25):
                        relay.offer(await _commit(store, f"S{i:02d}", str(rerun)))
                await eventually(lambda: relay.health.delivered == 75, what="all delivered")
                assert len(reads) <= 2
        assert lis.duplicates == 0 and lis.redeliveries == 0
        assert lis.most_in_flight >= 2  # the connections carried messages at the same time
        per_sample: dict[str, list[tuple[str, int]]] = {}
        for booked in lis.booked.values():
            for _instrument, sample, _test, value in booked.results:
                per_sample.setdefault(sample, []).append((value, booked.connection))
        assert len(per_sample) == 25
        for sample, bookings in per_sample.items():
            assert [value for value, _ in bookings] == ["0", "1", "2"], sample
            assert len({connection for _, connection in bookings}) == 1, sample
        assert len({c for bookings in per_sample.values() for _, c in bookings}) == 4

    run(body(), timeout=60)
