"""The status page and JSON API, read by a real headless Chromium (selenium, tests/integration/browser.py)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
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
