"""The operator client over real sockets and a real store: an HL7 dead letter (an unmapped test code) is
re-decoded after the mapping is fixed, with the daemon stopped (`labbridge outbox retry -c CONFIG`, the
local client on its store file) and with it running (the HTTP client), with the same answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory

from labbridge.cli import main
from labbridge.cli.client import HttpOperatorClient, LocalOperatorClient, OperatorClient
from labbridge.config import parse_config
from tests.conftest import run
from tests.integration.helpers import eventually, free_port, lab_config, running_lab
from tests.integration.test_crash import write_toml

HL7 = {"link": {"framing": "mllp", "encoding": "utf-8"}, "unmapped_tests": "dead-letter"}
MAPPED = {"GLU": "GLUC"}  # the panel's second test, CREA, is not mapped


def dead_lettered(tmp_path: Path) -> int:
    """Run a daemon whose HL7 analyzer sends GLU and CREA with CREA unmapped; stop it. The dead letter's id."""

    async def body() -> int:
        async with running_lab(tmp_path, drivers=["hl7-generic"], extra_instrument={**HL7, "test_map": MAPPED}) as lab:
            bound = lab.daemon.runners["an-0"].bound
            assert bound is not None
            sim = Hl7AnalyzerSim("an-0", bound, Hl7MessageFactory("an-0", dialect="mindray", sample_prefix="S-",
                                                                  panel_size=2, seed=3),
                                 interval=(0.0, 0.01), max_messages=1)
            await asyncio.wait_for(sim.run(asyncio.Event()), 20)
            await eventually(lambda: len(lab.lis.delivered) == 1, what="the mapped GLU result")
            dead = await lab.daemon.store.outbox_rows(state="dead")
            assert [(d["dead_kind"], d["instrument"]) for d in dead] == [("unmapped", "an-0")]
            assert "unmapped test code(s) CREA" in dead[0]["last_error"]
            return int(dead[0]["id"])

    return run(body(), timeout=60)


def fixed_config(tmp_path: Path, *, http: bool) -> dict[str, Any]:
    """The lab's config with CREA mapped. Its LIS port has no listener, so re-queued items stay pending."""
    config = lab_config(tmp_path, instruments=1, lis_port=free_port(), http=http, drivers=["hl7-generic"],
                        extra_instrument={**HL7, "test_map": {**MAPPED, "CREA": "CREAT"}})
    if not http:
        config["http"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}  # nothing answers there
    return config


@pytest.mark.usefixtures("logging_restored")
def test_offline_retry_with_a_config_redecodes_an_hl7_dead_letter(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dead_id = dead_lettered(tmp_path)
    config = tmp_path / "fixed.toml"
    write_toml(config, fixed_config(tmp_path, http=False))
    capsys.readouterr()
    code = main(["outbox", "retry", "--all-dead", "-c", str(config), "--reason", "CREA mapped", "--by", "anna"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert out.split() == [str(dead_id), "redecoded"]
    assert main(["outbox", "list", "-c", str(config), "--json"]) == 0
    pending = [r for r in json.loads(capsys.readouterr().out) if r["state"] == "pending"]
    assert [(r["instrument"], r["dead_kind"], r["attempts"]) for r in pending] == [("an-0", None, 0)]


@contextlib.asynccontextmanager
async def client_for(kind: str, tmp_path: Path) -> Any:
    config = fixed_config(tmp_path, http=kind == "http")
    if kind == "local":
        async with contextlib.aclosing(LocalOperatorClient(config["store"]["path"], parse_config(config))) as client:
            yield client
        return
    async with running_lab(tmp_path, drivers=["hl7-generic"], extra={"http": config["http"], "lis": config["lis"]},
                           extra_instrument=config["instruments"][0]) as lab:
        assert lab.daemon.http_address is not None
        url = "http://{}:{}".format(*lab.daemon.http_address)
        async with contextlib.aclosing(HttpOperatorClient(url)) as client:
            yield client


@pytest.mark.parametrize("kind", ["local", "http"])
def test_the_local_and_http_clients_give_the_same_answers(tmp_path: Path, kind: str) -> None:
    dead_id = dead_lettered(tmp_path)

    async def body() -> None:
        client: OperatorClient
        async with client_for(kind, tmp_path) as client:
            outcomes = await client.retry(None, actor="anna", reason="CREA mapped")
            assert outcomes == [{"id": dead_id, "outcome": "redecoded", "dead_kind": "unmapped", "results": 2,
                                 "queued_items": [dead_id + 1], "previous_error": outcomes[0]["previous_error"]}]
            assert "unmapped test code(s) CREA" in outcomes[0]["previous_error"]
            rows = await client.outbox_items(state="pending", destination=None, limit=10)
            assert [(r["id"], r["instrument"], r["destination"], r["dead_kind"]) for r in rows] == [
                (dead_id + 1, "an-0", "lis", None)]
            assert await client.retry([dead_id], actor="anna", reason="again") == [
                {"id": dead_id, "outcome": "not-found"}]
            order = await client.add_order(_order())
            assert (order["sample_id"], order["state"], order["site"]) == ("S-9", "pending", "arlon")
            assert await client.get_order(order["id"]) == order
            assert (await client.cancel_order(order["id"]) or {}).get("state") == "cancelled"
            assert await client.cancel_order(order["id"] + 1) is None
            assert await client.get_order(order["id"] + 1) is None

    run(body(), timeout=60)


def _order() -> Any:
    from labbridge.orders import NewOrder

    return NewOrder(sample_id="S-9", test_codes=("GLUC",), instrument="an-0", source="cli")
