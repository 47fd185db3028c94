"""Several analyzers on one listener (one tcp-server host:port for several instruments), over loopback:
told apart by peer address, then sender name (ASTM H-5, HL7 MSH-3/4), then the listener's default; an
unknown sender is stored and dead-lettered, never attributed to a guess; each instrument keeps its own
health. And an ambiguous configuration is refused by `labbridge check-config` with the key paths."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory
from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory

from labbridge.protocols import mllp
from tests.conftest import run
from tests.integration.helpers import eventually, free_port, running_lab
from tests.integration.test_hl7_pipeline import exchange, msa


def shared(port: int, **settings: Any) -> dict[str, Any]:
    return {"transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": port}, **settings}


def astm_sim(name: str, model: str, address: tuple[str, int], messages: int = 3) -> AstmAnalyzerSim:
    return AstmAnalyzerSim(name, address, MessageFactory(name, sample_prefix=f"{name}-", panel_size=3, seed=1,
                                                         model=model),
                           interval=(0.0, 0.01), max_messages=messages)


def test_two_astm_analyzers_on_one_port_are_told_apart_by_sender_name(tmp_path: Path) -> None:
    async def body() -> None:
        port = free_port()
        overrides = {"an-0": shared(port, sender=["ChemA"]), "an-1": shared(port, sender=["ChemB"])}
        async with running_lab(tmp_path, instruments=2, overrides=overrides) as lab:
            runners = lab.daemon.runners
            assert runners["an-0"].bound == runners["an-1"].bound == ("127.0.0.1", port)
            address = ("127.0.0.1", port)
            sims = [astm_sim("an-0", "ChemA", address), astm_sim("an-1", "ChemB", address),
                    astm_sim("stray", "ChemX", address, messages=1)]
            await asyncio.wait_for(asyncio.gather(*(s.run(asyncio.Event()) for s in sims)), 30)
            acked = {r for s in sims[:2] for r in s.acked}
            assert len(acked) == 2 * 3 * 3 and len(sims[2].acked) == 3  # the stray one is stored, so ACKed
            # Each result reaches the LIS under the instrument that measured it (OBX-18), once.
            await eventually(lambda: acked <= lab.lis.delivered, what="both analyzers' results at the LIS")
            assert lab.lis.delivered == acked and lab.lis.duplicates == 0
            for ident in ("an-0", "an-1"):
                health = runners[ident].health
                assert health.counters.messages_received == 3 and health.counters.connections == 1
            # The stray sender: stored under the listener, dead-lettered, named, never sent.
            dead = await lab.daemon.store.outbox_rows(state="dead")
            assert [(d["instrument"], d["dead_kind"]) for d in dead] == [(f"unknown@127.0.0.1:{port}",
                                                                          "unknown-sender")]
            assert "'ChemX'" in dead[0]["last_error"] and "sender list" in dead[0]["last_error"]
            # They hang up after their EOT: waiting for the next transmission, not down.
            await eventually(lambda: all(runners[i].health.state == "idle" for i in ("an-0", "an-1")),
                             what="both links shown idle once their analyzers hang up")
            assert all("waiting for the next transmission" in runners[i].health.effective_state()[1]
                       for i in ("an-0", "an-1"))

    run(body())


def test_peer_address_decides_before_the_sender_name_then_the_default(tmp_path: Path) -> None:
    async def body() -> None:
        port = free_port()
        overrides = {"an-0": shared(port, peer=["127.0.0.1"]),
                     "an-1": shared(port, peer=["192.0.2.7"], sender=["ChemA"]),
                     "an-2": shared(port, listener_default=True)}
        async with running_lab(tmp_path, instruments=3, overrides=overrides) as lab:
            # Sent from 127.0.0.1: an-0 by its address, although its header names an-1's sender.
            sim = astm_sim("an-0", "ChemA", ("127.0.0.1", port), messages=2)
            await asyncio.wait_for(sim.run(asyncio.Event()), 20)
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="an-0's results")
            runners = lab.daemon.runners
            assert runners["an-0"].health.counters.messages_received == 2
            assert runners["an-1"].health.counters.messages_received == 0
            assert runners["an-2"].health.counters.messages_received == 0
        port = free_port()
        overrides = {"an-0": shared(port, peer=["192.0.2.1"]), "an-1": shared(port, listener_default=True)}
        async with running_lab(tmp_path / "b", instruments=2, overrides=overrides) as lab:
            # An address nobody names: the listener's default instrument.
            sim = astm_sim("an-1", "Whatever", ("127.0.0.1", port), messages=1)
            await asyncio.wait_for(sim.run(asyncio.Event()), 20)
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="an-1's results")
            assert lab.daemon.runners["an-1"].health.counters.messages_received == 1

    (tmp_path / "b").mkdir()
    run(body())


def test_two_hl7_analyzers_on_one_port_by_msh3_and_an_unknown_sender(tmp_path: Path) -> None:
    async def body() -> None:
        port = free_port()
        link = {"link": {"framing": "mllp", "encoding": "utf-8"}}
        overrides = {"an-0": shared(port, sender=["SIMLAW"], **link), "an-1": shared(port, sender=["Mindray"], **link)}
        async with running_lab(tmp_path, drivers=["hl7-generic", "hl7-generic"], overrides=overrides) as lab:
            address = ("127.0.0.1", port)
            sims = [Hl7AnalyzerSim(name, address, Hl7MessageFactory(name, dialect=dialect, sample_prefix=f"{name}-",
                                                                     panel_size=3, seed=2),
                                   interval=(0.0, 0.01), max_messages=4)
                    for name, dialect in (("an-0", "law"), ("an-1", "mindray"))]
            await asyncio.wait_for(asyncio.gather(*(s.run(asyncio.Event()) for s in sims)), 30)
            acked = {i for s in sims for i in s.acked}
            assert len(acked) == 2 * 4 * 3
            await eventually(lambda: acked <= lab.lis.delivered, what="both analyzers' results at the LIS")
            assert lab.lis.delivered == acked
            for ident in ("an-0", "an-1"):
                assert lab.daemon.runners[ident].health.counters.messages_received == 4
            # A third sender nobody configured: stored (so AA), dead-lettered as unknown-sender.
            reader, writer = await asyncio.open_connection(*address)
            stray = (b"MSH|^~\\&|OTHER|WARD9|||20261123101500||ORU^R01|X1|P|2.3.1\rPID|1||P1\rOBR|1|S9\r"
                     b"OBX|1|NM|GLU||5.0|mmol/L|||||F\r")
            acks = await exchange(reader, writer, stray, mllp.MllpDecoder())
            writer.close()
            assert msa(acks[0])[0] == "AA"
            dead = await lab.daemon.store.outbox_rows(state="dead")
            assert [d["dead_kind"] for d in dead] == ["unknown-sender"]
            assert "'OTHER', 'WARD9'" in dead[0]["last_error"]

    run(body())


AMBIGUOUS = """
[[sites]]
id = "a"
name = "A"

