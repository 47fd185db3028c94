"""Each analyzer family's simulator sends through a running daemon configured with that family's driver."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim
from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory
from labbridge_simulators.profiles import FAMILIES, FamilyFactory, link_dialect

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab


def test_every_family_reaches_the_lis_with_its_sample_ids_test_codes_and_qc_kinds(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, drivers=list(FAMILIES)) as lab:
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


HL7_FAMILIES = (("mindray-bc-bs", "mindray"), ("ihe-law", "law"))


def test_hl7_families_reach_the_lis_with_qc_recognised_and_no_link_table(tmp_path: Path) -> None:
    async def body() -> None:
        # No [link] table: the HL7 drivers' link defaults give framing = "mllp".
        async with running_lab(tmp_path, drivers=[d for d, _ in HL7_FAMILIES]) as lab:
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
