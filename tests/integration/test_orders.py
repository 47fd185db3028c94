"""Host queries and order push over real loopback sockets: simulated analyzers, the daemon, its HTTP API."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
from labbridge_simulators.astm_analyzer import ReceivedOrder

from labbridge.orders import NewOrder
from labbridge.protocols import e1381
from labbridge.protocols.e1394 import parse_records
from tests.conftest import run
from tests.integration.helpers import eventually, running_lab

TEST_MAP = {"test_map": {"GLU": "GLUC", "CREA": "CREAT"}}


def test_analyzer_queries_and_gets_its_orders_or_y_or_z(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=2, extra_instrument=TEST_MAP) as lab:
            sim = lab.analyzer("an-0", messages=4, query_share=1.0, query_timeout=10.0)
            s1, s2, s3, s4 = (sim.factory.sample_id(n) for n in range(1, 5))
            add = lab.daemon.add_order
            # Orders for any analyzer of site arlon (an-0 is there): never pushed, answered to the one that asks.
            first = await add(NewOrder(s1, ("GLUC", "NA"), site="arlon", patient_id="P-1"), now=1.0)
            site_wide = await add(NewOrder(s2, ("CREAT",), site="arlon", priority="stat"), now=2.0)
            # An order for another analyzer is not an-0's: for an-0, s3 is unknown (Z).
            other = await add(NewOrder(s3, ("K",), instrument="an-1"), now=3.0)
            # s4 has an order, but it was cancelled: unknown too.
            cancelled = await add(NewOrder(s4, ("K",), site="arlon"), now=4.0)
            await lab.daemon.orders.cancel(cancelled.id, now=5.0)

            await asyncio.wait_for(sim.run(asyncio.Event()), 60)

            assert sim.orders_received == [
                ReceivedOrder(s1, ("GLU", "NA"), "Q", "R", "P-1"),  # LIS codes mapped back to the instrument's
                ReceivedOrder(s2, ("CREA",), "Q", "S", ""),
                ReceivedOrder(s3, (), "Z", "", ""),
                ReceivedOrder(s4, (), "Z", "", ""),
            ]
            assert sim.stats.queries_sent == 4 and sim.stats.query_answers == 4 and sim.stats.query_timeouts == 0
            # The analyzer ran what it was told: only GLU and NA on s1, CREA on s2, its panel on the others.
            tested = {(sample, code) for _, sample, code, _ in sim.acked}
            assert {c for s, c in tested if s == s1} == {"GLU", "NA"}
            assert {c for s, c in tested if s == s2} == {"CREA"}
            assert len({c for s, c in tested if s == s3}) == 5
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="results at the LIS")

            states = {o.id: o for o in await lab.daemon.orders.list_orders()}
            assert states[first.id].state == "sent" and states[first.id].sent_to == "an-0"
            assert states[site_wide.id].state == "sent" and states[site_wide.id].sent_to == "an-0"
            assert states[other.id].state == "pending"  # an-1 is not connected: never sent
            counters = lab.daemon.runners["an-0"].health.counters
            assert counters.host_queries == 4 and counters.query_answers_sent == 4 and counters.orders_sent == 2
            # Every query was stored like any message: 4 queries + 4 result messages.
            assert (await lab.daemon.store.counts())["messages"] == 8

    run(body())


def test_order_added_through_the_api_and_cli_is_pushed_and_marked_sent_only_after_the_ack(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, http=True, extra_instrument=TEST_MAP) as lab:
            assert lab.daemon.http_address is not None
            base = "http://{}:{}".format(*lab.daemon.http_address)
            # The analyzer has nothing to send; it hangs up instead of ACKing the host's first message.
            sim = lab.analyzer("an-0", messages=0, linger=True, drop_before_ack=1)
            stop = asyncio.Event()
            task = asyncio.create_task(sim.run(stop))
            await asyncio.wait_for(sim.connected.wait(), 10)
            async with aiohttp.ClientSession() as http:
                bad = await http.post(f"{base}/api/orders", json={"sample_id": "X", "test_codes": ["GLUC"],
                                                                  "instrument": "nope", "colour": "red"})
                assert bad.status == 400
                assert (await bad.json())["problems"] == ["colour: unknown field"]
                bad = await http.post(f"{base}/api/orders", json={"sample_id": "X", "test_codes": ["GLUC"],
                                                                  "instrument": "nope"})
                assert "instrument: no instrument 'nope'" in (await bad.json())["problems"][0]
                resp = await http.post(f"{base}/api/orders", json={
                    "sample_id": "PUSH-1", "test_codes": ["GLUC", "K"], "instrument": "an-0", "priority": "stat",
                    "patient_id": "P-9"})
                assert resp.status == 201
                order = await resp.json()
                assert order["state"] == "pending" and order["site"] == "arlon"

                await asyncio.wait_for(sim.host_message_dropped.wait(), 10)
                # The analyzer had the whole message but never ACKed its last frame: not sent.
                resp = await http.get(f"{base}/api/orders/{order['id']}")
                assert (await resp.json())["state"] == "pending"

                async def state() -> str:
                    r = await http.get(f"{base}/api/orders/{order['id']}")
                    return str((await r.json())["state"])

                deadline = time.monotonic() + 20
                while await state() != "sent":
                    assert time.monotonic() < deadline, "order never marked sent"
                    await asyncio.sleep(0.05)
                assert sim.orders_received == [ReceivedOrder("PUSH-1", ("GLU", "K"), "O", "S", "P-9")]

                # The CLI against the running daemon.
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "labbridge.cli", "orders", "add", "--url", base, "--instrument", "an-0",
                    "--sample", "PUSH-2", "--test", "CREAT", stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE)
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                assert out.decode().startswith("order 2 added (pending)")
                await eventually(lambda: len(sim.orders_received) == 2, what="the CLI's order pushed")
                assert sim.orders_received[1] == ReceivedOrder("PUSH-2", ("CREA",), "O", "R", "")
                await eventually(lambda: lab.daemon.runners["an-0"].health.counters.orders_sent == 2,
                                 what="marked sent")
                listed = await (await http.get(f"{base}/api/orders?state=sent")).json()
                assert [o["sample_id"] for o in listed] == ["PUSH-2", "PUSH-1"]
                cancelled = await http.post(f"{base}/api/orders/{order['id']}/cancel", json={})
                assert (await cancelled.json())["state"] == "cancelled"
                assert (await http.post(f"{base}/api/orders/999/cancel", json={})).status == 404
                assert (await http.post(f"{base}/api/orders/{order['id']}/cancel")).status == 415  # not JSON
            stop.set()
            await asyncio.wait_for(task, 10)
            assert sim.stats.host_messages == 2 and sim.stats.host_messages_dropped == 1

    run(body())


def test_contention_the_analyzer_goes_first_and_the_order_is_delivered_after(tmp_path: Path) -> None:
    """labbridge's ENQ (for a pushed order) crosses the analyzer's ENQ: labbridge yields (R-A7), takes
    the analyzer's message, and delivers the order after its contention wait (R-A9, 20 s)."""

    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            bound = lab.daemon.runners["an-0"].bound
            assert bound is not None
            reader, writer = await asyncio.open_connection(*bound)
            try:
                await eventually(lambda: lab.daemon.runners["an-0"].health.peer is not None, what="connected")
                await lab.daemon.add_order(NewOrder("C-1", ("GLU",), instrument="an-0"), now=time.time())
                assert await asyncio.wait_for(reader.readexactly(1), 10) == b"\x05"  # labbridge's ENQ
                writer.write(b"\x05")  # ... crossed by ours: contention
                await writer.drain()
                # The host yields silently; the instrument asks again (R-A8) and gets the line.
                await asyncio.sleep(0.2)
                writer.write(b"\x05")
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(1), 10) == b"\x06"
                message = [b"H|\\^&|||RAW", b"P|1|PAT1", b"O|1|C-9||^^^GLU", b"R|1|^^^GLU|5.5|mmol/L||N||F",
                           b"L|1|N"]
                for frame in e1381.build_frames(message):
                    writer.write(frame)
                    await writer.drain()
                    assert await asyncio.wait_for(reader.readexactly(1), 10) == b"\x06"
                writer.write(b"\x04")
                await writer.drain()
                counters = lab.daemon.runners["an-0"].health.counters
                assert counters.messages_received == 1 and counters.orders_sent == 0
                started = time.monotonic()
                # Now labbridge asks for the line again, after its contention wait.
                assert await asyncio.wait_for(reader.readexactly(1), 30) == b"\x05"
                assert time.monotonic() - started > 15
                writer.write(b"\x06")
                await writer.drain()
                link = e1381.E1381Link(e1381.Role.INSTRUMENT)
                link.receive_data(b"\x05", 0.0)  # put the parsing side in receiver state
                link.data_to_send()
                got: list[e1381.MessageReceived] = []
                while not got:
                    data = await asyncio.wait_for(reader.read(4096), 10)
                    assert data
                    link.receive_data(data, 0.0)
                    got = [e for e in link.events() if isinstance(e, e1381.MessageReceived)]
                    if not got:
                        assert counters.orders_sent == 0  # not before the last frame is ACKed
                        writer.write(link.data_to_send())
                        await writer.drain()
                records = parse_records(got[0].records)
                orders = [r for r in records if r.type == "O"]
                assert [(r.field(3), r.field(26)) for r in orders] == [("C-1", "O")]
                assert counters.orders_sent == 0
                link.accept_message(0.0)
                writer.write(link.data_to_send())
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(1), 10) == b"\x04"
                await eventually(lambda: counters.orders_sent == 1, what="order marked sent")
                (sent,) = await lab.daemon.orders.list_orders()
                assert sent.state == "sent"
            finally:
                writer.close()
                await writer.wait_closed()

    run(body())


