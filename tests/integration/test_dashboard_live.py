"""The technician's dashboard on the real demo lab, in a real headless Chromium (selenium driving Debian's
chromium through Debian's chromedriver): the six sites and their states, a tile changing without a reload
when a simulated analyzer is stopped for real, an instrument's timeline, a sign-off from its page (the real
button; the campaign's API shows the change), and the CSRF contract of the page's one sending function."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from labbridge.config import load_config
from labbridge.demo import default_demo_config
from tests.conftest import run
from tests.integration.browser import chromium, demo_lab

pytestmark = pytest.mark.slow

WAIT_S = 60  # generous: "within seconds" on a loaded 2-core machine; no test measures speed
STOPPED = "arlon-chem-1"  # a healthy, live analyzer of the demo
VALIDATING = "virton-hema-1"  # validating, its reference values within tolerance once the demo imports them


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def card_state(driver: WebDriver, instrument: str) -> tuple[str, str]:
    """The card's state as a class-like attribute and as the word shown in its badge."""
    card = driver.find_element(By.CSS_SELECTOR, f"article[data-instrument='{instrument}']")
    return str(card.get_attribute("data-state")), card.find_element(By.CSS_SELECTOR, ".state .word").text.lower()


def test_overview_shows_the_demo_and_a_stopped_analyzer_turns_its_tile_without_reload(tmp_path: Path) -> None:
    config = load_config(default_demo_config())
    sites = {s.id: s.name for s in config.sites}
    instruments = {i.id for i in config.instruments}

    async def body() -> None:
        async with demo_lab(tmp_path) as (controls, base):
            with chromium() as driver:
                def opened() -> None:
                    driver.get(base + "/")
                    wait = WebDriverWait(driver, WAIT_S)
                    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-live='open']"))
                    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "article[data-instrument]"))
                               == len(instruments))
                    # The analyzer to stop is connected and shown up (its simulator has sent something).
                    wait.until(lambda d: card_state(d, STOPPED) == ("up", "up"))
                    driver.execute_script("""
                        window.__notReloaded = true;
                        window.__heard = [];  // everything the page says to screen readers from now on
                        new MutationObserver(records => { for (const r of records) for (const n of r.addedNodes)
                            window.__heard.push(n.textContent); })
                          .observe(document.getElementById("announce"), {childList: true});""")

                await asyncio.to_thread(opened)
                shown_sites = {el.get_attribute("data-site"): el.find_element(By.TAG_NAME, "h2").text
                               for el in driver.find_elements(By.CSS_SELECTOR, "section[data-site]")}
                assert set(shown_sites) == set(sites)
                for ident, name in sites.items():
                    assert shown_sites[ident].startswith(name)
                strip = {el.get_attribute("data-strip-site")
                         for el in driver.find_elements(By.CSS_SELECTOR, "[data-strip-site]")}
                assert strip == set(sites)
                tiles = {el.get_attribute("data-tile") for el in driver.find_elements(By.CSS_SELECTOR, "[data-tile]")}
                assert tiles == instruments
                # Every card says its state in words beside the color, as the API has it.
                api = {i["id"]: i["state"] for i in await asyncio.to_thread(get_json, f"{base}/api/instruments")}
                for ident in instruments:
                    attr, word = card_state(driver, ident)
                    assert attr == word
                assert card_state(driver, "bastogne-coag-1") == ("failed", "failed") == (api["bastogne-coag-1"],) * 2
                tile = driver.find_element(By.CSS_SELECTOR, "[data-tile='bastogne-coag-1']")
                assert "failed" in str(tile.get_attribute("aria-label"))

                await controls.stop_analyzer(STOPPED)  # the simulator hangs up for real

                def changed() -> tuple[str, str]:
                    WebDriverWait(driver, WAIT_S).until(lambda d: card_state(d, STOPPED)[0] != "up")
                    WebDriverWait(driver, WAIT_S).until(
                        lambda d: d.find_element(By.CSS_SELECTOR, f"[data-tile='{STOPPED}']")
                        .get_attribute("data-state") != "up")
                    return card_state(driver, STOPPED)

                attr, word = await asyncio.to_thread(changed)
                assert attr == word and attr in ("idle", "down")  # clean hang-up: idle, waiting for the next
                assert driver.execute_script("return window.__notReloaded === true;")
                now = {i["id"]: i for i in await asyncio.to_thread(get_json, f"{base}/api/instruments")}
                assert now[STOPPED]["state"] == attr
                # Said to screen readers too (a log of the last changes: other analyzers change meanwhile).
                announced = [str(text) for text in driver.execute_script("return window.__heard;")]
                said = "Chemistry 1 (cobas c 311) at arlon: up to "
                assert any(text.startswith(said) for text in announced), announced

    run(body(), timeout=240)


