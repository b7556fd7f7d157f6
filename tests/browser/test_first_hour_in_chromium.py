"""Issue 16's "Done when", walked in Debian's headless Chromium (Playwright): the admin finds
the time machine from the navigation, takes a snapshot now, three messages are deleted over
real IMAP, the admin opens the snapshot, keeps only what is gone and restores it (back over
IMAP); a trial customer asks for an upgrade and the admin converts it from the dashboard."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AdminUser, Mailbox, UpgradeRequest
from provider.protocols.server import ProtocolRunner
from tests.browser.conftest import BrowserPage
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, MAILBOX_PASSWORD, make_mailbox
from tests.web.timemachine_helpers import deliver, mail

SUBJECTS = ["Contract signed", "Lunch on Friday", "Invoice 42", "Travel plans", "Team photo"]
DELETED = ["Lunch on Friday", "Invoice 42", "Team photo"]


@pytest.fixture
def imap(app: Flask) -> Iterator[tuple[str, int]]:
    """The real IMAP server on a free port, over the same store as the web app."""
    # Port 0 for both listeners: the SQLite and PostgreSQL runs of CI run side by side.
    app.config.update(IMAP_PORT=0, IMAPS_PORT=0)
    runner = ProtocolRunner(app, ["imap"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound["imap"]
    finally:
        runner.stop()


def _inbox_subjects(address: tuple[str, int], user: str) -> list[str]:
    with imaplib.IMAP4(*address, timeout=10) as connection:
        connection.login(user, MAILBOX_PASSWORD)
        connection.select("INBOX", readonly=True)
        _, data = connection.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        connection.logout()
    headers = [part[1].decode() for part in data if isinstance(part, tuple)]
    return sorted(re.sub(r"^Subject:\s*", "", h.strip(), flags=re.I) for h in headers)


def _delete_over_imap(address: tuple[str, int], user: str, subjects: list[str]) -> None:
    with imaplib.IMAP4(*address, timeout=10) as connection:
        connection.login(user, MAILBOX_PASSWORD)
        connection.select("INBOX")
        for subject in subjects:
            _, found = connection.uid("SEARCH", "SUBJECT", f'"{subject}"')
            [uid] = found[0].split()
            connection.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
        connection.expunge()
        connection.logout()


def _admin_login(page, live_server: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live_server}/admin/login")
    page.get_by_label("E-mail").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server}/admin/")


def test_find_the_time_machine_snapshot_now_delete_over_imap_restore_what_is_gone(
    admin: AdminUser,
    session: Session,
    live_server: str,
    chromium_page: BrowserPage,
    imap: tuple[str, int],
) -> None:
    from playwright.sync_api import expect

    mailbox = make_mailbox(session, "alice@example.test")
    make_mailbox(session, "bob@example.test")
    deliver(session, mailbox, [mail(subject) for subject in SUBJECTS])
    assert _inbox_subjects(imap, mailbox.address) == sorted(SUBJECTS)

    page = chromium_page.page
    _admin_login(page, live_server)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Time machine").click()
    expect(page.get_by_role("heading", name="Time machine")).to_be_visible()
    page.get_by_role("searchbox", name="Mailbox").fill("alice")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("tr[data-address='bob@example.test']")).to_have_count(0)
    page.get_by_role("link", name="Snapshots of alice@example.test").click()
    expect(page.locator("#no-snapshot")).to_contain_text("the first one is taken at the next")

    page.get_by_role("button", name="Take a snapshot now").click()
    expect(page.get_by_role("status").filter(has_text="Snapshot taken: 5 messages")).to_be_visible()
    expect(page.locator("#gone-summary")).to_contain_text("Every message of this snapshot")

    _delete_over_imap(imap, mailbox.address, DELETED)
    assert _inbox_subjects(imap, mailbox.address) == sorted(set(SUBJECTS) - set(DELETED))

    page.get_by_role("link", name="All snapshots").click()
    page.get_by_role("link", name=re.compile("^Browse")).click()
    expect(page.locator("#gone-summary")).to_contain_text("3 messages")
    page.get_by_role("link", name="Only what is gone").click()
    rows = page.locator("table.messages tbody tr")
    expect(rows).to_have_count(3)
    for subject in DELETED:
        row = rows.filter(has_text=subject)
        expect(row).to_contain_text("not in the mailbox now")
    page.get_by_role("button", name="Restore the 3 gone messages").click()
    expect(page.get_by_role("status").filter(has_text="Restored 3 messages")).to_be_visible()
    assert chromium_page.console_errors == []

    assert _inbox_subjects(imap, mailbox.address) == sorted(SUBJECTS)


def test_a_trial_customer_asks_for_an_upgrade_and_the_admin_converts_it_from_the_dashboard(
    admin: AdminUser, session: Session, live_server: str, chromium_page: BrowserPage
) -> None:
    from playwright.sync_api import expect

    tina = make_mailbox(session, "tina@example.test", plan="trial", contact_email="t@else.test")
    page = chromium_page.page
    page.goto(f"{live_server}/account/login")
    page.get_by_label("E-mail address").fill(tina.address)
    page.get_by_label("Password").fill(MAILBOX_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server}/account/")
    page.get_by_role("button", name="Request an upgrade").click()
    expect(page.locator("#upgrade-requested")).to_be_visible()
    page.get_by_role("button", name="Log out").click()

    _admin_login(page, live_server)
    requests = page.locator("#upgrade-requests")
    expect(requests).to_contain_text(tina.address)
    expect(page.locator("#nav-upgrades")).to_have_text("1")
    requests.get_by_role("button", name="Convert to paid").click()
    expect(page.get_by_role("status").filter(has_text="converted to paid")).to_be_visible()
    page.goto(f"{live_server}/admin/")
    expect(page.locator("#upgrade-requests")).to_have_count(0)
    assert chromium_page.console_errors == []

    session.expire_all()
    converted = session.scalar(select(Mailbox).where(Mailbox.address == tina.address))
    assert converted is not None and converted.plan == "paid"
    [request] = session.scalars(select(UpgradeRequest)).all()
    assert request.status == "converted" and request.answered_by == f"admin:{ADMIN_EMAIL}"
