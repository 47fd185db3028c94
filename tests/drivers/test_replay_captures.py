"""`labbridge replay` reads captures as they come from the field (issue 20, part 4).

Each capture under tests/captures/ (see its README) is one form seen in the field; every one of them must
decode to the same results as the clean byte stream, and report exactly the deviations it has. Repairs
never invent a value: what cannot be repaired is rejected and kept in the summary.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labbridge.capture import Deviation, frame_astm, read_capture
from labbridge.cli import main
from labbridge.config import load_config, with_link_defaults
from labbridge.driver import driver_link_defaults, load_driver
from labbridge.outbox import handed_off
from labbridge.protocols import e1381, mllp
from labbridge.protocols.e1381 import build_frames
from labbridge.relay.relay import Relay
from labbridge.replay import ReplayProblem, conforms, destination_format, render, replay_capture, summary
from labbridge.store.db import Store
from labbridge.store.sql import control_id_for, group_key_for
from tests.conftest import run

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
GOLDEN = Path(__file__).resolve().parents[2] / "drivers/labbridge_driver_astm/captures/lis2a2-chemistry.astm"
RECORDS = [b"H|\\^&|||ChemAnalyzer^2.1|||||||P|LIS2-A2|20261123081500", b"P|1||PID001",
           b"O|1|S1001||^^^GLU\\^^^K|R||||||N", b"R|1|^^^GLU|5.4|mmol/L|3.9-6.1|N||F||||20261123081200",
           b"R|2|^^^K|4.1|mmol/L|3.5-5.1|N||F||||20261123081210", b"L|1|N"]
CHEMISTRY = [("S1001", "GLU", "5.4"), ("S1001", "K", "4.1")]
HL7 = [("BC12345", "GLU", "5.4"), ("BC12345", "ALT", "80"), ("BC12346", "GLU", "5.4"), ("BC12346", "ALT", "80")]


def kinds(deviations: list[Deviation]) -> set[tuple[str, str]]:
    return {(d.action, d.kind) for d in deviations}


# file, driver, expected (sample, test, value) per result, the deviations it must report (action, kind)
FORMS = [
    ("astm-no-enq-eot.astm", "astm-generic", CHEMISTRY, {("repaired", "ENQ missing"), ("repaired", "EOT missing")}),
    ("astm-frame-endings.astm", "astm-generic", CHEMISTRY, {("repaired", "frame ending")}),
    ("astm-sessions.astm", "astm-generic",
     CHEMISTRY + [("S1002", t, v) for _, t, v in CHEMISTRY] + [("S1003", t, v) for _, t, v in CHEMISTRY],
     {("repaired", "ENQ missing"), ("repaired", "EOT missing")}),
    ("astm-tokens.txt", "astm-generic", CHEMISTRY, set()),
    ("astm-hexdump-c.txt", "astm-generic", CHEMISTRY, set()),
    ("astm-xxd.txt", "astm-generic", CHEMISTRY, set()),
    ("astm-hex-pairs.log", "astm-generic", CHEMISTRY,
     {("ignored", "not a hex dump line"), ("ignored", "replies of the receiving side")}),
    ("astm-log-directions.log", "astm-generic", CHEMISTRY,
     {("repaired", "frame ending"), ("ignored", "replies of the receiving side"), ("ignored", "not a record")}),
    ("astm-records.txt", "astm-generic", CHEMISTRY + [("S1002", t, v) for _, t, v in CHEMISTRY],
     {("ignored", "not a record")}),
    ("astm-records-stamped.log", "astm-generic", CHEMISTRY, set()),
    ("astm-checksums.astm", "astm-generic", CHEMISTRY,
     {("repaired", "checksum mismatch"), ("rejected", "checksum mismatch")}),
    ("astm-unnumbered.astm", "astm-generic", CHEMISTRY,
     {("repaired", "frame number missing"), ("repaired", "checksum missing")}),
    ("astm-unnumbered.astm", "snibe-maglumi", CHEMISTRY, set()),  # the dialect the frames are in
    ("hl7-cr.hl7", "hl7-generic", HL7, set()),
    ("hl7-lf.hl7", "hl7-generic", HL7, {("repaired", "segments separated by LF")}),
    ("hl7-mllp.hl7", "hl7-generic", HL7, set()),
    ("hl7-crlf-mllp.hl7", "hl7-generic", HL7, {("repaired", "segments separated by LF")}),
    ("hl7-tokens.log", "hl7-generic", HL7[:2], {("ignored", "acknowledgements")}),
]


@pytest.mark.parametrize(("name", "driver", "expected", "deviations"), FORMS, ids=[f"{f[0]}-{f[1]}" for f in FORMS])
def test_every_field_form_decodes_and_reports_its_deviations(name: str, driver: str,
                                                              expected: list[tuple[str, str, str]],
                                                              deviations: set[tuple[str, str]]) -> None:
    result = replay_capture(load_driver(driver), (CAPTURES / name).read_bytes())
    got = [(r.sample_id, r.instrument_test_code, r.value) for m in result.decoded if m.decoded
           for r in m.decoded.results]
    assert got == expected
    assert kinds(result.deviations) == deviations
    assert not [i for i in result.items if isinstance(i, ReplayProblem)]
    assert all(m.error is None for m in result.messages)
    for d in result.deviations:  # each says where
        assert d.where.startswith(("line ", "byte ", "stream ", "capture")), d


def test_a_long_capture_decodes_every_message() -> None:
    """Longer than what a receiver holding a message keeps of what follows (64 KiB): fed in pieces."""
    data = (CAPTURES / "astm-sessions.astm").read_bytes() * 200
    result = replay_capture(load_driver("astm-generic"), data)
    assert len(result.decoded) == 600 and not [i for i in result.items if isinstance(i, ReplayProblem)]
    assert not [d for d in result.deviations if d.action != "repaired"]


def test_hl7_queries_and_acknowledgements_are_set_aside_not_failures() -> None:
    query = (b"MSH|^~\\&|Acme|Lab|LABBRIDGE|LIS|20261123101500||QBP^Q11^QBP_Q11|Q1|P|2.5.1\r"
             b"QPD|WOS^Work Order Step^IHE_LABTF|Q1|BC12345\rRCP|I||R\r")
    answer = b"MSH|^~\\&|Acme|Lab|LABBRIDGE|LIS|20261123101500||ORL^O34^ORL_O34|A1|P|2.5.1\rMSA|AA|O1\r"
    capture = mllp.frame(query) + mllp.frame(answer) + (CAPTURES / "hl7-mllp.hl7").read_bytes()
    result = replay_capture(load_driver("hl7-generic"), capture)
    assert len(result.decoded) == 2 and all(m.error is None for m in result.messages)
    assert kinds(result.deviations) == {("ignored", "host queries"), ("ignored", "acknowledgements")}


def test_forms_are_recognised_and_said() -> None:
    assert read_capture((CAPTURES / "astm-hexdump-c.txt").read_bytes()).form == ["hex dump"]
    log = read_capture((CAPTURES / "astm-log-directions.log").read_bytes())
    assert log.form == ["printable control tokens", "log lines with timestamps or directions"]
    assert [s.label for s in log.streams] == ["", "<-"]  # the "port opened" line, then the analyzer's direction
    assert read_capture((CAPTURES / "astm-sessions.astm").read_bytes()).form == ["bytes as received"]


def test_tokens_in_every_spelling_become_their_bytes() -> None:
    text = b"<stx>1H|\\^&<CR>[ETX]<0x30>\\x30{cr}\\x03\\n\\r"
    [stream] = read_capture(text).streams
    assert bytes(stream.data) == b"\x021H|\\^&\r\x0300\r\x03\n\r"
    # without a backslash escape of a control character, a backslash is ASTM's repeat delimiter: kept
    [stream] = read_capture(b"<STX>1R|1|^^^A|5|||N\\rx\\x41<CR><ETX>").streams
    assert bytes(stream.data) == b"\x021R|1|^^^A|5|||N\\rx\\x41\r\x03"


def test_a_repeat_that_looks_like_an_escape_is_data_in_a_binary_capture() -> None:
    records = [*RECORDS[:3], b"R|1|^^^GLU|5.4|mmol/L||N\\rev||F", b"L|1|N"]
    result = replay_capture(load_driver("astm-generic"), b"\x05" + b"".join(build_frames(records)) + b"\x04")
    assert result.deviations == [] and [r.flags for r in result.decoded[0].decoded.results] == [("rev",)]  # type: ignore[union-attr]


def test_a_record_cr_the_log_dropped_is_restored_when_the_checksum_confirms_it() -> None:
    # the log shows <STX>, <ETX>, not the CR before ETX nor the CR LF after
    lines = [frame[:-2].replace(b"\r\x03", b"\x03").replace(b"\x02", b"<STX>").replace(b"\x03", b"<ETX>")
             for frame in build_frames(RECORDS)]
    result = replay_capture(load_driver("astm-generic"), b"\n".join(lines) + b"\n")
    assert [r.value for r in result.decoded[0].decoded.results] == ["5.4", "4.1"]  # type: ignore[union-attr]
    restored = [d for d in result.deviations if d.kind == "record terminator"]
    assert len(restored) == 6 and "the checksum confirms it" in restored[0].detail
    assert not [d for d in result.deviations if d.kind == "checksum mismatch"]


def test_each_repair_says_where_and_what() -> None:
    result = replay_capture(load_driver("astm-generic"), (CAPTURES / "astm-checksums.astm").read_bytes())
    [repaired] = [d for d in result.deviations if d.action == "repaired"]
    [dropped] = [d for d in result.deviations if d.action == "rejected"]
    assert repaired.where == "byte 142" and "frame says '00', computed" in repaired.detail
    assert "content is unverified" in repaired.detail
    assert dropped.where == "byte 64" and "sent the frame again" in dropped.detail


def test_a_checksum_from_a_known_miscomputation_is_said_verified() -> None:
    body = b"1" + RECORDS[0] + b"\r\x03"
    with_stx = e1381.checksum(b"\x02" + body)
    frames = [b"\x02" + body + with_stx + b"\r\n", *build_frames(RECORDS[1:], first_fn=2)]
    result = replay_capture(load_driver("astm-generic"), b"\x05" + b"".join(frames) + b"\x04")
    [repair] = result.deviations
    assert repair.kind == "checksum mismatch" and "STX included: the content is verified" in repair.detail
    assert len(result.decoded) == 1


def test_a_damaged_frame_is_rejected_not_repaired() -> None:
    frames = build_frames(RECORDS)
    damaged = frames[3].replace(b"5.4", b"5\x114")  # a control byte in the text: the checksum no longer matches
    result = replay_capture(load_driver("astm-generic"), b"\x05" + b"".join([*frames[:3], damaged, *frames[4:]])
                            + b"\x04")
    assert not result.decoded  # nothing decoded from a frame whose content is in doubt
    rejected = [d for d in result.deviations if d.action == "rejected"]
    assert rejected[0].kind == "checksum mismatch" and "damaged" in rejected[0].detail
    assert any(isinstance(i, ReplayProblem) and i.kind == "incomplete transmission" for i in result.items)


def test_an_identical_frame_without_number_is_a_retransmission_not_a_second_result() -> None:
    unnumbered = [b"\x02" + r + b"\r\x03\r\n" for r in RECORDS]
    capture = b"\x05" + b"".join(unnumbered[:4]) + unnumbered[3] + b"".join(unnumbered[4:]) + b"\x04"
    result = replay_capture(load_driver("snibe-maglumi"), capture)
    assert [r.instrument_test_code for m in result.decoded if m.decoded for r in m.decoded.results] == ["GLU", "K"]
    result = replay_capture(load_driver("astm-generic"), capture)  # numbered in order, the copy dropped
    assert [r.instrument_test_code for m in result.decoded if m.decoded for r in m.decoded.results] == ["GLU", "K"]
    assert ("repaired", "retransmission") in kinds(result.deviations)


def test_a_frame_sent_again_after_a_lost_ack_is_dropped_as_the_receiver_drops_it() -> None:
    frames = build_frames(RECORDS)
    result = replay_capture(load_driver("astm-generic"), b"\x05" + b"".join([*frames[:4], frames[3], *frames[4:]])
                            + b"\x04")
    assert [r.instrument_test_code for m in result.decoded if m.decoded for r in m.decoded.results] == ["GLU", "K"]
    assert result.deviations == []  # the protocol's own retransmission, not a deviation


def test_a_transfer_numbered_from_0_is_read_saying_the_daemon_would_refuse_it(tmp_path: Path) -> None:
    capture = b"\x05" + b"".join(build_frames(RECORDS, first_fn=0)) + b"\x04"
    result = replay_capture(load_driver("astm-generic"), capture)
    assert len(result.decoded) == 1
    [d] = result.deviations
    assert (d.action, d.kind, d.where) == ("accepted", "first frame number", "byte 1")
    assert "strict_frame_numbers = false" in d.detail
    assert not replay_capture(load_driver("astm-generic"), capture, strict=True).decoded
    path = tmp_path / "lenient.toml"
    path.write_text(CONFIG.format(d=tmp_path).replace('test_map = { GLU = "GLUC" }',
                                                      "link = { strict_frame_numbers = false }"))
    instrument = next(i for i in load_config(path).instruments if i.id == "arlon-chem-9")
    lenient = replay_capture(load_driver("astm-generic"), capture, instrument=instrument)
    assert len(lenient.decoded) == 1 and lenient.deviations == []
    # a transfer whose ENQ the log dropped may begin anywhere in the numbering: nothing to say
    assert replay_capture(load_driver("astm-generic"), capture[1:-1]).deviations[0].kind == "ENQ missing"


def test_a_rejected_frame_drops_the_rest_of_its_message_and_the_next_message_decodes() -> None:
    first = build_frames(RECORDS)
    second = build_frames([r.replace(b"S1001", b"S1002") for r in RECORDS], first_fn=7)  # one transfer: 7, 0, 1..
    cut = first[2][:20]  # the log lost the end of the O record's frame
    capture = b"\x05" + first[0] + first[1] + cut + b"".join(first[3:]) + b"".join(second) + b"\x04"
    result = replay_capture(load_driver("astm-generic"), capture)
    assert [r.sample_id for m in result.decoded if m.decoded for r in m.decoded.results] == ["S1002", "S1002"]
    assert [(d.action, d.kind) for d in result.deviations] == [("rejected", "frame cut short")] + [
        ("rejected", "frame of an incomplete message")] * 3
    [problem] = [i for i in result.items if isinstance(i, ReplayProblem)]
    assert problem.kind == "incomplete transmission" and problem.detail.startswith("2 record(s)")


def test_with_a_config_a_framing_other_than_the_links_is_said(tmp_path: Path) -> None:
    path = tmp_path / "framing.toml"
    path.write_text(CONFIG.format(d=tmp_path))
    instrument = next(i for i in load_config(path).instruments if i.id == "arlon-chem-9")  # e1381
    result = replay_capture(load_driver("astm-generic"), (CAPTURES / "astm-records.txt").read_bytes(),
                            instrument=instrument)
    assert len(result.decoded) == 2
    [said] = [d for d in result.deviations if d.kind == "framing"]
    assert said.action == "accepted" and 'set link.framing = "raw"' in said.detail
    raw = instrument.model_copy(update={"link": instrument.link.model_copy(update={"framing": "raw"})})
    result = replay_capture(load_driver("astm-generic"), (CAPTURES / "astm-sessions.astm").read_bytes(), instrument=raw)
    assert [d.detail for d in result.deviations if d.kind == "framing"] == [
        'E1381 frames, and the instrument\'s link.framing is raw: the daemon decodes nothing: set '
        'link.framing = "e1381"']


def test_frames_out_of_sequence_are_rejected_not_renumbered() -> None:
    frames = build_frames(RECORDS)
    result = replay_capture(load_driver("astm-generic"), b"\x05" + b"".join(frames[:2] + frames[3:]) + b"\x04")
    assert not result.decoded
    assert ("rejected", "frame out of sequence") in kinds(result.deviations)


def test_strict_repairs_nothing_and_fails_on_any_deviation(capsys: pytest.CaptureFixture[str]) -> None:
    result = replay_capture(load_driver("astm-generic"), (CAPTURES / "astm-unnumbered.astm").read_bytes(),
                            strict=True)
    assert not result.decoded and not conforms(result)
    assert all(d.action == "rejected" for d in result.deviations)
    assert {d.kind for d in result.deviations if "--strict: not repaired" in d.detail} == {"checksum missing",
                                                                                            "frame number missing"}
    assert {d.kind for d in result.deviations if "--strict" not in d.detail} == {"frame of an incomplete message"}
    assert main(["replay", "--strict", "--driver", "astm-generic", str(CAPTURES / "astm-no-enq-eot.astm")]) == 1
    assert "strict: 2 deviation(s): the capture does not conform" in capsys.readouterr().err
    assert main(["replay", "--strict", "--driver", "astm-generic", str(GOLDEN)]) == 0
    assert "strict: the capture conforms" in capsys.readouterr().err


def test_a_capture_that_decodes_to_nothing_fails_with_a_summary() -> None:
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "replay", "--driver", "astm-generic",
                           str(CAPTURES / "nothing.txt")], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    err = proc.stderr.splitlines()
    assert err[0].startswith("replay: 0 message(s) decoded (0 result(s)")
    assert "  frame cut short (1):" in err and "    byte 21: STX, ENQ or EOT before the frame's ETX/ETB" in err
    assert "  bytes outside any frame (14 bytes):" in err
    assert err[-1].startswith("nothing decoded")
    assert proc.stdout == ""


def test_the_summary_ends_every_replay_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--driver", "astm-generic", "--json", str(CAPTURES / "astm-checksums.astm")]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["instrument_test_code"] for line in out.splitlines()] == ["GLU", "K"]
    assert err.splitlines()[0] == ("replay: 1 message(s) decoded (2 result(s), 0 host query(ies)), 0 not decoded; "
                                   "capture read as bytes as received")
    assert "repaired: 1" in err and "rejected: 1" in err


def test_the_summary_lists_warnings_and_held_results(tmp_path: Path) -> None:
    records = [RECORDS[0], RECORDS[1], b"O|1|S1||^^^A", b"R|1|^^^A|5.4", b"R|2|^^^A|4.1", b"L|1|N"]
    result = replay_capture(load_driver("astm-generic"), b"\r".join(records) + b"\r")
    assert any("its 2 results for one sample all have test code 'A'" in line for line in summary(result))
    path = tmp_path / "held.toml"
    path.write_text(CONFIG.format(d=tmp_path).replace('test_map = { GLU = "GLUC" }', 'hold_tests = ["K"]'))
    instrument = next(i for i in load_config(path).instruments if i.id == "arlon-chem-9")
    held = replay_capture(load_driver("astm-generic"), b"\r".join(RECORDS) + b"\r", instrument=instrument)
    assert [r.instrument_test_code for r in held.decoded[0].decoded.results] == ["GLU"]  # type: ignore[union-attr]
    assert any(line.startswith("message 1: held from the LIS: held by configuration (test code(s) K")
               for line in summary(held))


# ---- --render: what a LIS destination would receive --------------------------------------------------------------

CONFIG = """
timezone = "Europe/Brussels"
[[sites]]
id = "arlon"
name = "Arlon"
[[instruments]]
id = "arlon-chem-9"
site = "arlon"
driver = "astm-generic"
transport = {{ kind = "tcp-server", host = "127.0.0.1", port = 0 }}
test_map = {{ GLU = "GLUC" }}
[[lis]]
id = "lis-oru"
kind = "mllp"
host = "127.0.0.1"
port = 2575
sending_facility = "ARLON"
[[lis]]
id = "lis-oul"
kind = "mllp"
host = "127.0.0.1"
port = 2576
message_type = "OUL^R22"
[[lis]]
id = "drop-hl7"
kind = "file"
directory = "{d}"
[[lis]]
id = "drop-astm"
kind = "file"
directory = "{d}"
format = "astm"
[[lis]]
id = "drop-json"
kind = "file"
directory = "{d}"
format = "json"
[[lis]]
id = "api"
kind = "http"
url = "http://127.0.0.1:9/results"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "labbridge.toml"
    path.write_text(CONFIG.format(d=tmp_path))
    return path


