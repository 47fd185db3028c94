from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from labbridge_driver_astm import GenericAstmDriver

from labbridge.config import InstrumentConfig, LinkConfig
from labbridge.health.instrument import InstrumentHealth
from labbridge.links.dialect import records_from_raw
from labbridge.links.intake import InstrumentDecoder, Intake
from labbridge.links.sink import MessageSink
from labbridge.outbox import StoredMessage
from labbridge.protocols.e1381 import build_frames
from labbridge.store import db
from tests.conftest import run

RECORDS = [b"H|\\^&|||SimChem^1.0", b"P|1|PAT1", b"O|1|S1||^^^GLU", b"R|1|^^^GLU|5.1|mmol/L",
           b"R|2|^^^UREA|4.0|mmol/L", b"L|1|N"]


def decoder(**settings: object) -> InstrumentDecoder:
    cfg = InstrumentConfig.model_validate({"id": "chem-1", "site": "a", "driver": "astm-generic",
                                           "transport": {"kind": "tcp-server", "port": 0}, **settings})
    return InstrumentDecoder.from_config(cfg, GenericAstmDriver())


def test_raw_frames_replay_to_the_same_records() -> None:
    raw = b"".join(build_frames(RECORDS))
    assert records_from_raw(LinkConfig(), raw) == tuple(RECORDS)
    assert records_from_raw(LinkConfig(), raw[:-5]) is None  # not a whole message


def test_unmapped_codes_are_held_and_named_the_others_pass() -> None:
    intake = decoder(test_map={"GLU": "GLUC"}, unmapped_tests="dead-letter").decode_records(RECORDS)
    assert [r.test_code for r in intake.results] == ["GLUC"]
    assert [h.kind for h in intake.held] == ["unmapped"] and "UREA" in intake.held[0].reason
    passing = decoder(test_map={"GLU": "GLUC"}).decode_records(RECORDS)  # the default: pass through
    assert [r.test_code for r in passing.results] == ["GLUC", "UREA"] and not passing.held


def test_an_unknown_sender_holds_the_whole_message() -> None:
    intake = decoder(expected_sender="Cobas").decode_records(RECORDS)
    assert intake.results == [] and intake.held[0].kind == "unknown-sender"
    assert "'SimChem'" in intake.held[0].reason and "'Cobas'" in intake.held[0].reason
    assert decoder(expected_sender="SimChem").decode_records(RECORDS).results


def test_an_undecodable_message_gives_the_drivers_error_and_a_log_safe_reason() -> None:
    intake = decoder().decode_raw("astm", b"".join(build_frames([b"H|\\^&", b"R|1|^^^GLU|1", b"L|1|N"])))
    assert intake.error is not None and intake.error.startswith("DecodeError: result (R) record without")
    assert intake.log_reason == "result (R) record without a preceding order (O) record"


def test_messages_in_flight_are_bounded_and_the_rest_wait_undecoded(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """A burst of analyzers ending their messages at once: at most MESSAGES_IN_FLIGHT are decoded and waiting
    for their commit; the others wait for a place with their bytes only (counted), then go through in turn."""
    monkeypatch.setattr(db, "MESSAGES_IN_FLIGHT", 3)
    store = db.Store(tmp_path / "lb.db")
    gate = asyncio.Event()
    decoded: list[int] = []
    dec = decoder()
    real_decode = dec.decode_records

    def counting(records: Sequence[bytes]) -> Intake:
        decoded.append(1)
        return real_decode(records)

    async def commit_message(**kwargs: Any) -> StoredMessage:
        await gate.wait()
        return StoredMessage(len(decoded), len(kwargs["results"]), 0, ())

    monkeypatch.setattr(dec, "decode_records", counting)
    monkeypatch.setattr(store, "commit_message", commit_message)
    health = InstrumentHealth(id="chem-1", site="a", driver="astm-generic", transport="tcp-server")
    sink = MessageSink(store, dec, [], SimpleNamespace(health=health))

    async def body() -> None:
        burst = [asyncio.create_task(sink.astm(tuple(RECORDS), b"raw")) for _ in range(5)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(decoded) == 3 and store.intake_waits == 2  # two wait, undecoded
        gate.set()
        decisions = await asyncio.gather(*burst)
        assert len(decoded) == 5 and all(d.stored for d in decisions)

    run(body(), timeout=10)
