"""The time machine as a newcomer meets it: found from the navigation, a snapshot taken on
request (owners within an hourly allowance), what is gone marked, filtered and restored."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Mailbox
from provider.services import backups, clock
from provider.services.storage import mail_store
from tests.conftest import ADMIN_EMAIL, MAILBOX_PASSWORD, make_mailbox
from tests.web.conftest import count
from tests.web.test_account import account_login
from tests.web.timemachine_helpers import (
    deliver,
    expunge,
    folder_bodies,
    mail,
    snapshot,
    text,
)


def base(mailbox: Mailbox) -> str:
    return f"/admin/mailboxes/{mailbox.id}/backups"


def _snapshot_events(session: Session) -> list[AuditEvent]:
    session.expire_all()
    query = select(AuditEvent).where(AuditEvent.action == backups.SNAPSHOT_TAKEN)
    return list(session.scalars(query))


# --- finding it ---------------------------------------------------------------------------


def test_the_admin_navigation_leads_to_a_mailbox_search_with_snapshot_counts(
    logged_in: FlaskClient, session: Session
):
    alice = make_mailbox(session, "alice@example.test")
    make_mailbox(session, "bob@example.test")
    pop = make_mailbox(session, "pop@example.test", protocols="pop3")
    deliver(session, alice, [mail("One")])
    snapshot(session, alice)
    snapshot(session, alice)
    home = text(logged_in.get("/admin/"))
    assert 'href="/admin/backups">Time machine</a>' in home
    html = text(logged_in.get("/admin/backups?q=alice"))
    assert 'data-address="alice@example.test"' in html
    assert 'data-address="bob@example.test"' not in html
    row = re.search(r'<tr data-address="alice@example.test">(.*?)</tr>', html, re.S)
    assert row and '<td class="num">2</td>' in row.group(1)
    assert f'href="{base(alice)}"' in row.group(1)
    everyone = text(logged_in.get("/admin/backups"))
    pop_row = re.search(r'<tr data-address="pop@example.test">(.*?)</tr>', everyone, re.S)
    assert pop_row and "not backed up (POP3 only)" in pop_row.group(1)
    assert f'href="{base(pop)}"' not in pop_row.group(1)
    assert "No mailbox matches" in text(logged_in.get("/admin/backups?q=nobody"))


def test_a_domain_admin_finds_only_the_mailboxes_of_their_domains(
    client: FlaskClient, session: Session, domain_admin, tenants
):
    from tests.conftest import login
    from tests.web.conftest import DOMAIN_ADMIN_EMAIL

    make_mailbox(session, "me@mine.test")
    make_mailbox(session, "them@other.test")
    login(client, DOMAIN_ADMIN_EMAIL)
    html = text(client.get("/admin/backups"))
    assert "me@mine.test" in html and "them@other.test" not in html


def test_account_navigation_has_backups_for_imap_mailboxes_only(
    client: FlaskClient, session: Session
):
    make_mailbox(session, "imap@example.test")
    make_mailbox(session, "pop@example.test", protocols="pop3")
    account_login(client, "imap@example.test")
    html = text(client.get("/account/"))
    assert 'href="/account/backups">Backups</a>' in html and "Open backups" in html
    client.post("/account/logout")
    account_login(client, "pop@example.test")
    html = text(client.get("/account/"))
    assert "/account/backups" not in html and "Open backups" not in html
    assert ">Backups</a>" not in html
    assert "not backed up" in html
    assert "/account/backups" not in text(client.get("/account/identities"))


# --- taking a snapshot now ------------------------------------------------------------------


def test_an_admin_takes_the_first_snapshot_now_and_it_is_audited(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, [mail("Hello")])
    html = text(logged_in.get(base(mailbox)))
    assert "No snapshot yet: the first one is taken at the next nightly backup" in html
    assert f'action="{base(mailbox)}/snapshot"' in html and "Take a snapshot now" in html
    response = logged_in.post(f"{base(mailbox)}/snapshot")
    [row] = backups.list_snapshots(session, mailbox.address)
    assert response.status_code == 302
    assert response.location.endswith(f"{base(mailbox)}/{row.snapshot_id}")
    assert row.messages == 1
    assert "Snapshot taken: 1 message." in text(logged_in.get(response.location))
    [event] = _snapshot_events(session)
    assert event.actor == f"admin:{ADMIN_EMAIL}" and event.target == mailbox.address
    assert event.after["snapshot"] == row.snapshot_id and event.domain == "example.test"


def test_a_pop3_only_mailbox_offers_no_snapshot_and_refuses_one(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session, protocols="pop3")
    html = text(logged_in.get(base(mailbox)))
    assert "Take a snapshot now" not in html and "uses POP3 only" in html
    response = logged_in.post(f"{base(mailbox)}/snapshot", follow_redirects=True)
    assert "uses POP3 only" in text(response)
    assert backups.list_snapshots(session, mailbox.address) == []
    assert _snapshot_events(session) == []


@pytest.fixture
def two_an_hour(app_config: dict) -> dict:
    app_config["BACKUP_OWNER_SNAPSHOTS_PER_HOUR"] = 2
    return app_config


def test_an_owner_takes_snapshots_within_the_hourly_allowance(
    two_an_hour: dict, client: FlaskClient, session: Session
):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, [mail("Hello")])
    account_login(client, mailbox.address)
    html = text(client.get("/account/backups"))
    assert "You can take up to 2 snapshots an hour yourself (2 left in this hour)" in html
    start = clock.now()
    with clock.frozen_at(start):
        assert client.post("/account/backups/snapshot").status_code == 302
    with clock.frozen_at(start + timedelta(minutes=10)):
        assert client.post("/account/backups/snapshot").status_code == 302
    with clock.frozen_at(start + timedelta(minutes=20)):
        html = text(client.get("/account/backups"))
        assert "(0 left in this hour)" in html
        assert re.search(r"<button[^>]*disabled[^>]*>Take a snapshot now", html)
        refused = client.post("/account/backups/snapshot", follow_redirects=True)
    assert "At most 2 snapshots an hour" in text(refused)
    assert f"taken at {start + timedelta(hours=1):%H:%M} UTC" in text(refused)
    assert len(backups.list_snapshots(session, mailbox.address)) == 2
    owner_events = _snapshot_events(session)
    assert [e.actor for e in owner_events] == [f"mailbox:{mailbox.address}"] * 2
    with clock.frozen_at(start + timedelta(minutes=61)):
        assert client.post("/account/backups/snapshot").status_code == 302
    assert len(backups.list_snapshots(session, mailbox.address)) == 3


def test_the_snapshot_form_needs_a_csrf_token(csrf_on: dict, client: FlaskClient, session):
    from tests.web.timemachine_helpers import csrf_token

    mailbox = make_mailbox(session)
    token = csrf_token(text(client.get("/account/login")))
    client.post(
        "/account/login",
        data={"email": mailbox.address, "password": MAILBOX_PASSWORD, "csrf_token": token},
    )
    page = text(client.get("/account/backups"))
    client.post("/account/backups/snapshot")
    assert backups.list_snapshots(session, mailbox.address) == []
    client.post("/account/backups/snapshot", data={"csrf_token": csrf_token(page)})
    assert len(backups.list_snapshots(session, mailbox.address)) == 1


@pytest.fixture
def csrf_on(app_config: dict) -> dict:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


# --- what is gone -------------------------------------------------------------------------


@pytest.fixture
def lost_two(session: Session) -> tuple[Mailbox, str, list[int]]:
    """Four messages in INBOX and one in Work, snapshotted; then two INBOX messages and the
    Work one are deleted from the mailbox."""
    mailbox = make_mailbox(session)
    uids = deliver(
        session, mailbox, [mail("Keep one"), mail("Lost one"), mail("Keep two"), mail("Lost two")]
    )
    [work] = deliver(session, mailbox, [mail("Lost work")], folder="Work")
    snapshot_id = snapshot(session, mailbox)
    expunge(session, mailbox, [uids[1], uids[3]])
    expunge(session, mailbox, [work], folder="Work")
    return mailbox, snapshot_id, uids


def _rows(html: str) -> dict[str, str]:
    """Subject → the row's HTML, for every message row on the page."""
    rows = {}
    for row in re.findall(r"<tr[^>]*>\s*(?:<td.*?</tr>)", html, re.S):
        subject = re.search(r'<td class="subject"><a [^>]*>([^<]*)</a>', row)
        if subject:
            rows[subject.group(1)] = row
    return rows