def rendered(capsysbinary: pytest.CaptureFixture[bytes], config: Path, fmt: str, dest: str,
             capture: str = "astm-log-directions.log") -> tuple[int, bytes, str]:
    code = main(["replay", "-c", str(config), "--instrument", "arlon-chem-9", "--render", fmt, "--destination", dest,
                 str(CAPTURES / capture)])  # an absolute path stays as it is
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


CONTROL_ID = control_id_for(group_key_for(
    replay_capture(load_driver("astm-generic"), b"\r".join(RECORDS) + b"\r", instrument_id="arlon-chem-9",
                   timezone="Europe/Brussels", test_map={"GLU": "GLUC"}).decoded[0].decoded.results  # type: ignore[union-attr]
)).encode()


@pytest.mark.parametrize(("fmt", "dest", "marks"), [
    ("oru", "lis-oru", [b"MSH|^~\\&|LABBRIDGE|ARLON|LIS||", b"|ORU^R01", b"OBX|1|", b"GLUC", b"S1001"]),
    ("oul", "lis-oul", [b"|OUL^R22", b"GLUC", b"S1001"]),
    ("oru", "drop-hl7", [b"|ORU^R01", b"GLUC"]),
    ("astm", "drop-astm", [b"R|1|^^^GLUC|5.4|mmol/L", b"L|1|N"]),
])
def test_render_prints_what_each_destination_receives(capsysbinary: pytest.CaptureFixture[bytes], config: Path,
                                                       fmt: str, dest: str, marks: list[bytes]) -> None:
    code, out, err = rendered(capsysbinary, config, fmt, dest)
    assert code == 0, err
    assert out.endswith(b"\r\n")  # the payload (segments/records end with CR), then a line break between payloads
    for mark in marks:
        assert mark in out
    assert CONTROL_ID in out  # the store's control ID for these results: the LIS sees the same one
    assert not out.startswith(mllp.SB.to_bytes())
    assert err.startswith("replay: 1 message(s) decoded")


