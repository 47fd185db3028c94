"""Regenerate the dashboard's screenshots in docs/screenshots/ from the real demo:
``.venv/bin/python -m tests.screenshots`` (needs Debian's chromium and chromedriver, as the browser tests).

It starts the demo (config/demo.toml) on a free loopback port, lets it run until the campaign has
reference values to compare, and saves: the overview (group strip and site cards) on a desktop and on a
phone, a validating instrument's page (timeline, counters, validation and sign-off) and the campaign page.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from labbridge import aio
from tests.integration.browser import chromium, demo_lab, full_height

OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
WARM_UP_S = 25.0  # traffic, stages moving by themselves, reference values imported by the demo
VALIDATING = "virton-hema-1"


def shoot(base: str) -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    for name, path, width, height in (("overview.png", "/", 1440, 900), ("overview-phone.png", "/", 390, 844),
                                      ("instrument.png", f"/instruments/{VALIDATING}", 1440, 900),
                                      ("campaign.png", "/campaign", 1280, 900)):
        with chromium(width, height) as driver:
            driver.get(base + path)
            if path == "/":
                WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-live='open']"))
                WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "article[data-instrument]"))
            elif path.startswith("/instruments/"):
                WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .seg"))
                WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-validation]"))
                driver.find_element(By.CSS_SELECTOR, "button[data-hours='1']").click()
            time.sleep(1.0)  # let the last render settle (only for pictures; no test waits like this)
            if name != "overview-phone.png":
                full_height(driver, width)
            target = OUT / name
            driver.save_screenshot(str(target))
            saved.append(target)
    return saved


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="labbridge-shots-") as store:
        async with demo_lab(Path(store)) as (_controls, base):
            await asyncio.sleep(WARM_UP_S)
            for path in await asyncio.to_thread(shoot, base):
                print(path)


if __name__ == "__main__":
    aio.run(main())
