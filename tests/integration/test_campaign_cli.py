"""The campaign's commands on a stopped daemon's store (``-c CONFIG``) and its HTTP API on a running one:
the stage rules, sign-off checks, the CSV import, the report's three formats, and the API's refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from labbridge.cli import main
from labbridge.cli.local import local_actor
from tests.conftest import run
from tests.integration.helpers import free_port, lab_config, running_lab
from tests.integration.test_crash import write_toml


@pytest.fixture
def logging_restored() -> Any:
    """main() points the logs at this test's captured stderr; later tests log elsewhere."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def offline_config(tmp_path: Path) -> Path:
    config = lab_config(tmp_path, instruments=2, lis_port=free_port(), overrides={"an-0": {"stage": "inventoried"}})
    config["http"] = {"enabled": False}
    path = tmp_path / "labbridge.toml"
    write_toml(path, config)
    return path


@pytest.mark.usefixtures("logging_restored")
def test_the_campaign_from_the_command_line_on_a_stopped_daemons_store(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(offline_config(tmp_path))

    def cli(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "-c", cfg])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("campaign", "status", "--json")
    assert code == 0
    stages = {r["id"]: r["stage"] for s in json.loads(out)["sites"] for r in s["instruments"]}
    assert stages == {"an-0": "inventoried", "an-1": "live"}
    assert cli("campaign", "set", "an-0", "cabled", "--by", "anna", "--reason", "serial cable to port 3")[:2] == (
        0, "an-0: inventoried -> cabled\n")
    code, _, err = cli("campaign", "set", "an-0", "live", "--by", "anna", "--reason", "looks fine")
    assert code == 1 and "live is reached by a sign-off" in err
    code, _, err = cli("campaign", "set", "an-9", "cabled", "--by", "anna", "--reason", "x")
    assert code == 1 and "no instrument 'an-9'" in err
    assert cli("campaign", "set", "an-0", "validating", "--by", "anna", "--reason", "reference run")[0] == 0

    bad = tmp_path / "bad.csv"
    bad.write_text("sample,test,value\nS1,GLU,5\n")
    code, _, err = cli("validate", "import", "an-0", str(bad), "--by", "anna")
    assert code == 1 and "missing expected, tolerance" in err
    refs = tmp_path / "refs.csv"
    refs.write_text("sample,test,expected,tolerance\nS1,GLU,5.0,0.2\nS2,K,4.1,5%\n")
    assert cli("validate", "import", "an-0", str(refs), "--by", "anna")[:2] == (
        0, "an-0: 2 reference value(s) imported\n")
    code, out, _ = cli("validate", "compare", "an-0", "--json")
    assert code == 1 and [r["verdict"] for r in json.loads(out)["rows"]] == ["missing", "missing"]

    code, _, err = cli("campaign", "sign-off", "an-0", "--by", "anna", "--release")
    assert code == 1 and "cannot sign off: 0 outside tolerance, 2 missing of 2 reference(s)" in err
    code, _, err = cli("campaign", "sign-off", "an-0", "--by", "anna", "--release", "--override")
    assert code == 1 and "--override needs --reason" in err
    code, out, _ = cli("campaign", "sign-off", "an-0", "--by", "anna", "--discard", "--override", "--reason",
                       "samples lost; validated on the QC material")
    assert (code, out) == (0, "an-0: validating -> live; 0 held item(s) discarded (override)\n")
    assert cli("campaign", "rollback", "an-0", "--by", "bob", "--reason", "K drift")[:2] == (
        0, "an-0: live -> rolled-back; 0 unsent item(s) held again\n")

    code, out, _ = cli("campaign", "history", "an-0", "--json")
    me = local_actor()  # on the store file, the OS account that ran the command, not --by's free text
    assert [(h["stage"], h["by"]) for h in json.loads(out)] == [
        ("rolled-back", me), ("live", me), ("validating", me), ("cabled", me), ("inventoried", "config")]

    md, html = tmp_path / "r.md", tmp_path / "r.html"
    assert cli("campaign", "report", "--format", "md", "-o", str(md))[0] == 0
    text = md.read_text()
    assert "## Arlon (arlon)" in text and "## Virton (virton)" in text
    assert "- 1 of 2 instruments live; 0 validating; 1 blocked" in text
    assert "an-0 (an-0) (rolled-back): rolled back: K drift" in text
    assert cli("campaign", "report", "--format", "html", "--site", "virton", "-o", str(html))[0] == 0
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "Virton" in page and "Arlon" not in page
    assert not any(tag in page for tag in ("<script", "<link", "src=", "url(", "@import"))  # self-contained
    code, out, _ = cli("campaign", "report", "--format", "json")
    report = json.loads(out)
    assert (report["group"]["live"], report["group"]["sites_fully_live"]) == (1, 1)
    assert [s["fully_live"] for s in report["sites"]] == [False, True]
    assert report["sites"][0]["blocked"][0]["why"] == "rolled back: K drift"


