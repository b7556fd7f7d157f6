"""Playwright in Debian's headless Chromium: an admin turns on two-factor login from the secret
the page shows (and its QR code holds), logs out, logs in with a TOTP code, then with a
recovery code, which then stops working."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
import segno
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AdminUser, AuditEvent
from provider.services import clock, two_factor
from tests.browser.conftest import BrowserPage
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

# The server thread reads the same clock: frozen on a step boundary, moved a step at a time,
# so a code is never refused for having been used already by the step before.
START = datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)
STEP = timedelta(seconds=30)


@pytest.fixture(autouse=True)
def frozen_clock() -> Iterator[None]:
    clock.set_now(START)
    yield
    clock.set_now(None)


def test_admin_turns_on_two_factor_and_logs_in_with_a_code_then_a_recovery_code(
    admin: AdminUser, session: Session, live_server: str, chromium_page: BrowserPage
) -> None:
    from playwright.sync_api import expect

    page = chromium_page.page

    def log_in() -> None:
        page.goto(f"{live_server}/admin/login")
        page.get_by_label("E-mail").fill(ADMIN_EMAIL)
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()

    def log_out() -> None:
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(f"{live_server}/admin/login")

    log_in()
    expect(page).to_have_url(f"{live_server}/admin/")
    page.get_by_role("link", name="Two-factor login").click()
    expect(page).to_have_url(f"{live_server}/admin/two-factor")

    secret = page.locator("#totp-secret").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret
    qr = page.get_by_role("img", name="QR code to scan")
    expect(qr).to_be_visible()
    box = qr.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100
    # The QR code drawn in the page holds exactly the otpauth URI of the secret shown.
    uri = pyotp.TOTP(secret).provisioning_uri(name=ADMIN_EMAIL, issuer_name=two_factor.ISSUER)
    expected_path = re.search(r' d="([^"]+)"', segno.make(uri, error="m").svg_inline(scale=4))
    assert expected_path is not None
    assert qr.locator("path.qrline").get_attribute("d") == expected_path.group(1)

    page.get_by_label("Code from your authenticator app").fill(pyotp.TOTP(secret).at(clock.now()))
    page.get_by_role("button", name="Turn on two-factor login").click()
    expect(page.locator("#two-factor-state")).to_have_text("on")
    recovery_codes = page.locator("#recovery-codes code").all_inner_texts()
    assert len(recovery_codes) == 10
    log_out()

    clock.set_now(START + STEP)
    log_in()
    expect(page).to_have_url(f"{live_server}/admin/login/two-factor")
    page.get_by_label("Code from your authenticator app").fill(pyotp.TOTP(secret).at(clock.now()))
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{live_server}/admin/")
    expect(page.locator(".whoami-email")).to_contain_text(ADMIN_EMAIL)
    log_out()

    log_in()
    page.get_by_label("Code from your authenticator app").fill(recovery_codes[0])
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{live_server}/admin/")
    expect(page.get_by_role("status").filter(has_text="9 left")).to_be_visible()
    log_out()

    log_in()
    page.get_by_label("Code from your authenticator app").fill(recovery_codes[0])
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text("not right")
    expect(page).to_have_url(f"{live_server}/admin/login/two-factor")
    page.goto(f"{live_server}/admin/")
    expect(page).to_have_url(re.compile(re.escape(f"{live_server}/admin/login")))
    assert chromium_page.console_errors == []

    session.expire_all()
    actions = [
        event.action
        for event in session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("admin.2fa%")).order_by(AuditEvent.id)
        )
    ]
    assert actions == ["admin.2fa_enable", "admin.2fa_recovery_used", "admin.2fa_failed"]
