"""A real browser for the console's tests: Debian's headless Chromium, driven through its
own chromedriver by Selenium (no browser download: the machine's packages only).

Missing browser: the test fails under CI=true (``.ci/run`` installs ``chromium`` and
``chromium-driver``), and is skipped on a developer's machine without them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir(name: str) -> Path:
    """Where a test keeps what a person would look at (screenshots): TEST_ARTIFACTS_DIR,
    else .cache/test-artifacts, under ``name``."""
    base = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / ".cache" / "test-artifacts")
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _found(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1100) -> Iterator[webdriver.Chrome]:
    browser = os.environ.get("CHROMIUM_PATH") or _found("chromium", "chromium-browser")
    driver = os.environ.get("CHROMEDRIVER_PATH") or _found("chromedriver")
    if browser is None or driver is None:
        missing = "chromium" if browser is None else "chromium-driver (chromedriver)"
        message = f"no {missing}: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()
