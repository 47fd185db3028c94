"""``labbridge demo``: the daemon on embedded defaults with simulated analyzers and a simulated LIS.

Reads ``config/demo.toml`` (six sites, their analyzers on loopback), starts a simulated LIS, points the
config's LIS destination at it, keeps the store in a fresh temporary folder, starts one simulated
analyzer per instrument, and serves the dashboard. With a duration it stops by itself, lets what is in
flight reach the LIS, and prints a summary: results the analyzers were told were received (sent),
stored, delivered to the LIS, lost (must be 0), delivered twice (must be 0).

Orders: every third analyzer asks the host about half of its samples first (ASTM host query); the demo
seeds site-wide orders for every other one of those samples, so the analyzers get some orders (O-26
``Q``) and some "no record of this sample" answers (``Z``). Another third get orders pushed to them
(addressed to the instrument). The summary counts queries, answers and order lines received.

The reconnection campaign (config/demo.toml says which instrument is where): instruments that are not live
have their results stored and held from the LIS, which the summary counts apart from what was lost; the
validating ones get reference values imported once they have sent a few results (taken from those results,
within tolerance, and for one instrument one value off: its comparison shows it outside); the simulators of
``UNFRAMED`` and ``PER_TRANSMISSION`` behave as a technician would meet them (framing switched off on the
analyzer; a connection per transmission).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory, MessageSource
from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory
from labbridge_simulators.lis import SimulatedLis
from labbridge_simulators.profiles import FAMILIES, FamilyFactory

from labbridge.campaign.validation import Reference
from labbridge.config import Config, HttpConfig, MqttConfig, StoreConfig, TcpServerTransport, load_config
from labbridge.links.dialect import link_profile
from labbridge.orders import NewOrder
from labbridge.runtime.daemon import Daemon
from labbridge.web import surfaces_for

DRAIN_TIMEOUT_S = 30.0
# What the simulators of these demo instruments do wrong, or differently (config/demo.toml says why).
UNFRAMED = frozenset({"bastogne-hema-1"})  # its E1381 framing switched off: records arrive bare, never a message
PER_TRANSMISSION = frozenset({"marche-hema-1"})  # connects for each transmission, hangs up after its EOT
REFERENCES_AFTER = 3  # results of a validating instrument before the demo imports its reference values
OFF_REFERENCE = frozenset({"virton-immuno-1"})  # its first reference is off: outside tolerance
SEEDED_SAMPLES = 60  # per querying analyzer: orders for every other one of its first samples
PUSHED_ORDERS = 3  # per analyzer that gets orders pushed


# ---- dashboard (issue 17, part 1): a handle on a running demo ----
@dataclass
class DemoControls:
    """A running demo, for the dashboard's browser tests and its screenshot script: the daemon once it
    started (``ready``), each simulated analyzer's own stop (stop one for real: its link changes state), and
    the end of a demo run without a duration (``finish``)."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    finish: asyncio.Event = field(default_factory=asyncio.Event)
    daemon: Daemon | None = None
    stops: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def stop_analyzer(self, instrument: str) -> None:
        """Stop this instrument's simulator (it finishes the message in flight and hangs up) and wait for it."""
        self.stops[instrument].set()
        await asyncio.gather(self.tasks[instrument], return_exceptions=True)
# ---- end dashboard ----


def default_demo_config() -> Path:
    """The demo lab's config, shipped inside the package (``pip install labbridge`` then ``labbridge demo``);
    the repository's ``config/demo.toml`` is a link to it."""
    return Path(__file__).resolve().parent / "demo.toml"


@dataclass
class Summary:
    sent: int
    stored: int
    delivered: int
    lost: int
    duplicates: int
    instruments: int
    elapsed_s: float
    host_queries: int = 0
    query_answers: int = 0
    order_lines_received: int = 0
    held: int = 0  # results of instruments not live: stored, held from the LIS until a sign-off
    qc_held: int = 0  # QC results the LIS destination holds (its qc = "hold"): kept, shown, releasable
    stages: dict[str, str] = field(default_factory=dict)  # instrument -> campaign stage, when not live
    states: dict[str, str] = field(default_factory=dict)  # instrument -> link state at the end

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    def render(self) -> str:
        ok = "OK" if self.lost == 0 and self.duplicates == 0 else "PROBLEM"
        return (f"demo summary ({self.instruments} analyzers, {self.elapsed_s:.0f} s): "
                f"sent {self.sent} results, stored {self.stored}, delivered to the LIS {self.delivered}, "
                f"held by the validation gate {self.held}, QC held from the LIS {self.qc_held}, "
                f"lost {self.lost}, delivered twice {self.duplicates}"
                f" -> {ok}; "
                f"host queries {self.host_queries}, answered {self.query_answers}, "
                f"order lines received by analyzers {self.order_lines_received}")


