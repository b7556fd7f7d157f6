"""Browser fixtures: the real web server (waitress, port 0) and headless Chromium, driven by
Selenium (`browser`) or by Playwright for Python (`chromium_page`, screenshot kept on failure)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from waitress.server import create_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Playwright drives Debian's Chromium (`.ci/run` installs it); `playwright install` is not used.
PLAYWRIGHT_CHROMIUM = "/usr/bin/chromium"
# Screenshots of failed Playwright tests (ignored by git; CI can keep the directory).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _missing_browser(reason: str) -> None:
    """Skip locally; fail under PROVIDER_REQUIRE_BROWSER=1 (CI), where a skip would hide it."""
    if os.environ.get("PROVIDER_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


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


@dataclass
class BrowserPage:
    """A Playwright page and the script errors and CSP violations it reported."""

    page: Any  # playwright.sync_api.Page (imported only when the browser is there)
    console_errors: list[str] = field(default_factory=list)


@pytest.fixture
def chromium_page(request: pytest.FixtureRequest) -> Iterator[BrowserPage]:
    """A Playwright page in headless Debian Chromium. When the test fails, a full-page
    screenshot goes to test-artifacts/ and its path into the failure report."""
    if not os.access(PLAYWRIGHT_CHROMIUM, os.X_OK):
        _missing_browser(f"{PLAYWRIGHT_CHROMIUM} is required (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing_browser("playwright is required (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=PLAYWRIGHT_CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(15000)
            page = context.new_page()
            wrapped = BrowserPage(page)
            page.on(
                "console",
                lambda message: (
                    wrapped.console_errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: wrapped.console_errors.append(str(error)))
            request.node.playwright_page = page
            yield wrapped
        finally:
            request.node.playwright_page = None
            browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failed Playwright test, keep a screenshot of the page and name it in the failure
    report (taken here, before the page fixture is torn down)."""
    report = yield
    page = getattr(item, "playwright_page", None)
    if report.when != "call" or not report.failed or page is None:
        return report
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid) + ".png")
    try:
        page.screenshot(path=str(path), full_page=True)
        note = f"screenshot of the page at the failure: {path} (URL {page.url})"
    except Exception as exc:  # the browser may be what failed; say so instead
        note = f"no screenshot could be taken: {exc!r}"
    if hasattr(report.longrepr, "addsection"):
        report.longrepr.addsection("Playwright screenshot", note)
    else:
        report.sections.append(("Playwright screenshot", note))
    return report
