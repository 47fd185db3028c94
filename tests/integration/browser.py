"""A real headless Chromium for the dashboard's tests and screenshots: Debian's /usr/bin/chromium driven by
selenium through Debian's /usr/bin/chromedriver (never a downloaded browser or driver), with its own profile."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from labbridge.demo import DemoControls, default_demo_config, run_demo

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHONE_WIDTH = 500


@contextlib.contextmanager
def chromium(width: int = 1366, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a temporary profile, closed at the end of the block."""
    with tempfile.TemporaryDirectory(prefix="labbridge-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
                     f"--window-size={width},{height}"):
            options.add_argument(flag)
        if width < PHONE_WIDTH:  # a desktop window is never this narrow: emulate a phone's screen
            options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
                "width": width, "height": height, "pixelRatio": 2.0}})
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


@contextlib.asynccontextmanager
async def demo_lab(store_dir: Path) -> AsyncIterator[tuple[DemoControls, str]]:
    """The real demo (config/demo.toml: six sites, their simulated analyzers and LIS) on loopback port 0,
    until the end of the block; yields its controls and the dashboard's base URL."""
    controls = DemoControls()
    task = asyncio.create_task(run_demo(config_path=default_demo_config(), duration=None, http_port=0,
                                        store_dir=store_dir, quiet=True, controls=controls))
    ready = asyncio.create_task(controls.ready.wait())
    await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
        raise RuntimeError("the demo stopped during startup")
    assert controls.daemon is not None and controls.daemon.http_address is not None
    host, port = controls.daemon.http_address
    try:
        yield controls, f"http://{host}:{port}"
    finally:
        controls.finish.set()
        await asyncio.gather(task, return_exceptions=True)


def full_height(driver: webdriver.Chrome, width: int) -> None:
    """Resize the window to the page's whole height (a screenshot of everything)."""
    height: Any = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 20, 6000))
