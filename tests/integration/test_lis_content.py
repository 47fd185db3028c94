"""What the LIS receives is what the analyzer meant (issue 20, parts 1 and 2), end to end over real sockets.

An analyzer sends ASTM over TCP to a running daemon: a patient's results with comments on the patient, the
order and a result (C records), a correction (R-9 ``C``) and a preliminary result, the analyzer's test name,
operator and instrument; a QC run (O-12 ``Q``); a sample with no patient at all. The daemon relays to every
destination kind: MLLP ORU^R01 and OUL^R22 (python-hl7's MLLP server, an implementation independent of
labbridge's), a QC-only MLLP feed, file drops (HL7 and ASTM) and HTTP JSON (an aiohttp server). Every HL7
message labbridge emits under a strictly valid setting passes hl7apy's strict v2.5.1 validation.

QC per destination: ``hold`` (the default: stored, held, released by an operator's retry, then sent marked),
``send-marked`` (SPM-11 ``Q``), ``drop`` (never sent there), and a ``results = "qc"`` destination that
takes the QC and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
from aiohttp import web
from hl7apy.parser import parse_message as hl7apy_parse
from labbridge_simulators.astm_analyzer import AstmAnalyzerSim, ScriptedMessages

from labbridge.outbox import DEAD_HELD
from tests.conftest import run
from tests.integration.helpers import eventually, running_lab

SCRIPT = """\
H|\\^&|||Chem^2.1^SN42|||||||P|LIS2-A2|20261203081500
P|1|PAT-1||ALT-9|DOE^JANE^M||19700101|F
C|1|I|Known to the lab|G
O|1|S-PAT-1||^^^GLU\\^^^K|R|20261203080000|||||N||||||||||||||F
C|1|I|Hemolysed sample|G
R|1|^Glucose^^GLU|7.2|mmol/L|3.9 to 6.1|H||C||OPER-7||20261203081200|M-204
C|1|I|Repeated after dilution|G
R|2|^^^K|4.1|mmol/L|3.5 to 5.1|N||P||||20261203081205
L|1|N
H|\\^&|||Chem^2.1^SN42|||||||P|LIS2-A2|20261203081600
P|1
O|1|QC-L1||^^^GLU|R||||||Q||||||||||||||F
R|1|^^^GLU|3.1|mmol/L|2.9 to 3.3|||F||||20261203081300
L|1|N
H|\\^&|||Chem^2.1^SN42|||||||P|LIS2-A2|20261203081700
P|1
O|1|S-NOPAT||^^^NA|R||||||N||||||||||||||F
R|1|^^^NA|140|mmol/L||||F||||20261203081400
L|1|N
"""

SAMPLES = {"S-PAT-1", "QC-L1", "S-NOPAT"}


class Hl7Lis:
    """A LIS on python-hl7's asyncio MLLP server: keeps every message it got, answers AA."""

    def __init__(self) -> None:
        self.messages: list[hl7.Message] = []
        self.raw: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def on_client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    message = await reader.readmessage()
                    self.messages.append(message)
                    self.raw.append(str(message))
                    writer.writemessage(message.create_ack("AA"))
                    await writer.drain()

        self.server = await hl7.mllp.start_hl7_server(on_client, "127.0.0.1", 0, encoding="utf-8")
        return int(self.server.sockets[0].getsockname()[1])

    def by_sample(self) -> dict[str, hl7.Message]:
        return {_sample(m): m for m in self.messages}

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _sample(message: hl7.Message) -> str:
    for seg in message:
        if str(seg[0]) == "SPM":
            return str(seg[2]).split("&")[0]
    return str(message.segment("OBR")[3])


def _segments(message: hl7.Message) -> list[str]:
    return [str(seg[0]) for seg in message]


def _strictly_valid(text: str) -> None:
    assert hl7apy_parse(text.replace("\n", "\r"), validation_level=1, find_groups=True).validate() is True


