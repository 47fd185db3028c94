"""Each analyzer family's simulator sends through a running daemon configured with that family's driver."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, ReceivedOrder
from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory
from labbridge_simulators.profiles import FAMILIES, FamilyFactory, link_dialect

from labbridge.orders import NewOrder
from tests.conftest import run
from tests.integration.helpers import eventually, running_lab


def test_every_family_reaches_the_lis_with_its_sample_ids_test_codes_and_qc_kinds(tmp_path: Path) -> None:
    async def body() -> None:
        # QC is held by default (issue 20); these families' QC goes too, marked as QC.
        async with running_lab(tmp_path, drivers=list(FAMILIES), extra_lis={"qc": "send-marked"}) as lab:
            sims: list[tuple[AstmAnalyzerSim, FamilyFactory]] = []
            for i, family in enumerate(FAMILIES):
                instrument = f"an-{i}"
                runner = lab.daemon.runners[instrument]
                assert runner.bound is not None and runner.cfg.driver == family
                factory = FamilyFactory(family, instrument, sample_prefix=f"{i}X", seed=i, qc_every=3)
                # The analyzer speaks its family's link dialect; the instrument has no [link] table, so
                # it must get the same dialect from its driver's link defaults (MAGLUMI: no FN, no checksum).
                sims.append((AstmAnalyzerSim(instrument, runner.bound, factory, interval=(0.0, 0.01),
                                             max_messages=6, profile=link_dialect(family)), factory))
            await asyncio.gather(*(sim.run(asyncio.Event()) for sim, _ in sims))
            acked = {identity for sim, _ in sims for identity in sim.acked}
            for sim, _ in sims:
                assert sim.stats.messages_acked == 6
            await eventually(lambda: acked <= lab.lis.delivered, what="every family's results at the LIS")
            assert lab.lis.delivered == acked and lab.lis.duplicates == 0
            assert (await lab.daemon.store.counts())["undecodable"] == 0
            with sqlite3.connect(lab.config.store.path) as conn:
                stored = [json.loads(d) for (d,) in conn.execute("SELECT data FROM results")]
        qc_samples = {s for _, factory in sims for s in factory.qc_samples}
        assert len(qc_samples) == 2 * len(FAMILIES)
        kinds = {(r["instrument"], r["sample_id"], r["kind"]) for r in stored}
        assert {k for _, s, k in kinds if s in qc_samples} == {"qc"}
        assert {k for _, s, k in kinds if s not in qc_samples} == {"patient"}
        assert {i for i, s, _ in kinds if s in qc_samples} == {f"an-{i}" for i in range(len(FAMILIES))}

    run(body())


HL7_FAMILIES = (("mindray-bc-bs", "mindray"), ("ihe-law", "law"), ("cepheid-genexpert-hl7", "genexpert"))


def test_hl7_families_reach_the_lis_with_qc_recognised_and_no_link_table(tmp_path: Path) -> None:
    async def body() -> None:
        # No [link] table: the HL7 drivers' link defaults give framing = "mllp".
        async with running_lab(tmp_path, drivers=[d for d, _ in HL7_FAMILIES], extra_lis={"qc": "send-marked"}) as lab:
            sims: list[tuple[Hl7AnalyzerSim, Hl7MessageFactory]] = []
            for i, (driver, dialect) in enumerate(HL7_FAMILIES):
                assert lab.daemon.runners[f"an-{i}"].cfg.driver == driver
                runner = lab.daemon.runners[f"an-{i}"]
                assert runner.bound is not None and runner.cfg.link.framing == "mllp"
                factory = Hl7MessageFactory(f"an-{i}", dialect=dialect, sample_prefix=f"{i}H", panel_size=3,
                                            seed=i, qc_every=2)
                sims.append((Hl7AnalyzerSim(f"an-{i}", runner.bound, factory, interval=(0.0, 0.01),
                                            max_messages=4), factory))
            await asyncio.gather(*(sim.run(asyncio.Event()) for sim, _ in sims))
            acked = {identity for sim, _ in sims for identity in sim.acked}
            assert all(sim.stats.messages_acked == 4 for sim, _ in sims)
            await eventually(lambda: acked <= lab.lis.delivered, what="every HL7 family's results at the LIS")
            with sqlite3.connect(lab.config.store.path) as conn:
                stored = [json.loads(d) for (d,) in conn.execute("SELECT data FROM results")]
        qc_samples = {s for _, factory in sims for s in factory.qc_samples}
        assert len(qc_samples) == 2 * len(HL7_FAMILIES)
        kinds = {(r["sample_id"], r["kind"]) for r in stored}
        assert {k for s, k in kinds if s in qc_samples} == {"qc"}
        assert {k for s, k in kinds if s not in qc_samples} == {"patient"}

    run(body())


def test_vitros_asks_for_its_orders_with_a_host_query_and_runs_what_it_is_told(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, drivers=["ortho-vitros"],
                               extra_instrument={"test_map": {"GLU": "GLUC", "CREA": "CREAT"}}) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            factory = FamilyFactory("ortho-vitros", "an-0", sample_prefix="VQ", seed=7, qc_every=0)
            ordered, unknown = factory.sample_id(1), factory.sample_id(2)
            # A site-wide order is not pushed: it waits for the analyzer that asks about the sample.
            await lab.daemon.add_order(NewOrder(ordered, ("GLUC", "K"), site="arlon", patient_id="P-9"),
                                       now=1.0)
            sim = AstmAnalyzerSim("an-0", runner.bound, factory, interval=(0.0, 0.01), max_messages=2,
                                  query_share=1.0, query_timeout=10.0)
            await asyncio.wait_for(sim.run(asyncio.Event()), 60)
            # The VITROS query (Q|1|^sample||ALL||||||||O) was answered with the order, its LIS codes mapped
            # back to the analyzer's (GLUC -> GLU), and with Z for a sample the host knows nothing of.
            assert sim.orders_received == [ReceivedOrder(ordered, ("GLU", "K"), "Q", "R", "P-9"),
                                           ReceivedOrder(unknown, (), "Z", "", "")]
            assert sim.stats.queries_sent == 2 and sim.stats.query_answers == 2 and sim.stats.query_timeouts == 0
            tested = {(sample, code) for _, sample, code, _ in sim.acked}
            assert {c for s, c in tested if s == ordered} == {"GLU", "K"}  # only what the host ordered
            assert {c for s, c in tested if s == unknown} == {"GLU", "CREA", "NA", "K", "TSH"}  # its whole panel
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="VITROS results at the LIS")
            assert runner.health.counters.host_queries == 2 and runner.health.counters.query_answers_sent == 2

    run(body())