def test_messages_not_in_the_mailbox_now_are_marked(logged_in: FlaskClient, lost_two):
    mailbox, snapshot_id, _ = lost_two
    html = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}"))
    rows = _rows(html)
    assert set(rows) == {"Keep one", "Lost one", "Keep two", "Lost two"}
    for subject, row in rows.items():
        assert ("not in the mailbox now" in row) == subject.startswith("Lost"), subject
    assert "<strong>3 messages</strong> of this snapshot are not in the mailbox now" in html
    # A moved message is not gone: the same content elsewhere in the mailbox counts.
    assert 'id="only-gone"' in html


def test_only_what_is_gone_then_restore_brings_back_exactly_that(
    logged_in: FlaskClient, lost_two, session: Session
):
    mailbox, snapshot_id, _ = lost_two
    page = f"{base(mailbox)}/{snapshot_id}"
    first = text(logged_in.get(page))
    link = re.search(r'<a class="button" id="only-gone" href="([^"]+)"', first)
    assert link
    html = text(logged_in.get(link.group(1).replace("&amp;", "&")))
    assert set(_rows(html)) == {"Lost one", "Lost two", "Lost work"}
    button = re.search(r'<input[^>]*id="restore-gone"[^>]*>', html)
    assert button and 'name="restore_mailbox"' in button.group(0)
    assert 'value="Restore the 3 gone messages"' in button.group(0)
    response = logged_in.post(
        f"{page}/restore", data={"folder": "*", "restore_mailbox": "Restore the 3 gone messages"}
    )
    assert response.status_code == 302
    assert "Restored 3 messages" in text(logged_in.get(response.location))
    assert sorted(folder_bodies(mailbox)) == sorted(
        [mail("Keep one"), mail("Lost one"), mail("Keep two"), mail("Lost two")]
    )
    assert folder_bodies(mailbox, "Work") == [mail("Lost work")]
    after = text(logged_in.get(page))
    assert "Every message of this snapshot is still in the mailbox." in after
    assert "not in the mailbox now</span>" not in after
    gone_again = text(logged_in.get(f"{page}?folder=*&gone=y"))
    assert "Nothing here is gone" in gone_again and 'id="restore-gone"' not in gone_again