def test_instrument_page_shows_its_timeline_and_signs_off_with_the_csrf_header(tmp_path: Path) -> None:
    async def body() -> None:
        async with demo_lab(tmp_path) as (_controls, base):
            with chromium() as driver:
                def page() -> None:
                    driver.get(base + "/")  # a cookie for this origin, as the auth's login would set it
                    driver.add_cookie({"name": "labbridge_csrf", "value": "token-123", "path": "/"})
                    driver.get(f"{base}/instruments/{VALIDATING}")
                    wait = WebDriverWait(driver, WAIT_S)
                    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .seg"))
                    wait.until(lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "up")
                    # the timeline has a segment and a legend entry for "up", in words as well as color
                    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .seg.s-up"))
                    driver.find_element(By.CSS_SELECTOR, "button[data-hours='1']").click()
                    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "button[data-hours='1']")
                               .get_attribute("aria-pressed") == "true")
                    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#legend [data-legend='up']"))
                    assert "up" in driver.find_element(By.CSS_SELECTOR, "#legend [data-legend='up']").text.lower()
                    assert "state over the last hour" in str(
                        driver.find_element(By.ID, "timeline").get_attribute("aria-label"))
                    # the demo imports reference values after a few results: the comparison turns ok by itself
                    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-validation='ok']"))
                    assert driver.find_element(By.ID, "stage").text == "validating"

                await asyncio.to_thread(page)
                held_before = next(r for s in (await asyncio.to_thread(get_json, f"{base}/api/campaign"))["sites"]
                                   for r in s["instruments"] if r["id"] == VALIDATING)["held"]
                assert held_before > 0

                def sign_off() -> Any:
                    driver.execute_script("""
                        window.__sent = [];
                        const real = window.fetch;
                        window.fetch = (url, init) => { window.__sent.push({url: String(url), init: init || {}});
                                                        return real(url, init); };""")
                    actor = driver.find_element(By.ID, "actor")
                    actor.clear()
                    actor.send_keys("M. Lambert (lab technician)")
                    Select(driver.find_element(By.ID, "held")).select_by_value("release")
                    driver.find_element(By.ID, "signoff-button").click()
                    wait = WebDriverWait(driver, WAIT_S)
                    wait.until(lambda d: "Signed off" in d.find_element(By.ID, "campaign-outcome").text)
                    wait.until(lambda d: d.find_element(By.ID, "stage").text == "live")
                    return driver.execute_script("return window.__sent.filter(s => s.init.method === 'POST');")

                posts = await asyncio.to_thread(sign_off)
                assert [p["url"] for p in posts] == [f"/api/instruments/{VALIDATING}/sign-off"]
                assert posts[0]["init"]["headers"]["X-CSRF-Token"] == "token-123"
                assert json.loads(posts[0]["init"]["body"])["by"] == "M. Lambert (lab technician)"
                row = next(r for s in (await asyncio.to_thread(get_json, f"{base}/api/campaign"))["sites"]
                           for r in s["instruments"] if r["id"] == VALIDATING)
                assert row["stage"] == "live" and row["stage_by"] == "unverified:M. Lambert (lab technician)"
                assert row["held"] == 0
                history = await asyncio.to_thread(get_json, f"{base}/api/campaign/history?instrument={VALIDATING}")
                signed = "unverified:M. Lambert (lab technician)"  # auth off on loopback: the typed name, unverified
                assert any(h["stage"] == "live" and h["by"] == signed for h in history)

    run(body(), timeout=240)
