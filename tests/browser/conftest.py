"""Browser fixtures: the real web server (waitress, port 0) and headless Chromium via Selenium."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from waitress.server import create_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Browser tests use the real forms, so CSRF protection is on as in production."""
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The app on a real socket (127.0.0.1, any free port), served by waitress like `serve`."""
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Chromium. Skipped where it is not installed, unless PROVIDER_REQUIRE_BROWSER=1."""
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("PROVIDER_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            )
        pytest.skip("chromium/chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
