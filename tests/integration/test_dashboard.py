"""The status page and JSON API, read by a real headless Chromium (selenium, tests/integration/browser.py)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import run
from tests.integration.browser import chromium
from tests.integration.helpers import eventually, running_lab

pytestmark = pytest.mark.slow


def dashboard_dom(url: str, screenshot: Path) -> tuple[str, str]:
    """The page as a real headless Chromium shows it once the live updates delivered the instruments, and the
    text of its connection-lost banner as shown (empty while connected)."""
    with chromium(1280, 900) as driver:
        driver.get(url)
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "article[data-instrument]"))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "article[data-destination]"))
        driver.save_screenshot(str(screenshot))
        return str(driver.page_source), str(driver.find_element(By.ID, "error").text)


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_dashboard_shows_every_instrument_with_its_state(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=3, http=True) as lab:
            assert lab.daemon.http_address is not None
            host, port = lab.daemon.http_address
            assert host == "127.0.0.1"
            base = f"http://{host}:{port}"
            sim = lab.analyzer("an-0", messages=2)
            await sim.run(asyncio.Event())
            await eventually(lambda: set(sim.acked) <= lab.lis.delivered, what="delivery")

            instruments = await asyncio.to_thread(get_json, f"{base}/api/instruments")
            assert isinstance(instruments, list) and len(instruments) == 3
            by_id = {i["id"]: i for i in instruments}
            for key in ("id", "site", "driver", "state", "last_message_at", "messages_received", "reason"):
                assert key in by_id["an-0"]
            assert by_id["an-0"]["messages_received"] == 2 and by_id["an-0"]["last_message_at"]
            assert by_id["an-1"]["state"] == "down" and "listening on port" in by_id["an-1"]["reason"]
            one = await asyncio.to_thread(get_json, f"{base}/api/instruments/an-0")
            assert isinstance(one, dict) and one["id"] == "an-0"
            metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{base}/metrics").read().decode())
            assert 'labbridge_messages_received_total{instrument="an-0"} 2.0' in metrics

            dom, banner = await asyncio.to_thread(dashboard_dom, f"{base}/", tmp_path / "dashboard.png")
            for inst in ("an-0", "an-1", "an-2"):
                assert f'data-instrument="{inst}"' in dom, dom[:2000]
            assert 'data-site="arlon"' in dom and 'data-site="virton"' in dom
            assert 'data-destination="lis"' in dom
            assert banner == ""  # no "connection lost: cannot reach the labbridge daemon"
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    run(body(), timeout=120)


def test_keyboard_reaches_a_tile_that_keeps_focus_and_the_page_says_when_the_daemon_is_gone(tmp_path: Path) -> None:
    async def body() -> None:
        with chromium(1280, 900) as driver:
            async with running_lab(tmp_path, instruments=2, http=True) as lab:
                assert lab.daemon.http_address is not None
                host, port = lab.daemon.http_address

                def focus_a_tile() -> str:
                    driver.get(f"http://{host}:{port}/")
                    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-live='open']"))
                    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-tile='an-0']"))
                    body = driver.find_element(By.TAG_NAME, "body")
                    body.send_keys(Keys.TAB)
                    for _ in range(12):  # skip link, the pages, the site names... then the first tile
                        if driver.switch_to.active_element.get_attribute("data-tile"):
                            break
                        driver.switch_to.active_element.send_keys(Keys.TAB)
                    return str(driver.switch_to.active_element.get_attribute("data-tile"))

                focused = await asyncio.to_thread(focus_a_tile)
                assert focused == "an-0"
                sim = lab.analyzer("an-0", messages=2)
                await sim.run(asyncio.Event())  # its state changes: the page updates around the focused tile

                def still_focused() -> str:
                    WebDriverWait(driver, 30).until(
                        lambda d: d.find_element(By.CSS_SELECTOR, "[data-tile='an-0']").get_attribute("data-state")
                        in ("up", "idle"))
                    active = driver.switch_to.active_element
                    assert active.get_attribute("data-tile") == "an-0"
                    assert driver.execute_script("return getComputedStyle(arguments[0]).outlineStyle", active) != "none"
                    return str(active.get_attribute("data-state"))

                assert await asyncio.to_thread(still_focused) in ("up", "idle")

                def enter_opens_the_instrument_page() -> None:
                    driver.switch_to.active_element.send_keys(Keys.ENTER)
                    WebDriverWait(driver, 30).until(lambda d: "an-0" in d.find_element(By.ID, "title").text)
                    driver.back()
                    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-live='open']"))

                await asyncio.to_thread(enter_opens_the_instrument_page)

            def lost() -> str:  # the daemon stopped: said in words, not only by a color
                WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-live='lost']"))
                WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed())
                assert "connection lost" in driver.find_element(By.ID, "live").text
                return str(driver.find_element(By.ID, "error").text)

            assert "Connection lost" in await asyncio.to_thread(lost)

    run(body(), timeout=120)
