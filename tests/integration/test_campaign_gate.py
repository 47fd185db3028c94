"""The validation gate over real sockets: simulated ASTM analyzers, the daemon, the simulated MLLP LIS.

A validating instrument's results never reach the LIS before sign-off; after ``--release`` every one reaches
it exactly once (in the order stored), after ``--discard`` none; SIGKILLs of the daemon between the changes
change neither."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, MessageFactory
from labbridge_simulators.lis import ResultIdentity, SimulatedLis

from labbridge.campaign.validation import Reference
from labbridge.cli.client import HttpOperatorClient, LocalOperatorClient
from labbridge.config import load_config
from tests.conftest import run
from tests.integration.helpers import eventually, lab_config, running_lab
from tests.integration.test_crash import DaemonProcess, write_toml


async def send(name: str, address: tuple[str, int] | Callable[[], tuple[str, int]], *, messages: int,
               batch: str = "a") -> list[ResultIdentity]:
    """The results the analyzer was told were received (ACKed), in the order it sent them (samples named after
    the instrument and ``batch``: a later batch has other samples)."""
    analyzer = AstmAnalyzerSim(name, address, MessageFactory(name, sample_prefix=f"{name}-{batch}", panel_size=3,
                                                             seed=7),
                               interval=(0.0, 0.005), max_messages=messages, reconnect_delay=0.1)
    await analyzer.run(asyncio.Event())
    assert len(analyzer.acked) == messages * 3
    return list(analyzer.acked)


def exact_references(results: list[ResultIdentity]) -> list[Reference]:
    return [Reference(sample, test, value, "0") for _instrument, sample, test, value in results]


def test_held_until_sign_off_then_released_exactly_once_in_order(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=2, http=True,
                               overrides={"an-0": {"stage": "validating"}}) as lab:
            address = lab.daemon.http_address
            assert address is not None
            bound = {ident: r.bound for ident, r in lab.daemon.runners.items()}
            held = await send("an-0", bound["an-0"], messages=6)  # type: ignore[arg-type]
            live = await send("an-1", bound["an-1"], messages=3)  # type: ignore[arg-type]
            # The live instrument's later results reach the LIS; the validating one's, stored before, do not.
            await eventually(lambda: set(live) <= lab.lis.delivered, what="the live instrument's results")
            assert not set(held) & lab.lis.delivered
            async with contextlib.aclosing(HttpOperatorClient(f"http://{address[0]}:{address[1]}")) as client:
                status = await client.campaign_status(site="arlon")
                row = next(r for r in status["sites"][0]["instruments"] if r["id"] == "an-0")
                assert (row["stage"], row["held"], row["delivered"]) == ("validating", len(held), 0)
                assert row["blocked"] == "validating: no reference values imported (labbridge validate import)"
                await client.validate_import("an-0", exact_references(held), actor="anna", reason="run 1")
                compared = await client.validate_compare("an-0")
                assert (compared["within"], compared["ok"]) == (len(held), True)
                assert not set(held) & lab.lis.delivered
                done = await client.campaign_sign_off("an-0", release=True, override=False, actor="anna", reason="")
                assert (done["stage"], done["held"], done["items"]) == ("live", "released", 6)
                await eventually(lambda: set(held) <= lab.lis.delivered, what="the released results at the LIS")
                assert lab.lis.duplicates == 0 and lab.lis.redeliveries == 0
                # In the order stored: the LIS booked an-0's samples in the order the analyzer sent them.
                booked = [b.results[0][1] for b in lab.lis.booked.values() if b.results[0][0] == "an-0"]
                assert booked == list(dict.fromkeys(sample for _i, sample, _t, _v in held))
                await eventually(lambda: lab.daemon.relays[0].health.to_json()["delivered"] >= 9,
                                 what="the delivered marks")
                after = await client.campaign_status(site="arlon")
                row = next(r for r in after["sites"][0]["instruments"] if r["id"] == "an-0")
                assert (row["stage"], row["held"], row["delivered"]) == ("live", 0, len(held))
                # Live now: the next results go at once.
                more = await send("an-0", bound["an-0"], messages=1, batch="b")  # type: ignore[arg-type]
                await eventually(lambda: set(more) <= lab.lis.delivered, what="results after sign-off")
            audit = await lab.daemon.store.audit_rows()
            # Authentication off (loopback): the name the request gave, marked as nobody having checked it.
            assert [(a["actor"], a["action"]) for a in audit if a["target"] == "instrument:an-0"] == [
                ("unverified:anna", "sign-off"), ("unverified:anna", "references")]

    run(body())


def test_results_sent_flagged_as_test_to_a_send_test_destination(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra_lis={"validating": "send-test"},
                               overrides={"an-0": {"stage": "validating"}}) as lab:
            runner = lab.daemon.runners["an-0"]
            assert runner.bound is not None
            results = await send("an-0", runner.bound, messages=2)
            await eventually(lambda: set(results) <= lab.lis.test_results, what="test results at the LIS")
            assert lab.lis.delivered == set()  # none booked as patient results (MSH-11 T)

    run(body())


@pytest.mark.slow
def test_sigkill_between_the_changes_neither_leaks_nor_loses_nor_duplicates(tmp_path: Path) -> None:
    async def body() -> None:
        lis = SimulatedLis()
        await lis.start()
        config = tmp_path / "labbridge.toml"
        write_toml(config, lab_config(tmp_path, instruments=3, lis_port=lis.port, http=True,
                                      overrides={"an-0": {"stage": "validating"}, "an-1": {"stage": "validating"}}))
        daemon = DaemonProcess(config, tmp_path / "ready.json")
        try:
            await scenario(daemon, lis, config)
        finally:
            daemon.ensure_stopped()
            await lis.stop()

    def url(daemon: DaemonProcess) -> str:
        http = json.loads(daemon.ready.read_text())["http"]
        return f"http://{http['host']}:{http['port']}"

    async def restart(daemon: DaemonProcess) -> None:
        daemon.kill()  # SIGKILL
        await daemon.start()

    async def scenario(daemon: DaemonProcess, lis: SimulatedLis, config: Path) -> None:
        await daemon.start()
        to_release = await send("an-0", lambda: daemon.address("an-0"), messages=5)
        to_discard = await send("an-1", lambda: daemon.address("an-1"), messages=5)
        await restart(daemon)
        live = await send("an-2", lambda: daemon.address("an-2"), messages=3)
        await eventually(lambda: set(live) <= lis.delivered, what="the live instrument's results")
        assert not (set(to_release) | set(to_discard)) & lis.delivered

        async with contextlib.aclosing(HttpOperatorClient(url(daemon))) as client:
            done = await client.campaign_sign_off("an-0", release=True, override=True, actor="anna",
                                                  reason="no reference material at hand: checked by QC instead")
            assert done["items"] == 5
        await restart(daemon)  # perhaps in the middle of the release's drain
        await eventually(lambda: set(to_release) <= lis.delivered, what="the released results after a crash")
        assert lis.duplicates == 0

        async with contextlib.aclosing(HttpOperatorClient(url(daemon))) as client:
            done = await client.campaign_sign_off("an-1", release=False, override=True, actor="anna",
                                                  reason="wrong calibration during validation")
            assert (done["held"], done["items"]) == ("discarded", 5)
        await restart(daemon)
        later = await send("an-2", lambda: daemon.address("an-2"), messages=3, batch="b")
        mine = await send("an-1", lambda: daemon.address("an-1"), messages=1, batch="b")  # live now: flows
        await eventually(lambda: set(later) | set(mine) <= lis.delivered, what="results after the restart")
        assert not set(to_discard) & lis.delivered
        assert lis.duplicates == 0
        assert daemon.terminate() == 0

        # The stopped daemon's store, as the offline CLI reads it.
        async with contextlib.aclosing(LocalOperatorClient(str(tmp_path / "labbridge.db"),
                                                           load_config(str(config)))) as local:
            rows = {r["id"]: r for s in (await local.campaign_status(site=None))["sites"] for r in s["instruments"]}
        assert (rows["an-0"]["stage"], rows["an-0"]["held"], rows["an-0"]["delivered"]) == ("live", 0, 15)
        assert (rows["an-1"]["stage"], rows["an-1"]["discarded"], rows["an-1"]["delivered"]) == ("live", 15, 3)

    run(body(), timeout=180)


def test_link_up_and_first_message_advance_by_themselves(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, overrides={"an-0": {"stage": "cabled"}}) as lab:
            bound = lab.daemon.runners["an-0"].bound
            assert bound is not None

            async def stage() -> str:
                status = await lab.daemon.campaign.status()
                return str(status["sites"][0]["instruments"][0]["stage"])

            assert await stage() == "cabled"
            _reader, writer = await asyncio.open_connection(*bound)  # the analyzer connects, sends nothing yet
            try:
                for _ in range(200):
                    if await stage() == "link-up":
                        break
                    await asyncio.sleep(0.05)
                assert await stage() == "link-up"
            finally:
                writer.close()
            results = await send("an-0", bound, messages=1)
            assert await stage() == "first-message"  # in the commit that stored it
            history = await lab.daemon.campaign.history("an-0")
            assert [(h["stage"], h["by"]) for h in history] == [
                ("first-message", "labbridge"), ("link-up", "labbridge"), ("cabled", "config")]
            assert history[1]["reason"].startswith("analyzer connected from 127.0.0.1:")
            await asyncio.sleep(0.3)
            assert not set(results) & lab.lis.delivered  # not live: held

    run(body())
