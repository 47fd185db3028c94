"""The dashboard with authentication required, in a real headless Chromium: an instrument's page sends the
browser to the login page, the technician signs in, and a retry clicked on the page goes through with the
CSRF token of the session (the page's one sending function) and is audited under the signed-in name, not a
typed one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import run
from tests.integration.browser import chromium
from tests.integration.helpers import eventually, running_lab
from tests.integration.test_security import audit_of, base, cli, secured

pytestmark = pytest.mark.slow

WAIT_S = 60


def test_sign_in_then_retry_from_the_instrument_page_is_audited_under_the_account(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra=secured()) as lab:
            assert await cli("users", "add", "anna", "--role", "technician", "--password-stdin", "--store",
                             lab.config.store.path, stdin="correct horse battery\n", monkeypatch=monkeypatch) == 0
            lab.lis.mode = "AE"  # the LIS refuses: a dead letter to retry from the page
            await lab.analyzer("an-0", messages=1).run(asyncio.Event())
            await eventually(lambda: lab.daemon.relays[0].health.dead_lettered == 1, what="a dead letter")
            lab.lis.mode = "AA"
            url = base(lab)
            with chromium() as driver:
                def sign_in_and_retry() -> None:
                    driver.get(url + "/instruments/an-0")
                    wait = WebDriverWait(driver, WAIT_S)
                    wait.until(lambda d: "/login" in d.current_url)
                    driver.find_element(By.ID, "name").send_keys("anna")
                    driver.find_element(By.ID, "password").send_keys("correct horse battery")
                    driver.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
                    wait.until(lambda d: d.current_url.endswith("/instruments/an-0"))
                    wait.until(lambda d: d.find_element(By.ID, "who-signed").is_displayed())
                    assert "anna (technician)" in driver.find_element(By.ID, "who-name").text
                    assert not driver.find_element(By.ID, "actor").is_displayed()  # no name to type
                    button = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "button[data-retry]"))
                    driver.find_element(By.ID, "retry-reason").send_keys("LIS fixed its test table")
                    button.click()
                    wait.until(lambda d: "Retried" in d.find_element(By.ID, "dead-outcome").text)

                await asyncio.to_thread(sign_in_and_retry)
            await eventually(lambda: lab.daemon.relays[0].health.delivered == 1, what="delivered after the retry")
            retries = [a for a in await audit_of(lab) if a[1] == "retry"]
            assert retries and retries[-1][0] == "anna"

    run(body(), timeout=180)