@pytest.mark.parametrize("dest", ["drop-json", "api"])
def test_render_json_for_file_and_http_destinations(capsysbinary: pytest.CaptureFixture[bytes], config: Path,
                                                    dest: str) -> None:
    code, out, err = rendered(capsysbinary, config, "json", dest, capture="astm-records.txt")
    assert code == 0, err
    items = [json.loads(line) for line in out.splitlines()]
    assert [i["sample_id"] for i in items] == ["S1001", "S1002"]
    assert [r["test_code"] for r in items[0]["results"]] == ["GLUC", "K"]  # the instrument's test_map applied
    assert items[0]["control_id"] == CONTROL_ID.decode()
    assert items[0]["results"][0]["measured_at"] == "2026-11-23T08:12:00+01:00"  # the config's zone


def test_render_sends_a_repeated_result_once_and_says_a_validating_instruments_hold(
        capsysbinary: pytest.CaptureFixture[bytes], config: Path, tmp_path: Path) -> None:
    capture = tmp_path / "twice.astm"
    capture.write_bytes((CAPTURES / "astm-sessions.astm").read_bytes()
                        + (CAPTURES / "astm-no-enq-eot.astm").read_bytes())
    code, out, err = rendered(capsysbinary, config, "json", "drop-json", capture=str(capture))
    assert code == 0, err
    assert [json.loads(line)["sample_id"] for line in out.splitlines()] == ["S1001", "S1002", "S1003"]
    assert "render: 3 payload(s) for destination drop-json" in err
    assert "render: 2 result(s) repeated in the capture are not sent again" in err
    config.write_text(config.read_text().replace('test_map = { GLU = "GLUC" }',
                                                 'test_map = { GLU = "GLUC" }\nstage = "validating"'))
    code, out, err = rendered(capsysbinary, config, "json", "drop-json")
    assert code == 0 and "test" not in json.loads(out)  # the payload as it goes after the sign-off
    assert "is at stage 'validating' in the config: drop-json receives these only after the campaign sign-off" in err
    config.write_text(config.read_text().replace('format = "json"', 'format = "json"\nvalidating = "send-test"'))
    code, out, err = rendered(capsysbinary, config, "json", "drop-json")
    assert code == 0 and json.loads(out)["test"] is True
    assert "drop-json receives these flagged as test results" in err