[[instruments]]
id = "chem-1"
site = "a"
driver = "astm-generic"
transport = { kind = "tcp-server", port = 5100 }
sender = ["cobas"]

[[instruments]]
id = "chem-2"
site = "a"
driver = "astm-generic"
transport = { kind = "tcp-server", port = 5100 }
sender = ["cobas"]

[[instruments]]
id = "chem-3"
site = "a"
driver = "astm-generic"
transport = { kind = "tcp-server", port = 5100 }
"""


def test_check_config_refuses_instruments_a_shared_listener_cannot_tell_apart(tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "lab.toml"
        path.write_text(AMBIGUOUS)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "labbridge.cli", "check-config",
                                                    str(path), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        text = err.decode()
        assert proc.returncode != 0
        assert "instruments[1].sender: instruments[0] and instruments[1] share 127.0.0.1:5100" in text
        assert "instruments[2].sender: instruments sharing 127.0.0.1:5100 must be told apart" in text
        path.write_text(AMBIGUOUS.replace('sender = ["cobas"]\n\n[[instruments]]\nid = "chem-3"',
                                          'sender = ["c702"]\n\n[[instruments]]\nid = "chem-3"')
                        + "listener_default = true\n")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "labbridge.cli", "check-config",
                                                    str(path), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()

    run(body())