def _prepare(config: Config, lis_port: int, store_dir: Path, http_port: int | None,
             mqtt_url: str | None = None) -> Config:
    lis = [d.model_copy(update={"host": "127.0.0.1", "port": lis_port}) for d in config.lis[:1]]
    http = config.http if http_port is None else HttpConfig(host="127.0.0.1", port=http_port)
    update: dict[str, Any] = {"lis": lis, "http": http,
                              "store": StoreConfig(path=str(store_dir / "labbridge-demo.db"))}
    if mqtt_url:  # [mqtt]: `labbridge demo --mqtt URL` publishes the demo lab (try `labbridge fleet` on it)
        update["mqtt"] = MqttConfig(url=mqtt_url)
    return config.model_copy(update=update)


async def run_demo(*, config_path: Path, duration: float | None, http_port: int | None = None,
                   store_dir: Path | None = None, quiet: bool = False, mqtt_url: str | None = None,
                   controls: DemoControls | None = None) -> Summary:
    started = time.monotonic()
    config = load_config(config_path)
    lis = SimulatedLis()
    await lis.start()
    with contextlib.ExitStack() as stack:
        if store_dir is None:
            store_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="labbridge-demo-")))
        demo_config = _prepare(config, lis.port, store_dir, http_port, mqtt_url)
        try:
            daemon = Daemon(demo_config)
            stop_daemon = asyncio.Event()
            daemon_task = asyncio.create_task(daemon.run(stop_daemon, surfaces=surfaces_for(demo_config)))
        except Exception:
            await lis.stop()
            raise
        try:
            return await _drive(daemon=daemon, daemon_task=daemon_task, lis=lis, config=daemon.config,
                                duration=duration, started=started, quiet=quiet, controls=controls)
        finally:
            stop_daemon.set()
            await asyncio.gather(daemon_task, return_exceptions=True)
            await lis.stop()


