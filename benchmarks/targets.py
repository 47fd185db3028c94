"""Issue 15's performance targets, each judged met or missed from the figures of one run.

Every target is read from figures measured in the same run as its peers (python-astm's codec, frame path
and server, python-hl7): a ratio is taken between medians of that run, never against a figure of another
run. A target whose figures this run did not measure (a section left out, a link count not run) is
listed as "not measured", never as met.

    1. throughput at 10 and 100 links >= python-astm's server; delivered >= 95% of stored (per second);
    2. daemon CPU per message at 10 links (daemon, writer, relay) <= 1.2x python-astm's server's;
    3. last frame -> ACK p99 <= 10 ms at 10 links; last frame -> LIS ACK p99 <= 50 ms at 10 links,
       <= 250 ms at 100 links;
    4. memory, shared pages counted once: <= 35 MiB with no instrument, <= 45 MiB at 100 busy links,
       < 100 MiB at 1,000 busy links;
    5. codec + driver >= 4x python-astm's codec; E1381 frame path frame by frame >= 5x python-astm's frame
       path; HL7 parse >= 100x python-hl7's ``hl7.parse``.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.common import Figure, fmt

_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: ``value op bound`` (value None: not measured in this run)."""

    item: int  # the numbered item
    name: str
    value: float | None
    op: str  # ">=", "<=" or "<"
    bound: float
    unit: str

    @property
    def met(self) -> bool | None:
        return None if self.value is None else _OPS[self.op](self.value, self.bound)

    def line(self) -> str:
        verdict = "not measured" if self.met is None else ("met" if self.met else "MISSED")
        value = "-" if self.value is None else fmt(self.value)
        return f"  {self.item}. {self.name}: {value} {self.unit} (target {self.op} {self.bound:g}): {verdict}"


def evaluate(figures: Sequence[Figure]) -> list[Target]:
    """The issue's targets from ``figures`` (medians of one run)."""
    by_name = {(f.name, f.unit): f.median for f in figures}

    def get(name: str, unit: str) -> float | None:
        return by_name.get((name, unit))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    out: list[Target] = []
    for links in (10, 100):
        tag = f"{links} links"
        stored = get(f"{tag}: labbridge stored", "messages/s")
        peer = get(f"{tag}: python-astm server (ACK + decode, no store)", "messages/s")
        delivered = get(f"{tag}: labbridge delivered to LIS", "messages/s")
        out.append(Target(1, f"{tag}: stored (durable, relayed) / python-astm server", ratio(stored, peer), ">=",
                          1.0, "x"))
        out.append(Target(1, f"{tag}: delivered / stored per second", ratio(delivered, stored), ">=", 0.95, "x"))
    out.append(Target(2, "10 links: CPU per message (daemon, writer, relay) / python-astm server's",
                      ratio(get("10 links: daemon CPU per message", "us"),
                            get("10 links: python-astm server CPU per message", "us")), "<=", 1.2, "x"))
    out.append(Target(3, "10 links: last frame -> ACK p99", get("10 links: last frame -> labbridge ACK (commit) p99",
                                                                "ms"), "<=", 10.0, "ms"))
    for links, bound in ((10, 50.0), (100, 250.0)):
        out.append(Target(3, f"{links} links: last frame -> LIS ACK p99",
                          get(f"{links} links: latency last frame -> LIS ACK p99", "ms"), "<=", bound, "ms"))
    out.append(Target(4, "no instrument: memory, shared pages once",
                      get("daemon memory, shared pages once, no instrument", "MiB"), "<=", 35.0, "MiB"))
    out.append(Target(4, "100 links busy: peak memory, shared pages once",
                      get("100 links: daemon peak memory, shared pages once", "MiB"), "<=", 45.0, "MiB"))
    out.append(Target(4, "1000 links busy: peak memory, shared pages once",
                      get("daemon peak memory, shared pages once, 1000 links busy", "MiB"), "<", 100.0, "MiB"))
    for panel in ("chem20", "cbc25"):
        out.append(Target(5, f"{panel}: codec + driver / python-astm codec",
                          ratio(get(f"{panel} ASTM labbridge codec + driver", "messages/s"),
                                get(f"{panel} ASTM python-astm codec", "messages/s")), ">=", 4.0, "x"))
        out.append(Target(5, f"{panel}: E1381 frame path, frame by frame / python-astm frame path",
                          ratio(get(f"{panel} ASTM labbridge frame path (E1381), frame by frame", "messages/s"),
                                get(f"{panel} ASTM python-astm frame path", "messages/s")), ">=", 5.0, "x"))
        out.extend(Target(5, f"{panel}: HL7 {kind} parse / hl7.parse",
                          ratio(get(f"{panel} HL7 {kind} labbridge parser (hl7_parse)", "messages/s"),
                                get(f"{panel} HL7 {kind} python-hl7 hl7.parse", "messages/s")), ">=", 100.0, "x")
                   for kind in ("ORU^R01", "OUL^R22"))
    return out


def print_targets(targets: Sequence[Target]) -> None:
    """The table of the issue's targets, each with met, MISSED or not measured."""
    met = sum(1 for t in targets if t.met)
    measured = sum(1 for t in targets if t.met is not None)
    print(f"\n== issue 15 targets ({met} of {measured} measured met; {len(targets) - measured} not measured)")
    for t in targets:
        print(t.line())
    sys.stdout.flush()
