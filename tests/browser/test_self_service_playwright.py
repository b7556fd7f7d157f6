"""Playwright in Debian's headless Chromium: an admin creates a mailbox; a customer signs up for
a trial, sees the client settings, finds the trial and the usage bar on /account, asks for an
upgrade and changes the password."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AdminUser, AuditEvent, Mailbox
from provider.services.auth import verify_password
from tests.browser.conftest import BrowserPage
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, make_domain

PASSPHRASE = "correct horse battery staple"
NEW_PASSPHRASE = "a different long passphrase"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        PUBLIC_IMAP_HOST="imap.provider.test",
        PUBLIC_SMTP_HOST="smtp.provider.test",
        TRIAL_DAYS=30,
        TRIAL_QUOTA_GB=8,
    )
    return app_config


def test_admin_logs_in_and_creates_a_mailbox(
    admin: AdminUser, session: Session, live_server: str, chromium_page: BrowserPage
) -> None:
    from playwright.sync_api import expect

    page = chromium_page.page
    page.goto(f"{live_server}/admin/login")
    page.get_by_label("E-mail").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server}/admin/")

    page.goto(f"{live_server}/admin/domains")
    page.get_by_label("Domain name").fill("shop.test")
    page.get_by_role("button", name="Add domain").click()
    expect(page.get_by_role("cell", name="shop.test", exact=True)).to_be_visible()

    page.goto(f"{live_server}/admin/mailboxes/new")
    page.get_by_label("Address", exact=True).fill("carol")
    page.get_by_label("Password", exact=True).fill(PASSPHRASE)
    page.get_by_label("Repeat the password").fill(PASSPHRASE)
    page.get_by_label("Quota (GB)").fill("12.5")
    page.get_by_role("radio", name=re.compile(r"^IMAP and POP3")).check()
    page.get_by_role("button", name="Create mailbox").click()
    expect(page.get_by_role("heading", name="carol@shop.test")).to_be_visible()
    expect(page.locator("meter").first).to_be_visible()
    assert chromium_page.console_errors == []

    session.expire_all()
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == "carol@shop.test"))
    assert mailbox is not None
    assert mailbox.quota_bytes == int(12.5 * 1024**3) and mailbox.protocols == ["imap", "pop3"]


def test_customer_signs_up_sees_the_settings_and_the_trial_on_account(
    session: Session, live_server: str, chromium_page: BrowserPage
) -> None:
    from playwright.sync_api import expect

    make_domain(session, "open.test", signup_enabled=True)
    page = chromium_page.page
    page.goto(f"{live_server}/signup")
    expect(page.get_by_role("heading", name="Try a mailbox free for 30 days")).to_be_visible()
    page.get_by_label("Address", exact=True).fill("dana")
    page.get_by_label("Domain").select_option("open.test")
    page.get_by_label("Password", exact=True).fill(PASSPHRASE)
    page.get_by_label("Repeat the password").fill(PASSPHRASE)
    page.get_by_label("Your current e-mail address").fill("dana@elsewhere.test")
    page.get_by_role("radio", name=re.compile(r"^IMAP")).check()
    terms = page.get_by_role("link", name="terms of service")
    expect(terms).to_have_attribute("href", "/terms")
    page.get_by_role("checkbox", name=re.compile("I accept the terms")).check()
    page.get_by_role("button", name="Create my trial mailbox").click()

    expect(page).to_have_url(f"{live_server}/signup/done")
    expect(page.locator("#signup-address")).to_have_text("dana@open.test")
    imap = page.locator("#client-settings tr[data-protocol=imap] td")
    expect(imap).to_have_text(["IMAP", "imap.provider.test", "1993", "SSL/TLS", "dana@open.test"])
    # No sending server is named while none is served here (PUBLIC_SMTP_PORT unset).
    expect(page.locator("#client-settings tr[data-protocol=smtp]")).to_have_count(0)
    expect(page.locator("#client-settings tr[data-protocol=pop3]")).to_have_count(0)

    page.get_by_role("link", name="Go to your mailbox page").click()
    expect(page).to_have_url(f"{live_server}/account/login")
    page.get_by_label("E-mail address").fill("dana@open.test")
    page.get_by_label("Password").fill(PASSPHRASE)
    page.get_by_role("button", name="Log in").click()

    expect(page).to_have_url(f"{live_server}/account/")
    expect(page.locator("#trial-days-left")).to_have_text("30 days left")
    usage = page.get_by_label("Storage used")  # the meter, found by its label
    expect(usage).to_be_visible()
    expect(usage).to_have_attribute("max", str(8 * 1024**3))
    expect(page.locator("#usage-text")).to_contain_text("of 8 GB")
    expect(page.locator("#client-settings tr[data-protocol=imap] td").nth(1)).to_have_text(
        "imap.provider.test"
    )

    page.get_by_role("button", name="Request an upgrade").click()
    expect(page.get_by_role("status").filter(has_text="upgrade request")).to_be_visible()
    expect(page.locator("#upgrade-requested")).to_be_visible()

    # The password form's user name (for password managers) is there but not shown.
    expect(page.locator("#password input[name=username]")).to_be_hidden()
    page.get_by_label("Current password").fill(PASSPHRASE)
    page.get_by_label("New password", exact=True).fill(NEW_PASSPHRASE)
    page.get_by_label("Repeat the new password").fill(NEW_PASSPHRASE)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status").filter(has_text="password has been changed")).to_be_visible()
    expect(page).to_have_url(f"{live_server}/account/")  # still logged in
    assert chromium_page.console_errors == []

    session.expire_all()
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == "dana@open.test"))
    assert mailbox is not None and mailbox.plan == "trial"
    assert verify_password(mailbox.password_hash, NEW_PASSPHRASE).ok
    requests = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "trial.upgrade_requested")
    ).all()
    assert [event.actor for event in requests] == ["mailbox:dana@open.test"]