def test_the_gone_filter_keeps_to_a_folder_and_restores_that_folder(
    logged_in: FlaskClient, lost_two
):
    mailbox, snapshot_id, _ = lost_two
    html = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}?folder=INBOX&gone=y"))
    assert set(_rows(html)) == {"Lost one", "Lost two"}
    button = re.search(r'<input[^>]*id="restore-gone"[^>]*>', html)
    assert button and 'name="restore_folder"' in button.group(0)
    assert "Restore the 2 gone messages of INBOX" in button.group(0)


def test_the_message_page_says_whether_the_mailbox_still_has_it(logged_in: FlaskClient, lost_two):
    mailbox, snapshot_id, uids = lost_two
    kept = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}/messages/{uids[0]}"))
    lost = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}/messages/{uids[1]}"))
    assert "not in the mailbox now" not in kept
    assert "not in the mailbox now" in lost


def test_flags_read_as_words_a_person_understands(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, [mail("Read flagged answered")], flags=["\\Seen", "\\Flagged"])
    deliver(session, mailbox, [mail("Fresh")])
    inbox = mail_store().open(mailbox.address).folder("INBOX")
    inbox.change_flags(inbox.messages()[0].uid, "add", ["\\Answered"], ["old"])
    snapshot_id = snapshot(session, mailbox)
    rows = _rows(text(logged_in.get(f"{base(mailbox)}/{snapshot_id}")))
    done = rows["Read flagged answered"]
    assert ">read<" in done and ">flagged<" in done and ">answered<" in done
    assert ">unread<" not in done and ">old<" not in done and "Seen" not in done
    fresh = rows["Fresh"]
    assert ">unread<" in fresh and ">flagged<" not in fresh and ">answered<" not in fresh
    assert count(session, Mailbox) == 1
