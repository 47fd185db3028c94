from __future__ import annotations

from labbridge_driver_astm import GenericAstmDriver

from labbridge.config import InstrumentConfig, LinkConfig
from labbridge.links.dialect import records_from_raw
from labbridge.links.intake import InstrumentDecoder
from labbridge.protocols.e1381 import build_frames

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
