"""The renderings for the LIS with what issue 20 carries, and an item a destination's format cannot carry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from labbridge.config import FileDestination
from labbridge.model import Patient, Result
from labbridge.outbox import DEAD_UNDELIVERED
from labbridge.relay.relay import Relay
from labbridge.store.db import Store
from tests.conftest import run
from tests.integration.helpers import eventually


def result(sample: str, name: tuple[str, ...]) -> Result:
    return Result(instrument="chem-1", sample_id=sample, test_code="GLU", instrument_test_code="GLU", value="5.1",
                  measured_at="2026-12-03T10:00:00+01:00", patient_id="P1", patient=Patient(name=name))


def test_a_name_the_astm_file_cannot_carry_is_a_dead_letter_with_the_reason_and_the_rest_goes_on(
        tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()

    async def body() -> None:
        async with Store(tmp_path / "s.db") as store:
            for sample, name in (("S1", ("Δημητρίου", "Νίκος")), ("S2", ("Dubois", "Zoé"))):
                await store.commit_message(instrument="chem-1", protocol="astm", raw=b"raw", received_at=time.time(),
                                           destinations=["files"], results=[result(sample, name)])
            relay = Relay(FileDestination(id="files", kind="file", directory=str(drop), format="astm"), store,
                          asyncio.Event())
            task = asyncio.create_task(relay.run())
            try:
                await eventually(lambda: relay.health.delivered == 1 and relay.health.dead_lettered == 1,
                                 what="one written, one dead letter")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            (dead,) = await store.outbox_rows(state="dead")
            assert dead["dead_kind"] == DEAD_UNDELIVERED
            assert "cannot carry (character set latin-1)" in dead["last_error"]
            assert "Δ" not in dead["last_error"]  # the reason names no patient data
        (written,) = drop.glob("*.astm")
        assert "Dubois^Zoé".encode("latin-1") in written.read_bytes()

    run(body())
