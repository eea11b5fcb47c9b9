"""A real browser for the dashboard's tests: Debian's headless Chromium, driven through
Debian's chromedriver by Selenium.

Both paths are given to Selenium and ``SE_OFFLINE`` is set, so Selenium Manager never
looks for (or downloads) a browser or a driver: these machines have no internet.
``scripts/setup.sh`` installs the two packages.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support import api
from tests.support.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LAPTOP = (1280, 900)
PHONE = (390, 844)


@contextmanager
def chromium(*, size: tuple[int, int] = LAPTOP) -> Iterator[WebDriver]:
    """A headless Chromium with a profile of its own, quit and removed after."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise AssertionError(f"{path} is missing: run scripts/setup.sh (chromium packages)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download anything
    profile = tempfile.mkdtemp(prefix="cube-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Dashboard:
    """The dashboard of the manager at ``manager_url``, seen through ``driver``."""

    driver: WebDriver
    manager_url: str

    @property
    def base(self) -> str:
        return f"{self.manager_url}/ui"

    def open(self, path: str) -> None:
        self.driver.get(f"{self.base}{path}")

    def login(self, token: str = api.TOKEN, *, path: str = "/") -> None:
        self.open(f"/login?next=/ui{path}")
        self.submit_token(token)
        wait_for(lambda: "/login" not in self.driver.current_url, what="the login to go through")

    def submit_token(self, token: str) -> None:
        field = self.driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, ".login button[type=submit]").click()

    def text(self, css: str) -> str:
        """The text of the first element matching ``css``; "" while there is none."""
        try:
            return str(self.driver.find_element(By.CSS_SELECTOR, css).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return ""

    def wait_text(self, css: str, wanted: str, *, timeout: float = 30.0) -> str:
        """Wait until ``css`` shows ``wanted`` (as the page's script refreshes it)."""
        return str(
            wait_for(
                lambda: wanted in (t := self.text(css)) and t,
                timeout=timeout,
                what=f"{css!r} to show {wanted!r} (page: {self.driver.current_url})",
            )
        )

    def click(self, css: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, css).click()

    def mark(self) -> None:
        """Set a mark in this page's window: a reload or a navigation drops it."""
        self.driver.execute_script("window.cubeTestMark = 'still here'")

    def marked(self) -> bool:
        return bool(self.driver.execute_script("return window.cubeTestMark === 'still here'"))

    def screenshot(self, name: str) -> None:
        """Saved under $CUBE_UI_SCREENSHOTS (scripts/ui-screenshots.sh sets it) if set."""
        where = os.environ.get("CUBE_UI_SCREENSHOTS")
        if not where:
            return
        Path(where).mkdir(parents=True, exist_ok=True)
        # The whole page, not only what the window shows: a viewport as tall as the page, for
        # the time of one capture (Chromium's DevTools protocol, as Puppeteer does it).
        cdp = self.driver.execute_cdp_cmd  # type: ignore[attr-defined]
        width, height = self.driver.execute_script(
            "return [window.innerWidth, document.documentElement.scrollHeight]"
        )
        metrics = {"width": width, "height": min(height, 4000), "deviceScaleFactor": 1}
        cdp("Emulation.setDeviceMetricsOverride", {**metrics, "mobile": False})
        try:
            shot = cdp("Page.captureScreenshot", {"format": "png"})
        finally:
            cdp("Emulation.clearDeviceMetricsOverride", {})
        (Path(where) / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
