"""Shared parts of the benchmark suite: figures (median, min, max of runs), the table, the JSON, messages."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labbridge_simulators.astm_analyzer import Analyte, MessageFactory, SimMessage

import labbridge
from labbridge import aio

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"

# A 25-result complete blood count (the chemistry panel comes from the simulators: 20 tests).
CBC_PANEL: tuple[Analyte, ...] = (
    Analyte("WBC", "Leukocytes", "10*9/L", 4.0, 10.0, 2),
    Analyte("RBC", "Erythrocytes", "10*12/L", 4.2, 5.9, 2),
    Analyte("HGB", "Hemoglobin", "g/dL", 12.0, 17.5),
    Analyte("HCT", "Hematocrit", "%", 36, 52),
    Analyte("MCV", "MCV", "fL", 80, 100),
    Analyte("MCH", "MCH", "pg", 27, 33),
    Analyte("MCHC", "MCHC", "g/dL", 32, 36),
    Analyte("RDW", "RDW-CV", "%", 11.5, 14.5),
    Analyte("PLT", "Platelets", "10*9/L", 150, 400, 0),
    Analyte("MPV", "MPV", "fL", 7.5, 11.5),
    Analyte("NEUT%", "Neutrophils %", "%", 40, 75),
    Analyte("LYMPH%", "Lymphocytes %", "%", 20, 45),
    Analyte("MONO%", "Monocytes %", "%", 2, 10),
    Analyte("EOS%", "Eosinophils %", "%", 1, 6),
    Analyte("BASO%", "Basophils %", "%", 0, 2),
    Analyte("NEUT#", "Neutrophils", "10*9/L", 1.8, 7.5, 2),
    Analyte("LYMPH#", "Lymphocytes", "10*9/L", 1.0, 4.0, 2),
    Analyte("MONO#", "Monocytes", "10*9/L", 0.2, 1.0, 2),
    Analyte("EOS#", "Eosinophils", "10*9/L", 0.02, 0.5, 2),
    Analyte("BASO#", "Basophils", "10*9/L", 0.0, 0.1, 2),
    Analyte("NRBC", "NRBC", "/100 WBC", 0, 0.5),
    Analyte("RET%", "Reticulocytes %", "%", 0.5, 2.5, 2),
    Analyte("RET#", "Reticulocytes", "10*9/L", 25, 75, 0),
    Analyte("IG%", "Immature granulocytes %", "%", 0, 0.6),
    Analyte("IG#", "Immature granulocytes", "10*9/L", 0.0, 0.06, 2),
)

PANELS = ("chem20", "cbc25")


def message_factory(panel: str, instrument: str = "bench", *, sample_prefix: str = "B",
                    seed: int = 1) -> MessageFactory:
    """A generator of E1394 messages: ``chem20`` (20-test chemistry) or ``cbc25`` (25-result CBC)."""
    if panel == "chem20":
        return MessageFactory(instrument, sample_prefix=sample_prefix, panel_size=20, seed=seed)
    if panel == "cbc25":
        factory = MessageFactory(instrument, sample_prefix=sample_prefix, seed=seed, model="SimHema")
        factory.panel = CBC_PANEL
        return factory
    raise ValueError(f"unknown panel {panel!r} (known: {', '.join(PANELS)})")


def one_message(panel: str) -> SimMessage:
    return message_factory(panel).next()


@dataclass
class Figure:
    """One measured quantity: the median of several runs, with min and max."""

    section: str
    name: str
    unit: str
    median: float
    min: float
    max: float
    runs: int
    higher_is_better: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, section: str, name: str, unit: str, values: Sequence[float], *, higher_is_better: bool = True,
           **extra: Any) -> Figure:
        return cls(section, name, unit, statistics.median(values), min(values), max(values), len(values),
                   higher_is_better, dict(extra))


@dataclass
class Ratio:
    section: str
    name: str
    value: float
    target: float | None = None  # the target for this ratio, if it has one

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.value >= self.target


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Units per second of ``fn`` (which returns how many units it did) over about ``seconds``."""
    fn()  # warm up (imports, caches)
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += fn()
    return done / elapsed


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.3g}"


def print_table(title: str, figures: Sequence[Figure], ratios: Sequence[Ratio]) -> None:
    print(f"\n== {title}")
    if figures:
        width = max(len(f.name) for f in figures) + 2
        print(f"{'':<{width}}{'median':>14} {'min':>12} {'max':>12}  unit (runs)")
        for f in figures:
            print(f"{f.name:<{width}}{fmt(f.median):>14} {fmt(f.min):>12} {fmt(f.max):>12}  {f.unit} ({f.runs})")
    for r in ratios:
        target = "" if r.target is None else f"   target >= {r.target:g}: {'met' if r.met else 'MISSED'}"
        print(f"  ratio {r.name}: {r.value:.2f}{target}")
    sys.stdout.flush()


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_start": load,
            "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE), "event_loop": event_loop(),
            "labbridge_cores": labbridge.BUILD.describe()}


def event_loop() -> str:
    """The loop labbridge and every benchmark process run on (labbridge.aio: uvloop where installed)."""
    return "uvloop" if aio.loop_factory() is not None else "asyncio"


def write_json(path: Path | None, args: dict[str, Any], figures: Sequence[Figure], ratios: Sequence[Ratio],
               notes: Sequence[str], targets: Sequence[dict[str, Any]] = ()) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"bench-{stamp}.json"
    data = {"when": stamp, "machine": machine(), "args": args, "figures": [asdict(f) for f in figures],
            "ratios": [{**asdict(r), "met": r.met} for r in ratios], "targets": list(targets), "notes": list(notes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's open-file limit towards ``want`` (within the hard limit); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def receiver_arguments(description: str | None) -> argparse.Namespace:
    """``--host``, ``--port`` and ``--ready FILE`` of the benchmark's stand-alone receivers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready", type=Path, help="write host, port and pid here (JSON) once listening")
    return parser.parse_args()
