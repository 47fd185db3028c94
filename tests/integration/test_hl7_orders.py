"""IHE LAW orders over real loopback sockets: LAB-27 queries answered with the work (or DC), LAB-28 pushes
settled by the analyzer's ORL^O34, and orders from the LIS over MLLP (python-hl7 as the LIS's client)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
from hl7apy.parser import parse_message as hl7apy_parse
from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory
from labbridge_simulators.lis import SimulatedLis, order_message

from labbridge.config import parse_config
from labbridge.orders import NewOrder
from labbridge.runtime.daemon import Daemon
from tests.conftest import run

from .helpers import eventually


def law_config(tmp_path: Path, *, test_map: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"node": "test", "store": {"path": str(tmp_path / "labbridge.db")}, "http": {"enabled": False},
            "sites": [{"id": "arlon", "name": "Arlon"}],
            "instruments": [{"id": "law-1", "site": "arlon", "driver": "hl7-generic",
                             "transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0},
                             "link": {"framing": "mllp", "encoding": "utf-8"}, "test_map": test_map or {}}],
            "lis": [], **extra}


async def start(cfg: dict[str, Any]) -> tuple[Daemon, asyncio.Event, asyncio.Task[None]]:
    daemon = Daemon(parse_config(cfg))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    return daemon, stop, task


def analyzer(daemon: Daemon, **kwargs: Any) -> Hl7AnalyzerSim:
    bound = daemon.runners["law-1"].bound
    assert bound is not None
    return Hl7AnalyzerSim("law-1", bound, Hl7MessageFactory("law-1", dialect="law", sample_prefix="S", panel_size=2,
                                                            seed=3), interval=(0.0, 0.0), **kwargs)


def test_query_answered_with_the_work_then_dc_for_a_sample_without_work(tmp_path: Path) -> None:
    async def body() -> None:
        daemon, stop, task = await start(law_config(tmp_path, test_map={"GLU": "GLUC"}))
        try:
            # S000001 (the first sample the simulator measures) has work; the second has none. An order for
            # any instrument of the site is never pushed: only the query answer can carry it.
            order = await daemon.add_order(NewOrder("S000001", ("GLUC", "K"), site="arlon", priority="stat"),
                                           now=time.time())
            sim_stop = asyncio.Event()
            sim = analyzer(daemon, max_messages=2, query_share=1.0, linger=True)
            sim_task = asyncio.create_task(sim.run(sim_stop))
            await eventually(lambda: len(sim.acked) == 4 and sim.stats.query_answers == 2 and len(sim.no_work) >= 1,
                             what="results acknowledged, both queries answered, a DC received")
            # The query answer carried the work, LIS codes mapped to the analyzer's (GLUC -> GLU).
            assert sorted(sim.work["S000001"].values()) == ["GLU", "K"]
            assert sorted(sim.work["S000001"]) == [f"LB{order.id}-1", f"LB{order.id}-2"]
            assert "S000002" in sim.no_work
            stored = await daemon.orders.get(order.id)
            assert stored is not None and stored.state == "accepted" and stored.note == ""
            assert sim.stats.orl_codes == ["OK", "OK"]
            counters = daemon.runners["law-1"].health.counters
            assert counters.host_queries == 2 and counters.query_answers_sent == 2
            sim_stop.set()
            await sim_task
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_push_refused_by_the_analyzer_goes_back_to_pending_with_the_reason(tmp_path: Path) -> None:
    async def body() -> None:
        daemon, stop, task = await start(law_config(tmp_path))
        try:
            sim_stop = asyncio.Event()
            sim = analyzer(daemon, max_messages=0, linger=True, refuse_tests=frozenset({"HBA1C"}))
            sim_task = asyncio.create_task(sim.run(sim_stop))
            await sim.connected.wait()
            ok = await daemon.add_order(NewOrder("P1", ("NA",), instrument="law-1"), now=time.time())
            bad = await daemon.add_order(NewOrder("P2", ("HBA1C",), instrument="law-1"), now=time.time())

            async def states() -> tuple[str, str, str]:
                a, b = await daemon.orders.get(ok.id), await daemon.orders.get(bad.id)
                assert a is not None and b is not None
                return a.state, b.state, b.note

            deadline = time.monotonic() + 20
            while (got := await states())[:2] != ("accepted", "pending") or not got[2]:
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.05)
            assert "HBA1C not on board" in got[2]
            assert sim.work == {"P1": {f"LB{ok.id}-1": "NA"}}
            # A refused order is not pushed again in a loop.
            omls = sim.stats.omls
            daemon.runners["law-1"].orders_wakeup.set()
            await asyncio.sleep(0.3)
            assert sim.stats.omls == omls
            sim_stop.set()
            await sim_task
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def lis_config(tmp_path: Path) -> dict[str, Any]:
    return law_config(tmp_path, test_map={"GLU": "GLUC", "NA": "NA"},
                      lis_orders=[{"id": "his", "host": "127.0.0.1", "port": 0, "instrument": "law-1"}])


def test_lis_orders_over_mllp_are_stored_then_pushed_to_the_analyzer(tmp_path: Path) -> None:
    async def body() -> None:
        daemon, stop, task = await start(lis_config(tmp_path))
        lis = SimulatedLis()
        try:
            sim_stop = asyncio.Event()
            sim = analyzer(daemon, max_messages=0, linger=True)
            sim_task = asyncio.create_task(sim.run(sim_stop))
            await sim.connected.wait()
            [listener] = daemon.lis_orders
            assert listener.bound is not None
            message = order_message("OML^O21", sample="L1", tests=["GLUC", "NA"], control_id="HIS1", priority="S",
                                    patient="PAT5")
            ack = await lis.send_orders(*listener.bound, message)
            assert str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == "HIS1"
            assert hl7apy_parse(str(ack), validation_level=1, find_groups=True).validate() is True
            # Resent after a lost ACK: AA again, not ordered twice.
            again = await lis.send_orders(*listener.bound, message)
            assert str(again.segment("MSA")[1]) == "AA"
            [order] = await daemon.orders.list_orders()
            assert (order.sample_id, order.test_codes, order.priority, order.source) == (
                "L1", ("GLUC", "NA"), "stat", "lis:his")
            await eventually(lambda: "L1" in sim.work, what="the LIS order pushed to the analyzer")
            assert sorted(sim.work["L1"].values()) == ["GLU", "NA"]  # mapped to the analyzer's codes
            deadline = time.monotonic() + 10
            while (got := await daemon.orders.get(order.id)) is None or got.state != "accepted":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # ORM^O01 (v2.3.1) and OML^O33 are taken too.
            for kind, control in (("ORM^O01", "HIS2"), ("OML^O33", "HIS3")):
                ack = await lis.send_orders(*listener.bound, order_message(kind, sample=f"L{control}",
                                                                           tests=["NA"], control_id=control))
                assert str(ack.segment("MSA")[1]) == "AA", str(ack)
            await eventually(lambda: {"LHIS2", "LHIS3"} <= set(sim.work), what="both pushed")
            sim_stop.set()
            await sim_task
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_lis_order_with_an_unknown_test_or_instrument_gets_ae_with_the_reason(tmp_path: Path) -> None:
    async def body() -> None:
        daemon, stop, task = await start(lis_config(tmp_path))
        lis = SimulatedLis()
        try:
            [listener] = daemon.lis_orders
            assert listener.bound is not None
            ack = await lis.send_orders(*listener.bound, order_message("OML^O21", sample="X1", tests=["GLUC", "ZZZ"],
                                                                       control_id="HIS9"))
            assert str(ack.segment("MSA")[1]) == "AE"
            assert "test ZZZ unknown for instrument law-1" in str(ack.segment("MSA")[3])
            assert hl7apy_parse(str(ack), validation_level=1, find_groups=True).validate() is True
            ack = await lis.send_orders(*listener.bound, order_message("OML^O21", sample="X2", tests=["NA"],
                                                                       control_id="HIS10", to="no-such"))
            # MSH-5 names nothing known: the listener's default instrument applies; a known site would too.
            assert str(ack.segment("MSA")[1]) == "AA"
            ack = await lis.send_orders(*listener.bound, order_message("OML^O21", sample="X3", tests=["NA"],
                                                                       control_id="HIS11", to="arlon"))
            assert str(ack.segment("MSA")[1]) == "AA"
            orders = await daemon.orders.list_orders()
            assert sorted((o.sample_id, o.instrument, o.site) for o in orders) == [
                ("X2", "law-1", "arlon"), ("X3", "", "arlon")]  # nothing from the refused message
            ack = await lis.send_orders(*listener.bound, "MSH|^~\\&|SIMLIS|HOSP|LB|LAB|20261123||ORU^R01|HIS12|P|"
                                                         "2.5.1\rPID|1||P\r")
            assert str(ack.segment("MSA")[1]) == "AR"
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_a_listener_without_a_default_refuses_orders_it_cannot_route(tmp_path: Path) -> None:
    async def body() -> None:
        cfg = law_config(tmp_path, lis_orders=[{"id": "his", "host": "127.0.0.1", "port": 0}])
        daemon, stop, task = await start(cfg)
        try:
            [listener] = daemon.lis_orders
            assert listener.bound is not None
            ack = await SimulatedLis().send_orders(*listener.bound, order_message(
                "OML^O21", sample="Y1", tests=["NA"], control_id="HIS1", to="chem-9"))
            assert str(ack.segment("MSA")[1]) == "AE"
            assert "names no instrument or site" in str(ack.segment("MSA")[3])
            ack = await SimulatedLis().send_orders(*listener.bound, order_message(
                "OML^O21", sample="Y1", tests=["NA"], control_id="HIS2", to="law-1"))
            assert str(ack.segment("MSA")[1]) == "AA"
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_a_re_sent_awos_id_refused_as_duplicate_counts_as_accepted(tmp_path: Path) -> None:
    async def body() -> None:
        daemon, stop, task = await start(law_config(tmp_path))
        try:
            order = await daemon.add_order(NewOrder("D1", ("NA",), instrument="law-1"), now=time.time())
            sim_stop = asyncio.Event()
            sim = analyzer(daemon, max_messages=0, linger=True)
            # The analyzer already holds this AWOS (our earlier OML reached it, its ORL was lost).
            sim.work["D1"] = {f"LB{order.id}-1": "NA"}
            sim_task = asyncio.create_task(sim.run(sim_stop))
            await eventually(lambda: sim.stats.orl_codes == ["UA"], what="the re-sent AWOS refused")
            deadline = time.monotonic() + 10
            while (got := await daemon.orders.get(order.id)) is None or got.state != "accepted":
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.05)
            sim_stop.set()
            await sim_task
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_python_hl7_as_the_analyzer_gets_rsp_k11_then_oml_o33_and_ae_for_a_bad_query(tmp_path: Path) -> None:
    async def body() -> None:
        daemon, stop, task = await start(law_config(tmp_path))
        try:
            await daemon.add_order(NewOrder("H1", ("K",), site="arlon"), now=time.time())
            bound = daemon.runners["law-1"].bound
            assert bound is not None
            reader, writer = await hl7.mllp.open_hl7_connection(*bound, encoding="utf-8")
            try:
                qbp = ("MSH|^~\\&|PEER|LAB|LABBRIDGE|LAB|20261123100000||QBP^Q11^QBP_Q11|PQ1|P|2.5.1\r"
                       "QPD|WOS^Work Order Step^IHE_LABTF|T1|H1\rRCP|I||R\r")
                writer.writemessage(hl7.parse(qbp))
                await writer.drain()
                async with asyncio.timeout(10):
                    rsp = await reader.readmessage()
                    oml = await reader.readmessage()
                assert str(rsp.segment("MSH")[9]) == "RSP^K11^RSP_K11" and str(rsp.segment("MSA")[2]) == "PQ1"
                assert str(oml.segment("MSH")[9]) == "OML^O33^OML_O33" and str(oml.segment("ORC")[1]) == "NW"
                assert hl7apy_parse(str(oml), validation_level=1, find_groups=True).validate() is True
                bad = qbp.replace("PQ1", "PQ2").replace("WOS^", "XYZ^")
                writer.writemessage(hl7.parse(bad))
                await writer.drain()
                async with asyncio.timeout(10):
                    ack = await reader.readmessage()
                assert str(ack.segment("MSA")[1]) == "AE" and "not supported" in str(ack.segment("MSA")[3])
            finally:
                writer.close()
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    run(body())