def test_render_refuses_a_format_the_destination_does_not_receive(capsysbinary: pytest.CaptureFixture[bytes],
                                                                   config: Path) -> None:
    code, out, err = rendered(capsysbinary, config, "json", "lis-oru")
    assert code == 1 and out == b""
    assert "destination lis-oru receives oru, not json: use --render oru" in err
    code, out, err = rendered(capsysbinary, config, "oru", "nowhere")
    assert code == 2 and "no destination 'nowhere'" in err


def test_render_of_nothing_decoded_prints_nothing_and_fails(capsysbinary: pytest.CaptureFixture[bytes],
                                                            config: Path) -> None:
    code, out, err = rendered(capsysbinary, config, "oru", "lis-oru", capture="nothing.txt")
    assert code == 1 and out == b"" and "nothing decoded" in err


def test_frame_astm_is_pure_and_gives_the_receiver_a_clean_stream() -> None:
    [stream] = read_capture((CAPTURES / "astm-frame-endings.astm").read_bytes()).streams
    ready = frame_astm(stream, e1381.LinkProfile())
    assert ready.framing == "e1381"
    assert ready.data == b"\x05" + b"".join(build_frames(RECORDS)) + b"\x04"


@pytest.mark.parametrize("dest_id", ["lis-oru", "lis-oul", "drop-hl7", "drop-astm", "drop-json", "api"])
def test_render_is_what_the_daemons_store_and_relay_hand_the_destination(config: Path, tmp_path: Path,
                                                                         dest_id: str) -> None:
    """The same capture through the real store (commit, grouping, control IDs, read back) and the relay's
    render: the bytes replay prints, but for JSON's message_id (the stored message's id)."""
    cfg = with_link_defaults(load_config(config), driver_link_defaults)
    instrument = next(i for i in cfg.instruments if i.id == "arlon-chem-9")
    dest = next(d for d in cfg.lis if d.id == dest_id)
    result = replay_capture(load_driver("astm-generic"), (CAPTURES / "astm-records.txt").read_bytes(),
                            instrument=instrument)
    at = 1_795_000_000.0
    printed = render(result, cfg, instrument, dest, received_at=at).payloads

    async def through_the_daemon() -> tuple[list[bytes], list[bytes]]:
        store = Store(tmp_path / "store.db")
        await store.open()
        relay = Relay(dest, store, asyncio.Event())
        try:
            for message in result.decoded:
                assert message.decoded is not None
                stored = await store.commit_message(
                    instrument=instrument.id, protocol="astm", raw=b"\r".join(message.records), received_at=at,
                    results=message.decoded.results, destinations=[dest.id], backlog_after_s=cfg.backlog.older_than_s)
                # What the sink hands the relay: sent as they are while it is caught up, not read back.
                relay.offer(handed_off(stored, instrument=instrument.id, received_at=at,
                                       results=message.decoded.results))
            items, _ = await store.due_items(dest.id, at + 1)
            return [relay.render(item) for item in items], [relay.render(item) for item in relay.handed]
        finally:
            await store.close()

    sent, handed = run(through_the_daemon())
    assert handed == sent  # the same bytes, whether read back from the store or handed off by the commit
    assert len(sent) == len(printed) == 2
    if destination_format(dest) == "json":
        sent = [re.sub(rb'"message_id": \d+', b'"message_id": null', p) for p in sent]
    assert sent == printed
