"""Open a report page in a real headless Chromium: what it shows, logs and requests, and a screenshot.

Used by scripts/report-screenshot.py beside it (the README's picture) and by
tests/pipeline/test_report.py, so the picture is taken the way the test looks at the page; it
lives here, not under tests/, so the script imports nothing from the tests. Debian's ``chromium``
and ``chromium-driver`` (``scripts/setup.sh dev`` installs them as root); Selenium drives them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = ("summary", "plots", "lowest", "embedding", "failed-rows")
WIDTH = 1320  # CSS pixels: the page's max width, so the screenshot has no empty margins


def browser_missing() -> str | None:
    """Why no browser can be driven here (None: one can)."""
    missing = [name for name in ("chromium", "chromedriver") if not shutil.which(name)]
    if missing:
        names = " and ".join(missing)
        return f"{names} not on PATH: scripts/setup.sh dev installs Debian's chromium and chromium-driver"
    return None


@dataclass
class Visit:
    """What the page did in the browser."""

    console: list[dict[str, object]] = field(default_factory=list)  # every console message
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    sections: dict[str, str] = field(default_factory=dict)  # section id: its visible text
    images: int = 0
    broken_images: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[dict[str, object]]:
        """Console messages at error level (script errors, CSP violations, failed loads)."""
        return [entry for entry in self.console if entry.get("level") == "SEVERE"]


def visit(page: Path, screenshot: Path | None = None) -> Visit:
    """Load ``page`` (a local file), read what it shows and logs, and save a full-page PNG."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for argument in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},900",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        driver.get(page.resolve().as_uri())
        found = Visit(console=driver.get_log("browser"))
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                found.requests.append(message["params"]["request"]["url"])
        for section in driver.find_elements(By.TAG_NAME, "section"):
            found.sections[section.get_attribute("id") or ""] = section.text
        images = driver.find_elements(By.TAG_NAME, "img")
        found.images = len(images)
        found.broken_images = [
            str(image.get_attribute("alt"))
            for image in images
            if not driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", image
            )
        ]
        if screenshot is not None:
            shot = driver.execute_cdp_cmd(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True, "fromSurface": True},
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return found
    finally:
        driver.quit()