def test_cli_works_on_a_store_file(tmp_path: Path) -> None:
    import json
    import subprocess

    store = str(tmp_path / "lb.db")
    cli = [sys.executable, "-m", "labbridge.cli", "orders"]

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, check=False)

    added = call("add", "--store", store, "--site", "arlon", "--sample", "S1", "--test", "GLUC", "--test", "K",
                 "--priority", "stat", "--json")
    assert added.returncode == 0, added.stderr
    order = json.loads(added.stdout)
    assert order["site"] == "arlon" and order["instrument"] == "" and order["priority"] == "stat"
    refused = call("add", "--store", store, "--sample", "S2", "--test", "GLUC")
    assert refused.returncode == 1 and "instrument or site" in refused.stderr
    listed = call("list", "--store", store)
    assert listed.returncode == 0 and "S1" in listed.stdout and "GLUC,K" in listed.stdout
    assert call("cancel", "--store", store, str(order["id"])).stdout.strip() == f"order {order['id']} cancelled"
    assert call("cancel", "--store", store, "42").returncode == 1
    listed = call("list", "--store", store, "--state", "cancelled", "--json")
    assert [o["sample_id"] for o in json.loads(listed.stdout)] == ["S1"]


def test_cli_with_a_config_and_the_daemon_stopped_checks_names_against_it(tmp_path: Path) -> None:
    """``orders -c CONFIG`` (as ``outbox -c``): the daemon's API if it runs, else its store file, with the
    instrument and site names checked against the config and the site filled in from the instrument."""
    import json
    import subprocess

    from tests.integration.helpers import free_port

    config = tmp_path / "labbridge.toml"
    config.write_text("\n".join([
        "[store]", 'path = "lb.db"', "[http]", f"port = {free_port()}",  # nothing listens there: stopped
        "[[sites]]", 'id = "arlon"', 'name = "Arlon"',
        "[[instruments]]", 'id = "arlon-chem-1"', 'site = "arlon"', 'driver = "astm-generic"',
        'transport = { kind = "tcp-server", host = "127.0.0.1", port = 4001 }',
    ]) + "\n", encoding="utf-8")

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labbridge.cli", "orders", *args, "-c", str(config)],
                              capture_output=True, text=True, timeout=60, check=False)

    refused = call("add", "--instrument", "nope", "--sample", "S1", "--test", "GLUC")
    assert refused.returncode == 1 and "instrument: no instrument 'nope'" in refused.stderr
    added = call("add", "--instrument", "arlon-chem-1", "--sample", "S1", "--test", "GLUC", "--json")
    assert added.returncode == 0, added.stderr
    order = json.loads(added.stdout)
    assert order["instrument"] == "arlon-chem-1" and order["site"] == "arlon"  # completed from the config
    assert (tmp_path / "lb.db").exists()  # the config's store, relative to the config file
    listed = call("list", "--json")
    assert [o["sample_id"] for o in json.loads(listed.stdout)] == ["S1"]
