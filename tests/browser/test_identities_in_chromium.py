"""Playwright in headless Chromium: an admin gives a mailbox an extra identity on its page, and
the owner switches it off in /account/identities."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AdminUser, AuditEvent, Identity
from provider.services import identities
from tests.browser.conftest import BrowserPage
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, MAILBOX_PASSWORD, make_mailbox


def test_admin_adds_an_identity_and_the_owner_switches_it_off(
    admin: AdminUser, session: Session, live_server: str, chromium_page: BrowserPage
) -> None:
    from playwright.sync_api import expect

    alice = make_mailbox(session, "alice@shop.test")
    page = chromium_page.page

    page.goto(f"{live_server}/admin/login")
    page.get_by_label("E-mail").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server}/admin/")

    page.goto(f"{live_server}/admin/mailboxes/{alice.id}")
    section = page.locator("#identities")
    # A refused address comes back with the message next to the field.
    section.get_by_label("Identity address").fill("someone@elsewhere.test")
    section.get_by_role("button", name="Add identity").click()
    expect(page.locator("#identity-address-errors")).to_contain_text("not hosted here")

    section = page.locator("#identities")
    section.get_by_label("Identity address").fill("team@shop.test")
    section.get_by_label("Display name").fill("Shop Team")
    section.get_by_role("button", name="Add identity").click()
    expect(page.locator(".flash-success")).to_contain_text(
        "alice@shop.test may now send as team@shop.test."
    )
    expect(page.locator('#identities li[data-kind="identity"]')).to_contain_text("team@shop.test")
    expect(page.locator('#identities li[data-kind="identity"]')).to_contain_text("Shop Team")
    session.expire_all()
    assert identities.may_send_as(session, alice, "team@shop.test")

    # The owner, in the same browser (the two portals have separate sessions).
    page.goto(f"{live_server}/account/login")
    page.get_by_label("E-mail address").fill("alice@shop.test")
    page.get_by_label("Password").fill(MAILBOX_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server}/account/")
    page.get_by_role("link", name="Sender addresses").first.click()
    expect(page).to_have_url(f"{live_server}/account/identities")
    expect(page.locator("#sender-addresses")).to_contain_text("team@shop.test")

    form = page.locator('form[data-address="team@shop.test"]')
    checkbox = form.get_by_label("Use this address")
    expect(checkbox).to_be_checked()
    checkbox.uncheck()
    form.get_by_role("button", name="Save").click()
    expect(page.locator(".flash-success")).to_contain_text("team@shop.test saved: switched off.")
    expect(
        page.locator('form[data-address="team@shop.test"]').get_by_label("Use this address")
    ).not_to_be_checked()
    expect(page.locator("#sender-addresses")).not_to_contain_text("team@shop.test")
    assert chromium_page.console_errors == []

    session.expire_all()
    identity = session.scalar(select(Identity).where(Identity.address == "team@shop.test"))
    assert identity is not None and identity.enabled is False
    assert not identities.may_send_as(session, alice, "team@shop.test")
    actors = session.scalars(
        select(AuditEvent.actor).where(AuditEvent.action.like("identity.%")).order_by(AuditEvent.id)
    ).all()
    assert actors == [f"admin:{ADMIN_EMAIL}", "mailbox:alice@shop.test"]
