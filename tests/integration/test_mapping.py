"""Per-instrument result mapping over real sockets, ASTM and HL7: what reaches the LIS is mapped, dropped
codes never arrive, held ones wait in the dead letters (kind ``held``) until an operator releases them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab

MAPPING: dict[str, Any] = {"test_map": {"GLU": "GLUC", "CREA": "CREAT"}, "unit_map": {"mmol/L": "mmol/l"},
                           "drop_tests": ["UREA"], "tests": {"CREA": {"action": "hold", "units": {"umol/L": "µmol/l"}}}}


def delivered(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*")):
        if not path.name.startswith("."):
            out += json.loads(path.read_text(encoding="utf-8"))["results"]
    return out


def lab_for(tmp_path: Path, driver: str) -> dict[str, Any]:
    folder = tmp_path / "lis-in"
    folder.mkdir()
    link = {"link": {"framing": "mllp", "encoding": "utf-8"}} if driver == "hl7-generic" else {}
    return {"drivers": [driver], "extra_instrument": {**MAPPING, **link},
            "extra": {"lis": [{"id": "files", "kind": "file", "directory": str(folder), "format": "json",
                               "backoff_initial_s": 0.05, "backoff_max_s": 0.3}]}}


async def check_mapping_and_release(tmp_path: Path, driver: str) -> None:
    folder = tmp_path / "lis-in"
    async with running_lab(tmp_path, **lab_for(tmp_path, driver)) as lab:
        if driver == "hl7-generic":
            bound = lab.daemon.runners["an-0"].bound
            assert bound is not None
            sim: Any = Hl7AnalyzerSim("an-0", bound, Hl7MessageFactory("an-0", dialect="mindray",
                                                                       sample_prefix="S-", panel_size=3, seed=3),
                                      interval=(0.0, 0.01), max_messages=2)
        else:
            sim = lab.analyzer("an-0", messages=2, tests=3)  # GLU, CREA, UREA
        await asyncio.wait_for(sim.run(asyncio.Event()), 20)
        await eventually(lambda: len(delivered(folder)) == 2, what="the mapped GLU results")
        sent = delivered(folder)
        assert {(r["test_code"], r["instrument_test_code"], r["units"]) for r in sent} == {("GLUC", "GLU", "mmol/l")}
        held = await lab.daemon.store.outbox_rows(state="dead")
        assert len(held) == 2 and {h["dead_kind"] for h in held} == {"held"}
        assert "CREA" in held[0]["last_error"] and "outbox retry" in held[0]["last_error"]
        counts = await lab.daemon.store.counts()
        assert counts["results"] == 4  # GLU and the held CREA are stored; the dropped UREA is not
        outcomes = await lab.daemon.operations.retry(None, actor="tech", reason="validated by the lab")
        assert [o["outcome"] for o in outcomes] == ["queued", "queued"]
        await eventually(lambda: len(delivered(folder)) == 4, what="the released CREA results")
        creat = [r for r in delivered(folder) if r["test_code"] == "CREAT"]
        assert len(creat) == 2 and {r["units"] for r in creat} == {"µmol/l"}
        assert not any(r["instrument_test_code"] == "UREA" for r in delivered(folder))
        assert await lab.daemon.store.outbox_rows(state="dead") == []


def test_astm_results_are_mapped_dropped_held_and_released(tmp_path: Path) -> None:
    run(check_mapping_and_release(tmp_path, "astm-generic"))


def test_hl7_results_are_mapped_dropped_held_and_released(tmp_path: Path) -> None:
    run(check_mapping_and_release(tmp_path, "hl7-generic"))