def test_the_api_refuses_what_it_cannot_do_and_says_why(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, http=True, overrides={"an-0": {"stage": "cabled"}}) as lab:
            host, port = lab.daemon.http_address  # type: ignore[misc]
            base = f"http://{host}:{port}"
            async with aiohttp.ClientSession() as http:
                async def post(path: str, body: Any, *, form: bool = False) -> tuple[int, Any]:
                    kwargs: dict[str, Any] = {"data": "x=1"} if form else {"json": body}
                    async with http.post(base + path, **kwargs) as resp:
                        return resp.status, await resp.json()

                assert (await post("/api/instruments/an-0/stage", {}, form=True))[0] == 415
                status, answer = await post("/api/instruments/an-0/stage", {"stage": "validating", "who": "x"})
                assert (status, answer["error"]) == (400, "unknown field(s): who")
                status, answer = await post("/api/instruments/an-0/stage", {"stage": "validating", "by": "anna"})
                assert (status, answer["error"]) == (400, "a reason is required (it goes to the audit trail)")
                status, answer = await post("/api/instruments/an-9/stage", {"stage": "cabled", "by": "a",
                                                                             "reason": "x"})
                assert (status, answer["error"]) == (404, "no instrument 'an-9' in the configuration")
                status, answer = await post("/api/instruments/an-0/stage", {"stage": "validating", "by": "anna",
                                                                             "reason": "reference run"})
                assert (status, answer) == (200, {"instrument": "an-0", "from": "cabled", "stage": "validating"})
                status, answer = await post("/api/instruments/an-0/sign-off", {"by": "anna", "held": "keep"})
                assert status == 400 and answer["error"].startswith('held must be "release"')
                status, answer = await post("/api/instruments/an-0/references", {
                    "by": "anna", "references": [{"sample": "S1", "test": "GLU", "expected": "5", "tolerance": "x"}]})
                assert (status, answer["error"]) == (
                    400, "references[0]: tolerance 'x': a number >= 0, or a percentage such as 5%")
                status, answer = await post("/api/instruments/an-0/references", {
                    "by": "anna", "references": [{"sample": "S1", "test": "GLU", "expected": "5", "tolerance": "1"}]})
                assert (status, answer["references"]) == (200, 1)
                async with http.get(base + "/api/instruments/an-0/validation") as resp:
                    compared = await resp.json()
                assert [r["verdict"] for r in compared["rows"]] == ["missing"]
                async with http.get(base + "/api/campaign") as resp:
                    campaign = await resp.json()
                row = campaign["sites"][0]["instruments"][0]
                assert (campaign["sites"][0]["id"], row["id"], row["stage"], row["held"], row["delivered"]) == (
                    "arlon", "an-0", "validating", 0, 0)
                assert row["validation"] == {"references": 1, "within": 0, "outside": 0, "missing": 1, "ok": False}
                async with http.get(base + "/api/campaign/report", params={"format": "md", "site": "arlon"}) as resp:
                    assert resp.status == 200 and resp.content_type == "text/markdown"
                    assert "validating: 0 result(s) outside tolerance, 1 missing" in await resp.text()
                async with http.get(base + "/api/campaign", params={"site": "nowhere"}) as resp:
                    assert resp.status == 404
                # The dashboard's page: the report with the comparison side by side, self-contained.
                async with http.get(base + "/campaign") as resp:
                    page = await resp.text()
                assert resp.status == 200 and "<h3>Validation of an-0 (an-0)</h3>" in page
                assert "<td>S1</td><td>GLU</td><td>5</td><td>1</td><td>-</td><td></td>" in page
                assert not any(tag in page for tag in ("<script", "<link", "src=", "url("))

    run(body())
