"""The relay over several MLLP connections to one LIS (``connections``): real store, real sockets, the
simulated LIS (python-hl7 parsing, books per control ID and per connection)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from labbridge_simulators.lis import SimulatedLis

from labbridge.config import MllpDestination
from labbridge.model import Result
from labbridge.relay.relay import Relay
from labbridge.store.db import Store
from tests.conftest import run
from tests.integration.helpers import eventually, relaying

SAMPLES = 25  # not a multiple of the connections: a sample's items fall on different lanes unless kept together
RERUNS = 3  # messages per sample, each with a new value of the same test: three outbox items of one sample


def _result(sample: str, rerun: int) -> Result:
    return Result(instrument="chem-1", sample_id=sample, test_code="GLU", instrument_test_code="GLU",
                  value=f"{rerun}.0", measured_at=f"2026-11-23T10:0{rerun}:00+01:00")


async def _fill(store: Store) -> None:
    """Sample after sample, rerun after rerun: each sample's items are stored in rerun order."""
    for rerun in range(RERUNS):
        for i in range(SAMPLES):
            await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw", received_at=time.time(),
                                       results=[_result(f"S{i:03d}", rerun)], destinations=["lis"])


@contextlib.asynccontextmanager
async def _filled_store(tmp_path: Path, lis: SimulatedLis) -> AsyncIterator[Store]:
    """The LIS listening and a store holding every sample's reruns (the LIS stopped on the way out)."""
    await lis.start()
    try:
        async with Store(tmp_path / "s.db") as store:
            await _fill(store)
            yield store
    finally:
        await lis.stop()


def _assert_each_sample_in_stored_order(lis: SimulatedLis) -> dict[str, list[tuple[str, int]]]:
    """Every sample booked, each value once, in the order stored; returns the bookings per sample."""
    per_sample = _per_sample(lis)
    assert len(per_sample) == SAMPLES
    for sample, bookings in per_sample.items():
        assert [value for value, _ in bookings] == ["0.0", "1.0", "2.0"], sample
    return per_sample


def _per_sample(lis: SimulatedLis) -> dict[str, list[tuple[str, int]]]:
    """Each sample's bookings in arrival order: (value, connection)."""
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for booked in lis.booked.values():
        for _instrument, sample, _test, value in booked.results:
            seen[sample].append((value, booked.connection))
    return seen


def test_several_connections_carry_messages_at_once_and_keep_each_sample_in_order(tmp_path: Path) -> None:
    async def body() -> None:
        lis = SimulatedLis(delay=0.01)  # each ACK takes a while: one connection would have one message in flight
        async with _filled_store(tmp_path, lis) as store:
            async with relaying(store, lis.port, connections=4, timeout_s=2.0) as relay:
                await eventually(lambda: relay.health.delivered == SAMPLES * RERUNS, what="all delivered")
            counts = await store.counts()
        assert counts["outbox"]["lis"]["delivered"] == SAMPLES * RERUNS
        assert lis.connections_accepted == 4
        assert lis.most_in_flight >= 2  # the connections carried messages at the same time
        assert lis.duplicates == 0 and lis.redeliveries == 0
        per_sample = _assert_each_sample_in_stored_order(lis)
        for sample, bookings in per_sample.items():
            assert len({connection for _, connection in bookings}) == 1, sample  # over one connection
        assert len({c for bookings in per_sample.values() for _, c in bookings}) == 4  # every connection used

    run(body(), timeout=60)


def test_one_connection_is_the_default_one_message_at_a_time(tmp_path: Path) -> None:
    async def body() -> None:
        lis = SimulatedLis(delay=0.005)
        async with _filled_store(tmp_path, lis) as store:
            dest = MllpDestination(id="lis", host="127.0.0.1", port=lis.port)
            assert dest.connections == 1
            async with relaying(store, lis.port, connections=dest.connections, timeout_s=2.0) as relay:
                await eventually(lambda: relay.health.delivered == SAMPLES * RERUNS, what="all delivered")
        assert lis.connections_accepted == 1 and lis.most_in_flight == 1
        _assert_each_sample_in_stored_order(lis)


@pytest.mark.parametrize("connections", [1, 3])
def test_a_lis_outage_loses_doubles_and_reorders_nothing(tmp_path: Path, connections: int) -> None:
    """Items that met the outage keep their place in line: once the LIS is back they go before the ones
    stored after them (a sample's later result never overtakes its earlier one)."""

    async def body() -> None:
        lis = SimulatedLis(delay=0.01)
        async with _filled_store(tmp_path, lis) as store:
            async with relaying(store, lis.port, connections=connections, timeout_s=2.0) as relay:
                await eventually(lambda: len(lis.booked) >= 10, what="some delivered")
                await lis.go_down()  # every connection dropped, some mid-message
                await eventually(lambda: relay.health.state == "down", what="the relay sees the outage")
                delivered_while_down = relay.health.delivered
                await asyncio.sleep(0.3)
                assert relay.health.delivered == delivered_while_down
                await lis.come_back()
                await eventually(lambda: relay.health.delivered == SAMPLES * RERUNS, what="all delivered")
                assert relay.health.state == "up"
            counts = await store.counts()
        assert counts["outbox"]["lis"]["delivered"] == SAMPLES * RERUNS
        assert lis.duplicates == 0
        # Each value booked once (a resend after a lost ACK is the same control ID), in the order stored.
        _assert_each_sample_in_stored_order(lis)

    run(body(), timeout=60)


def test_a_store_failure_under_one_connection_ends_the_run_with_no_send_left_in_flight(tmp_path: Path) -> None:
    """The run fails (its supervisor restarts it) only once every connection's current item is over: a
    send still in flight would race the next run's read of the same item."""

    async def body() -> None:
        lis = SimulatedLis(mode="AR", delay=0.05)  # refusals: each one is booked by a store write
        async with _filled_store(tmp_path, lis) as store:
            dest = MllpDestination(id="lis", host="127.0.0.1", port=lis.port, connections=4,
                                   dead_letter_codes=["AE"], backoff_initial_s=0.05, backoff_max_s=0.2)
            relay = Relay(dest, store, asyncio.Event())
            store.fail_commits = True  # the refusal cannot be booked
            with pytest.raises(Exception, match="commit failed"):
                await relay.run()
            lanes = [t for t in asyncio.all_tasks() if "_deliver_lane" in t.get_coro().__qualname__]
            assert lanes == []  # no connection's send left running
            assert lis.in_flight == 0
            store.fail_commits = False
            assert (await store.counts())["outbox"]["lis"]["pending"] == SAMPLES * RERUNS

    run(body(), timeout=60)