async def _drive(*, daemon: Daemon, daemon_task: asyncio.Task[None], lis: SimulatedLis, config: Config,
                 duration: float | None, started: float, quiet: bool,
                 controls: DemoControls | None = None) -> Summary:
    waiter = asyncio.create_task(daemon.started.wait())
    await asyncio.wait({waiter, daemon_task}, return_when=asyncio.FIRST_COMPLETED)
    if daemon_task.done():
        waiter.cancel()
        daemon_task.result()  # raises the daemon's startup error
        raise RuntimeError("the daemon stopped during startup")
    if daemon.http_address and not quiet:
        host, port = daemon.http_address
        print(f"labbridge demo: dashboard at http://{host}:{port}/  "
              f"({len(daemon.runners)} simulated analyzers, simulated LIS on 127.0.0.1:{lis.port})", flush=True)
        if config.mqtt is not None:  # [mqtt]
            print(f"labbridge demo: health published to {config.mqtt.url} as node {config.mqtt.node or config.node}"
                  f"  (labbridge fleet --broker {config.mqtt.url})", flush=True)
        if duration is None:
            print("press Ctrl-C to stop", flush=True)
    sims: list[AstmAnalyzerSim | Hl7AnalyzerSim] = []
    hl7_count = generic_count = 0
    for n, inst in enumerate(config.instruments):
        runner = daemon.runners[inst.id]
        if not inst.enabled or runner.bound is None or not isinstance(inst.transport, TcpServerTransport):
            continue
        if inst.link.framing == "mllp":
            dialect: Literal["law", "mindray"] = ("mindray" if inst.driver == "mindray-bc-bs" else "law"
                                                  if inst.driver == "ihe-law" else
                                                  "law" if hl7_count % 2 == 0 else "mindray")
            hl7_count += 1
            hl7_factory = Hl7MessageFactory(inst.id, dialect=dialect, sample_prefix=f"{n + 1:02d}",
                                            panel_size=6 + (n * 3) % 10, seed=n, qc_every=9)
            sims.append(Hl7AnalyzerSim(inst.id, runner.bound, hl7_factory, interval=(1.0, 4.0), seed=n,
                                       resend_every=11, junk_every=17,
                                       query_share=0.25 if dialect == "law" else 0.0))  # LAW: LAB-27 queries
            continue
        factory: MessageSource
        queries = pushes = False
        if inst.driver in FAMILIES:  # the family's own dialect, codes and QC runs
            factory = FamilyFactory(inst.driver, inst.id, sample_prefix=f"{n + 1:02d}", seed=n, panel_size=8,
                                    qc_every=7)
        else:
            # Generic ASTM analyzers show the order flow: alternately host queries and pushed orders.
            factory = MessageFactory(inst.id, sample_prefix=f"{n + 1:02d}", panel_size=8 + (n * 3) % 13, seed=n)
            queries, pushes = generic_count % 2 == 0, generic_count % 2 == 1
            generic_count += 1
        # The analyzer speaks the instrument's link dialect (its driver's link defaults, e.g. MAGLUMI's).
        sims.append(AstmAnalyzerSim(inst.id, runner.bound, factory, interval=(1.0, 4.0), seed=n,
                                    corrupt_every=37 if n % 4 == 1 else 0, query_share=0.5 if queries else 0.0,
                                    profile=link_profile(inst.link), unframed=inst.id in UNFRAMED,
                                    per_transmission=inst.id in PER_TRANSMISSION))
        if not isinstance(factory, MessageFactory):
            continue
        codes = tuple(inst.test_map.get(a.code, a.code) for a in factory.panel[:3])  # LIS codes
        if queries:
            await asyncio.gather(*(daemon.add_order(NewOrder(factory.sample_id(k), codes, site=inst.site,
                                                             patient_id=f"DEMO{n:02d}{k:04d}", source="demo"),
                                                    now=time.time())
                                   for k in range(1, SEEDED_SAMPLES + 1, 2)))
        elif pushes:
            await asyncio.gather(*(daemon.add_order(NewOrder(f"{n + 1:02d}P{k:05d}", codes, instrument=inst.id,
                                                             source="demo"), now=time.time())
                                   for k in range(1, PUSHED_ORDERS + 1)))
    controls = controls or DemoControls()
    controls.daemon = daemon
    controls.stops = {sim.name: asyncio.Event() for sim in sims}  # one each: a test may stop one analyzer
    sim_tasks = [asyncio.create_task(sim.run(controls.stops[sim.name])) for sim in sims]
    controls.tasks = {sim.name: task for sim, task in zip(sims, sim_tasks, strict=True)}
    controls.ready.set()
    validating = [i.id for i in config.instruments if i.stage == "validating"]
    references = asyncio.create_task(_import_references(daemon, {sim.name: sim for sim in sims}, validating))
    try:
        if duration is None:
            await controls.finish.wait()
        else:
            await asyncio.sleep(duration)
    finally:
        references.cancel()
        for stop in controls.stops.values():
            stop.set()
        for sim, task in zip(sims, sim_tasks, strict=True):
            if sim.name in UNFRAMED:  # its messages are never taken (nothing frames): no use waiting for them
                task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await asyncio.gather(*sim_tasks, return_exceptions=True)
        for task in sim_tasks:
            task.cancel()
        await asyncio.gather(*sim_tasks, return_exceptions=True)
    acked = {identity for sim in sims for identity in sim.acked}
    campaign = await daemon.campaign.status()
    stages = {row["id"]: row["stage"] for site in campaign["sites"] for row in site["instruments"]
              if row["stage"] != "live"}
    held = {identity for identity in acked if identity[0] in stages}  # the gate holds them: not sent, by design
    holds_qc = bool(config.lis) and config.lis[0].qc == "hold"
    qc_samples = await daemon.store.read(_qc_samples) if holds_qc else set()
    qc_held = {identity for identity in acked - held if (identity[0], identity[1]) in qc_samples}  # qc = "hold"
    held_or_qc = held | qc_held
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and not acked - held_or_qc <= lis.delivered:  # noqa: ASYNC110 (a peer's books)
        await asyncio.sleep(0.2)
    counts = await daemon.store.counts()
    astm_sims = [sim for sim in sims if isinstance(sim, AstmAnalyzerSim)]
    summary = Summary(sent=len(acked), stored=counts["results"], delivered=len(lis.delivered & acked),
                      lost=len(acked - held_or_qc - lis.delivered), duplicates=lis.duplicates,
                      instruments=len(sims), qc_held=len(qc_held - lis.delivered),
                      elapsed_s=time.monotonic() - started,
                      host_queries=sum(sim.stats.queries_sent for sim in astm_sims),
                      query_answers=sum(sim.stats.query_answers for sim in astm_sims),
                      order_lines_received=sum(len(sim.orders_received) for sim in astm_sims),
                      held=len(held - lis.delivered), stages=stages,
                      states={i["id"]: i["state"] for i in daemon.instruments_json()})
    if not quiet:
        print(summary.render(), flush=True)
    return summary


def _qc_samples(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    """(instrument, sample) of the QC results in the store: the LIS destination holds them (qc = "hold")."""
    found = set()
    for instrument, data in conn.execute("SELECT instrument, data FROM results"):
        result = json.loads(data)
        if result.get("kind") == "qc":
            found.add((instrument, str(result.get("sample_id", ""))))
    return found


async def _import_references(daemon: Daemon, sims: dict[str, AstmAnalyzerSim | Hl7AnalyzerSim],
                             validating: list[str]) -> None:
    """Once a validating instrument has sent a few numeric results, import reference values for them (as the
    lab would from the analyzer it replaces): within 5 %, except one value off for ``OFF_REFERENCE``."""
    pending = [ident for ident in validating if ident in sims]
    while pending:
        for ident in tuple(pending):
            numeric = [a for a in sims[ident].acked if _number(a[3]) is not None][:REFERENCES_AFTER]
            if len(numeric) < REFERENCES_AFTER:
                continue
            refs = [Reference(sample, test, f"{float(value) * 1.5 + 1:g}" if ident in OFF_REFERENCE and n == 0
                              else value, "5%", note="the analyzer it replaces")
                    for n, (_, sample, test, value) in enumerate(numeric)]
            await daemon.campaign.import_references(ident, refs, actor="demo",
                                                    reason="reference values from the analyzer it replaces")
            pending.remove(ident)
        await asyncio.sleep(0.5)


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