@contextlib.asynccontextmanager
async def http_lis(received: list[dict[str, Any]]) -> AsyncIterator[int]:
    async def take(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/results", take)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        server = site._server
        assert server is not None
        yield int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


def _mllp(ident: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"id": ident, "kind": "mllp", "host": "127.0.0.1", "port": port, "ack_timeout_s": 5.0,
            "connect_timeout_s": 5.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.3, **extra}


def test_every_destination_gets_comments_corrections_names_patient_fields_and_qc_as_configured(
        tmp_path: Path) -> None:
    oru, oul, qc_feed, oru_empty = Hl7Lis(), Hl7Lis(), Hl7Lis(), Hl7Lis()
    hl7_drop, astm_drop = tmp_path / "hl7-drop", tmp_path / "astm-drop"
    hl7_drop.mkdir()
    astm_drop.mkdir()
    posted: list[dict[str, Any]] = []

    async def body() -> list[dict[str, Any]]:
        ports = [await lis.start() for lis in (oru, oul, qc_feed, oru_empty)]
        try:
            async with http_lis(posted) as http_port:
                lis = [
                    _mllp("oru", ports[0]),  # qc = "hold", the default
                    _mllp("oul", ports[1], message_type="OUL^R22", qc="send-marked", coding_system="LN",
                          pid_without_patient="send"),
                    _mllp("qc-feed", ports[2], results="qc"),
                    _mllp("oru-empty", ports[3], qc="drop", missing_patient_fields="empty",
                          pid_without_patient="send"),
                    {"id": "hl7-file", "kind": "file", "directory": str(hl7_drop), "format": "hl7", "qc": "drop"},
                    {"id": "astm-file", "kind": "file", "directory": str(astm_drop), "format": "astm",
                     "qc": "send-marked"},
                    {"id": "http", "kind": "http", "url": f"http://127.0.0.1:{http_port}/results",
                     "qc": "send-marked", "backoff_initial_s": 0.05, "backoff_max_s": 0.3},
                ]
                async with running_lab(tmp_path, instruments=1, extra={"lis": lis}) as lab:
                    runner = lab.daemon.runners["an-0"]
                    assert runner.bound is not None
                    sim = AstmAnalyzerSim("an-0", runner.bound, ScriptedMessages("an-0", SCRIPT), interval=(0, 0.01),
                                          max_messages=3)
                    stop = asyncio.Event()
                    task = asyncio.create_task(sim.run(stop))
                    await eventually(lambda: sim.stats.messages_acked == 3, what="the three messages stored")
                    await eventually(lambda: len(oru.messages) == 2 and len(oul.messages) == 3
                                     and len(qc_feed.messages) == 1 and len(oru_empty.messages) == 2
                                     and len(list(hl7_drop.glob("*.hl7"))) == 2
                                     and len(list(astm_drop.glob("*.astm"))) == 3 and len(posted) == 3,
                                     timeout=30, what="every destination served")
                    # QC "hold": the QC result waits in the store, shown as held, for the "oru" destination only.
                    held = await lab.daemon.store.outbox_rows(state="dead")
                    assert [(r["destination"], r["dead_kind"]) for r in held] == [("oru", DEAD_HELD)]
                    assert "QC result held" in held[0]["last_error"]
                    # QC "drop": the QC result is in the store, and never queued for that destination.
                    assert len(await lab.daemon.store.outbox_rows(destination="hl7-file")) == 2
                    assert {_sample(m) for m in oru.messages} == {"S-PAT-1", "S-NOPAT"}
                    # An operator releases it: it goes, marked as QC.
                    outcome = await lab.daemon.operations.retry([held[0]["id"]], actor="qa", reason="QC released")
                    assert outcome == [{"id": held[0]["id"], "outcome": "queued"}]
                    await eventually(lambda: len(oru.messages) == 3, what="the released QC at the LIS")
                    stop.set()
                    await asyncio.wait_for(task, 10)
        finally:
            for one in (oru, oul, qc_feed, oru_empty):
                one.close()
        return posted

    run(body(), timeout=90)

    # ---- MLLP ORU^R01 (defaults) -------------------------------------------------------------------------
    got = oru.by_sample()
    patient = got["S-PAT-1"]
    assert _segments(patient) == ["MSH", "PID", "NTE", "OBR", "NTE", "OBX", "NTE", "OBX"]
    pid = patient.segment("PID")
    assert str(pid[3][0][0]) == "PAT-1" and str(pid[4]) == "ALT-9"
    assert (str(pid[5][0][0]), str(pid[5][0][1]), str(pid[5][0][2])) == ("DOE", "JANE", "M")
    assert (str(pid[7]), str(pid[8])) == ("19700101", "F")
    notes = [str(seg[3]) for seg in patient.segments("NTE")]
    assert notes == ["Known to the lab", "Hemolysed sample", "Repeated after dilution"]
    glu, k = patient.segments("OBX")
    assert (str(glu[3][0][0]), str(glu[3][0][1]), str(glu[3][0][2])) == ("GLU", "Glucose", "L")
    assert (str(glu[11]), str(k[11])) == ("C", "P")  # correction, preliminary
    assert (str(glu[6]), str(glu[7]), str(glu[8])) == ("mmol/L", "3.9 to 6.1", "H")
    assert str(glu[16]) == "OPER-7" and str(glu[18]).split("~") == ["an-0", "M-204"]
    assert str(patient.segment("OBR")[25]) == "C"
    no_patient = got["S-NOPAT"]
    assert "PID" not in _segments(no_patient)  # the analyzer sent no patient: no PID (pid_without_patient = omit)
    qc = got["QC-L1"]  # released by the operator: marked as a control specimen
    assert _segments(qc)[-1] == "SPM" and str(qc.segment("SPM")[11][0][0]) == "Q"
    for text in oru.raw:
        _strictly_valid(text)

    # ---- MLLP OUL^R22 (QC sent marked, LOINC coding system, a PID always) -----------------------------
    got = oul.by_sample()
    assert str(got["QC-L1"].segment("SPM")[11][0][0]) == "Q"
    assert str(got["S-PAT-1"].segment("SPM")[11][0][0]) == "P"
    assert _segments(got["S-PAT-1"]) == ["MSH", "PID", "NTE", "SPM", "OBR", "NTE", "OBX", "NTE", "OBX"]
    assert str(got["S-PAT-1"].segments("OBX")[0][3][0][2]) == "LN"
    nopid = got["S-NOPAT"].segment("PID")
    assert (str(nopid[3]), str(nopid[5])) == ('""', '""')  # required, not sent: HL7 null (the default)
    for text in oul.raw:
        _strictly_valid(text)

    # ---- a QC-only feed --------------------------------------------------------------------------------
    assert [_sample(m) for m in qc_feed.messages] == ["QC-L1"]
    assert str(qc_feed.messages[0].segment("SPM")[11][0][0]) == "Q"
    _strictly_valid(qc_feed.raw[0])

    # ---- missing_patient_fields = "empty": nothing said, so a LIS updating patients deletes nothing ----
    got = oru_empty.by_sample()
    assert set(got) == {"S-PAT-1", "S-NOPAT"}  # qc = "drop"
    empty_pid = got["S-NOPAT"].segment("PID")
    assert str(empty_pid) == "PID|1"  # PID-3 and PID-5 left empty, not ""

    # ---- file drop, HL7 (qc = "drop") ------------------------------------------------------------------
    files = [hl7.parse(p.read_bytes().decode("utf-8")) for p in sorted(hl7_drop.glob("*.hl7"))]
    assert {_sample(m) for m in files} == {"S-PAT-1", "S-NOPAT"}
    dropped = next(m for m in files if _sample(m) == "S-PAT-1")
    assert [str(seg[3]) for seg in dropped.segments("NTE")] == notes
    for p in hl7_drop.glob("*.hl7"):
        _strictly_valid(p.read_bytes().decode("utf-8"))

    # ---- file drop, ASTM: C records after the P, O and R they are about; QC marked O-12 Q ---------------
    texts = {p.read_bytes().decode("latin-1") for p in astm_drop.glob("*.astm")}
    astm = next(t for t in texts if "S-PAT-1" in t).split("\r")
    kinds = [r[:1] for r in astm if r]
    assert kinds == ["H", "P", "C", "O", "C", "R", "C", "R", "L"]
    assert astm[1] == "P|1|PAT-1||ALT-9|DOE^JANE^M||19700101|F"
    assert astm[5].startswith("R|1|^Glucose^^GLU|7.2|mmol/L|3.9 to 6.1|H||C||OPER-7||")
    assert "|Q" in next(t for t in texts if "QC-L1" in t).split("\r")[2]

    # ---- HTTP JSON -------------------------------------------------------------------------------------
    by_sample = {item["sample_id"]: item for item in posted}
    assert set(by_sample) == SAMPLES
    item = by_sample["S-PAT-1"]
    assert item["comments"] == ["Hemolysed sample"]
    assert item["patient"]["name"] == ["DOE", "JANE", "M"] and item["patient"]["comments"] == ["Known to the lab"]
    first, second = item["results"]
    assert first["comments"] == ["Repeated after dilution"] and second["comments"] == []
    assert (first["status"], second["status"]) == ("correction", "preliminary")
    assert (first["test_name"], first["operator"], first["equipment_id"]) == ("Glucose", "OPER-7", "M-204")
    assert by_sample["S-NOPAT"]["patient"] is None
    assert [r["kind"] for r in by_sample["QC-L1"]["results"]] == ["qc"]
    json.dumps(posted)  # plain JSON all through


ORU_IN = ("MSH|^~\\&|BA400|LAB1|LIS|HOSP|20261203101500+0100||ORU^R01^ORU_R01|IN-1|P|2.5.1\r"
          "PID|1||PAT42^^^HOSP^PI||Dupont^Zoé||19810214|F\r"
          "NTE|1|L|Fasting\r"
          "OBR|1|S-HL7||GLU^Glucose^99ROC|||20261203100000\r"
          "NTE|1|L|Lipemic sample\r"
          "OBX|1|NM|GLU^Glucose^99ROC||7.2|mmol/L|3.9-6.1|H|||C|||||OP^Smith||BA400-M2|20261203101200\r"
          "NTE|1|L|Confirmed by rerun~Second line\r"
          "OBX|2|NM|K^Potassium^99ROC||4.1|mmol/L|3.5-5.1||||P\r")


def test_an_hl7_analyzers_nte_patient_and_status_reach_the_lis(tmp_path: Path) -> None:
    """The HL7 side: NTE after PID, OBR and OBX, a correction and a preliminary result, the analyzer's test
    name, operator and equipment, from an HL7 analyzer (over MLLP) to a python-hl7 LIS (ORU^R01)."""
    from labbridge.protocols import mllp

    lis = Hl7Lis()

    async def body() -> None:
        port = await lis.start()
        instrument = {"id": "hl7-1", "site": "arlon", "driver": "hl7-generic",
                      "transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0},
                      "link": {"framing": "mllp", "encoding": "utf-8"}}
        try:
            async with running_lab(tmp_path, extra={"instruments": [instrument], "lis": [_mllp("oru", port)]}) as lab:
                bound = lab.daemon.runners["hl7-1"].bound
                assert bound is not None
                reader, writer = await asyncio.open_connection(*bound)
                writer.write(mllp.frame(ORU_IN.encode("utf-8")))
                await writer.drain()
                decoder = mllp.MllpDecoder()
                acks: list[bytes] = []
                async with asyncio.timeout(10):
                    while not acks:
                        acks += [e.payload for e in decoder.receive_data(await reader.read(65536))
                                 if isinstance(e, mllp.MllpMessage)]
                assert b"MSA|AA|IN-1" in acks[0]
                writer.close()
                await eventually(lambda: len(lis.messages) == 1, what="the results at the LIS")
        finally:
            lis.close()

    run(body(), timeout=60)
    message = lis.messages[0]
    assert _segments(message) == ["MSH", "PID", "NTE", "OBR", "NTE", "OBX", "NTE", "NTE", "OBX"]
    # Each repetition of NTE-3 is one comment: one NTE each (set IDs 1, 2 under their OBX).
    assert [(str(seg[1]), str(seg[3])) for seg in message.segments("NTE")] == [
        ("1", "Fasting"), ("1", "Lipemic sample"), ("1", "Confirmed by rerun"), ("2", "Second line")]
    pid = message.segment("PID")
    assert (str(pid[5][0][0]), str(pid[5][0][1]), str(pid[7]), str(pid[8])) == ("Dupont", "Zoé", "19810214", "F")
    glu, k = message.segments("OBX")
    assert (str(glu[3][0][1]), str(glu[11]), str(k[11])) == ("Glucose", "C", "P")
    assert str(glu[16]) == "OP" and str(glu[18]).split("~") == ["hl7-1", "BA400-M2"]
    _strictly_valid(lis.raw[0])
