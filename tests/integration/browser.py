"""Debian's Chromium, headless, driven through chromedriver by Selenium, for the UI's tests.

The browser is the machine's (``/usr/bin/chromium`` and ``/usr/bin/chromedriver``, the Debian
packages ``chromium`` and ``chromium-driver``; ``scripts/test.sh`` installs them as root where
they are missing). A machine without them fails the test with what to install: it is never
skipped. Chromium starts with a fresh profile and without its background connections (to
Google's hosts), which a closed network refuses.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


def _found(path: str, name: str) -> str:
    located = path if Path(path).is_file() else shutil.which(name)
    if located is None:
        pytest.fail(
            f"{name} is not installed: the UI's browser tests need Debian's chromium and "
            "chromium-driver packages (`apt-get install -y chromium chromium-driver`; "
            "scripts/test.sh installs them when it runs as root)",
            pytrace=False,
        )
    return located


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium whose console is kept (read it with :func:`console_errors`)."""
    options = webdriver.ChromeOptions()
    options.binary_location = _found(CHROMIUM, "chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(_found(CHROMEDRIVER, "chromedriver"))
    )
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console's errors since the last call (failed loads, exceptions, ``console.error``)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
