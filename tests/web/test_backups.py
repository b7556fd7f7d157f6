"""The admin's time machine of a mailbox: list, browse, search, view, .eml, restore, scope."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import BackupRestore, Mailbox
from provider.services import backups
from provider.web.timemachine.message import PARSE_LIMIT, html_to_text, render_message
from tests.conftest import make_mailbox
from tests.web.conftest import count
from tests.web.timemachine_helpers import (
    csrf_token,
    deliver,
    expunge,
    folder_bodies,
    mail,
    on,
    snapshot,
    text,
)


def base(mailbox: Mailbox) -> str:
    return f"/admin/mailboxes/{mailbox.id}/backups"


@pytest.fixture
def stocked(session: Session) -> tuple[Mailbox, str, list[int]]:
    """alice@example.test with three INBOX messages (different subjects, senders, days) and a
    Projects folder with one, snapshotted."""
    mailbox = make_mailbox(session)
    uids = deliver(
        session,
        mailbox,
        [
            mail("Invoice March", "Accounts <billing@shop.example>"),
            mail("Holiday photos", "Carol <carol@example.org>"),
            mail("Meeting notes", "Dave <dave@example.net>"),
        ],
        dates=[on("2026-03-01"), on("2026-06-15"), on("2026-09-30")],
        flags=["\\Seen"],
    )
    deliver(session, mailbox, [mail("Plan for Q4")], folder="Projects")
    return mailbox, snapshot(session, mailbox), uids


def restore(client: FlaskClient, mailbox: Mailbox, snapshot_id: str, **data: Any) -> Any:
    return client.post(f"{base(mailbox)}/{snapshot_id}/restore", data=data)


# --- listing --------------------------------------------------------------------------------


def test_mailbox_page_links_to_its_backups(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session)
    assert f'href="{base(mailbox)}"' in text(logged_in.get(f"/admin/mailboxes/{mailbox.id}"))


def test_snapshot_list_shows_date_messages_size_and_status(
    logged_in: FlaskClient, stocked, session: Session
):
    mailbox, snapshot_id, _ = stocked
    [row] = backups.list_snapshots(session, mailbox.address)
    html = text(logged_in.get(base(mailbox)))
    assert f"{base(mailbox)}/{snapshot_id}" in html
    assert row.created_at.strftime("%Y-%m-%d %H:%M UTC") in html
    assert re.search(r'<td class="num">4</td>', html)
    assert "complete" in html
    assert "Nothing has been restored yet." in html


def test_imap_mailbox_without_snapshots_says_when_the_first_comes(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session)
    html = text(logged_in.get(base(mailbox)))
    assert "No snapshot yet" in html and "not backed up" not in html


def test_pop3_only_mailbox_shows_a_note_instead_of_the_list(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session, "pop@example.test", protocols="pop3")
    html = text(logged_in.get(base(mailbox)))
    assert "This mailbox is not backed up" in html
    assert "uses POP3 only" in html and "leaves the server" in html
    assert "Snapshots</h2>" not in html and "No snapshot yet" not in html


# --- scope ----------------------------------------------------------------------------------


def test_domain_admin_of_another_domain_gets_404_everywhere(
    as_domain_admin: FlaskClient, session: Session, tenants
):
    mailbox = make_mailbox(session, "bob@other.test")
    [uid] = deliver(session, mailbox, [mail("Private")])
    snapshot_id = snapshot(session, mailbox)
    pages = [
        base(mailbox),
        f"{base(mailbox)}/{snapshot_id}",
        f"{base(mailbox)}/{snapshot_id}/messages/{uid}?folder=INBOX",
        f"{base(mailbox)}/{snapshot_id}/messages/{uid}.eml?folder=INBOX",
    ]
    for url in pages:
        response = as_domain_admin.get(url)
        assert response.status_code == 404, url
        assert b"Private" not in response.data
    expunge(session, mailbox, [uid])
    response = restore(as_domain_admin, mailbox, snapshot_id, restore_mailbox="1")
    assert response.status_code == 404
    assert count(session, BackupRestore) == 0
    assert folder_bodies(mailbox) == []


def test_domain_admin_uses_the_backups_of_their_own_domain(
    as_domain_admin: FlaskClient, session: Session, tenants
):
    mailbox = make_mailbox(session, "eve@mine.test")
    deliver(session, mailbox, [mail("Mine")])
    snapshot_id = snapshot(session, mailbox)
    assert as_domain_admin.get(base(mailbox)).status_code == 200
    assert "Mine" in text(as_domain_admin.get(f"{base(mailbox)}/{snapshot_id}"))


def test_a_snapshot_of_another_mailbox_is_404_under_this_one(
    logged_in: FlaskClient, stocked, session
):
    _, snapshot_id, uids = stocked
    other = make_mailbox(session, "other@example.test")
    assert logged_in.get(f"{base(other)}/{snapshot_id}").status_code == 404
    url = f"{base(other)}/{snapshot_id}/messages/{uids[0]}.eml?folder=INBOX"
    assert logged_in.get(url).status_code == 404
    assert logged_in.get(f"{base(other)}/not-a-snapshot").status_code == 404


# --- browsing and search --------------------------------------------------------------------


def test_browsing_shows_a_folder_with_its_messages_newest_first(logged_in: FlaskClient, stocked):
    mailbox, snapshot_id, _ = stocked
    html = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}"))
    assert html.index("Meeting notes") < html.index("Holiday photos") < html.index("Invoice March")
    assert "Plan for Q4" not in html  # another folder
    assert "Projects" in html  # in the folder list
    projects = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}?folder=Projects"))
    assert "Plan for Q4" in projects and "Invoice March" not in projects
    everything = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}?folder=*"))
    assert "Plan for Q4" in everything and "Invoice March" in everything
    assert logged_in.get(f"{base(mailbox)}/{snapshot_id}?folder=Nope").status_code == 404


def _subjects(html: str) -> set[str]:
    subjects = {"Invoice March", "Holiday photos", "Meeting notes", "Plan for Q4"}
    return {subject for subject in subjects if subject in html}


def test_search_by_subject_sender_and_date(logged_in: FlaskClient, stocked):
    mailbox, snapshot_id, _ = stocked
    url = f"{base(mailbox)}/{snapshot_id}"
    assert _subjects(text(logged_in.get(f"{url}?q=invoice"))) == {"Invoice March"}
    assert _subjects(text(logged_in.get(f"{url}?sender=carol@example"))) == {"Holiday photos"}
    assert _subjects(text(logged_in.get(f"{url}?sender=Dave"))) == {"Meeting notes"}
    ranged = text(logged_in.get(f"{url}?since=2026-06-01&until=2026-09-30"))
    assert _subjects(ranged) == {"Holiday photos", "Meeting notes"}
    assert _subjects(text(logged_in.get(f"{url}?until=2026-03-01"))) == {"Invoice March"}
    none = text(logged_in.get(f"{url}?q=invoice&since=2026-04-01"))
    assert _subjects(none) == set() and "No message in this snapshot matches" in none
    everywhere = text(logged_in.get(f"{url}?folder=*&q=plan"))
    assert _subjects(everywhere) == {"Plan for Q4"}


def test_a_bad_date_is_reported_not_crashing(logged_in: FlaskClient, stocked):
    mailbox, snapshot_id, _ = stocked
    response = logged_in.get(f"{base(mailbox)}/{snapshot_id}?since=yesterday")
    assert response.status_code == 200
    assert "Not a valid date value" in text(response)


# --- one message ----------------------------------------------------------------------------


def test_message_page_shows_headers_and_text(logged_in: FlaskClient, stocked):
    mailbox, snapshot_id, uids = stocked
    html = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}/messages/{uids[0]}?folder=INBOX"))
    assert "Invoice March" in html and "billing@shop.example" in html
    assert "Message-ID" in html and "Hello." in html
    assert f"/messages/{uids[0]}.eml?folder=INBOX" in html


def test_html_mail_is_shown_as_text_never_as_html(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session)
    html_mail = (
        b"From: x@example.org\r\nSubject: Fancy\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p{color:red}</style><script>alert(1)</script></head>"
        b"<body><p>Dear <b>customer</b>,</p><p>pay &amp; smile<img src=x onerror=alert(2)>"
        b"</p></body></html>\r\n"
    )
    [uid] = deliver(session, mailbox, [html_mail])
    snapshot_id = snapshot(session, mailbox)
    page = text(logged_in.get(f"{base(mailbox)}/{snapshot_id}/messages/{uid}?folder=INBOX"))
    body = re.search(r'<pre class="message-text">(.*?)</pre>', page, re.S)
    assert body is not None
    assert "Dear customer," in body.group(1) and "pay &amp; smile" in body.group(1)
    assert "<" not in body.group(1) and "alert" not in page and "color:red" not in page
    assert "<script" not in page and "onerror" not in page


def test_eml_download_is_the_stored_message_as_an_attachment(logged_in: FlaskClient, stocked):
    mailbox, snapshot_id, uids = stocked
    response = logged_in.get(f"{base(mailbox)}/{snapshot_id}/messages/{uids[0]}.eml?folder=INBOX")
    assert response.status_code == 200
    assert response.data == mail("Invoice March", "Accounts <billing@shop.example>")
    assert response.mimetype == "message/rfc822"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and 'filename="Invoice March.eml"' in disposition
    assert "no-store" in response.headers["Cache-Control"]
    missing = f"{base(mailbox)}/{snapshot_id}/messages/999.eml?folder=INBOX"
    assert logged_in.get(missing).status_code == 404


def test_html_becomes_readable_text():
    html = "<p>Hello <b>there</b></p><ul><li>one</li><li>two</li></ul><p>a&amp;b<br>c</p>"
    assert html_to_text(html + "<script>evil()</script><style>p{}</style>") == (
        "Hello there\n\n• one\n• two\n\na&b\nc"
    )


def test_render_message_survives_malformed_and_huge_messages():
    broken = render_message(b"Subject: =?bogus?Q?x?=\r\nContent-Type: multipart/mixed\r\n\r\nno")
    assert ("Subject", "=?bogus?Q?x?=") in broken.headers
    huge = render_message(b"Subject: big\r\n\r\n" + b"x" * (PARSE_LIMIT + 10))
    assert huge.truncated and huge.problems
    latin = render_message(
        b"Subject: t\r\nContent-Type: text/plain; charset=unknown-8bit\r\n\r\ncaf\xe9\r\n"
    )
    assert latin.text.startswith("caf")


# --- restore --------------------------------------------------------------------------------


def test_restore_selected_messages_then_already_present(
    logged_in: FlaskClient, stocked, session: Session
):
    mailbox, snapshot_id, uids = stocked
    expunge(session, mailbox, uids[:2])
    response = restore(
        logged_in,
        mailbox,
        snapshot_id,
        folder="INBOX",
        uid=[str(uids[0]), str(uids[1])],
        restore_messages="Restore selected messages",
    )
    assert response.status_code == 302 and response.location.endswith(f"{base(mailbox)}#history")
    page = text(logged_in.get(base(mailbox)))
    assert "Restored 2 messages" in page
    assert len(folder_bodies(mailbox)) == 3
    [row] = backups.restore_history(session, mailbox.address)
    assert (row.scope, row.restored, row.skipped, row.actor) == (
        "messages",
        2,
        0,
        "admin:root@example.com",
    )
    assert "2 messages of" in page  # in the history table

    again = restore(
        logged_in, mailbox, snapshot_id, folder="INBOX", uid=[str(uids[0])], restore_messages="1"
    )
    assert again.status_code == 302
    page = text(logged_in.get(base(mailbox)))
    assert "Nothing to restore: 1 already present in the mailbox was left alone." in page
    assert len(folder_bodies(mailbox)) == 3
    assert count(session, BackupRestore) == 2


def test_restore_a_folder_and_the_whole_mailbox_into_a_folder(
    logged_in: FlaskClient, stocked, session: Session
):
    mailbox, snapshot_id, uids = stocked
    expunge(session, mailbox, [1], folder="Projects")
    response = restore(logged_in, mailbox, snapshot_id, folder="Projects", restore_folder="1")
    assert response.status_code == 302
    assert folder_bodies(mailbox, "Projects") == [mail("Plan for Q4")]
    expunge(session, mailbox, uids)
    response = restore(
        logged_in, mailbox, snapshot_id, folder="INBOX", into="Restored", restore_mailbox="1"
    )
    assert response.status_code == 302
    assert len(folder_bodies(mailbox, "Restored/INBOX")) == 3
    assert folder_bodies(mailbox) == []
    latest = backups.restore_history(session, mailbox.address)[0]
    assert (latest.scope, latest.into_folder, latest.restored) == ("mailbox", "Restored", 3)


def test_restore_without_a_selection_or_with_a_bad_folder_explains(
    logged_in: FlaskClient, stocked, session: Session
):
    mailbox, snapshot_id, _ = stocked
    response = restore(logged_in, mailbox, snapshot_id, folder="INBOX", restore_messages="1")
    assert response.status_code == 200 and "Tick the messages to restore first." in text(response)
    response = restore(
        logged_in, mailbox, snapshot_id, folder="INBOX", into="bad.name", restore_mailbox="1"
    )
    assert response.status_code == 200
    assert re.search(r'id="into-errors">.*?into', text(response), re.S)
    response = restore(logged_in, mailbox, snapshot_id, folder="INBOX")
    assert "Choose what to restore." in text(response)
    assert count(session, BackupRestore) == 0


@pytest.fixture
def small_quota(app_config: dict) -> dict:
    app_config["QUOTA_MIN_GB"] = 0.000001
    return app_config


def test_restore_beyond_the_quota_reports_the_shortfall(
    small_quota: dict, logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session, quota_gb=0.000001)  # 1073 bytes
    messages = [mail(f"Letter {n}", body="x" * 150) for n in range(5)]
    uids = deliver(session, mailbox, messages)
    snapshot_id = snapshot(session, mailbox)
    expunge(session, mailbox, uids)
    deliver(session, mailbox, [mail("Filler", body="y" * 500)])
    response = restore(logged_in, mailbox, snapshot_id, restore_mailbox="1")
    assert response.status_code == 302
    page = text(logged_in.get(base(mailbox)))
    assert re.search(r"\d messages? \([\d.]+ (bytes|KB)\) did not fit in the quota", page)
    assert "Raise the quota or make room, then restore again" in page
    assert "“Letter" in page
    [row] = backups.restore_history(session, mailbox.address)
    assert row.shortfall > 0 and row.restored + row.shortfall == 5
    assert 'class="badge badge-bad">' + str(row.shortfall) in page


@pytest.fixture
def csrf_on(app_config: dict) -> dict:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def test_restore_needs_a_csrf_token(csrf_on: dict, client: FlaskClient, admin, session: Session):
    page = text(client.get("/admin/login"))
    client.post(
        "/admin/login",
        data={
            "email": "root@example.com",
            "password": "correct horse battery staple",
            "csrf_token": csrf_token(page),
        },
    )
    mailbox = make_mailbox(session)
    [uid] = deliver(session, mailbox, [mail("Keep me")])
    snapshot_id = snapshot(session, mailbox)
    expunge(session, mailbox, [uid])
    refused = restore(client, mailbox, snapshot_id, restore_mailbox="1")
    assert refused.status_code == 400
    assert count(session, BackupRestore) == 0 and folder_bodies(mailbox) == []
    token = csrf_token(text(client.get(f"{base(mailbox)}/{snapshot_id}")))
    done = restore(client, mailbox, snapshot_id, restore_mailbox="1", csrf_token=token)
    assert done.status_code == 302 and folder_bodies(mailbox) == [mail("Keep me")]
    assert client.get(f"{base(mailbox)}/{snapshot_id}/restore").status_code == 405


def test_time_machine_pages_have_no_inline_script_or_style(logged_in: FlaskClient, stocked):
    mailbox, snapshot_id, uids = stocked
    for url in (
        base(mailbox),
        f"{base(mailbox)}/{snapshot_id}",
        f"{base(mailbox)}/{snapshot_id}/messages/{uids[0]}?folder=INBOX",
    ):
        html = text(logged_in.get(url))
        assert "<script" not in html and " style=" not in html and "<style" not in html
        assert not re.search(r"\son[a-z]+=", html), url
        # every table header says what it heads
        assert "<th>" not in html


def test_restore_history_is_newest_first(logged_in: FlaskClient, stocked, session: Session):
    mailbox, snapshot_id, _ = stocked
    restore(logged_in, mailbox, snapshot_id, folder="Projects", restore_folder="1")
    restore(logged_in, mailbox, snapshot_id, restore_mailbox="1")
    rows = session.scalars(select(BackupRestore).order_by(BackupRestore.id)).all()
    assert [r.scope for r in rows] == ["folder", "mailbox"]
    page = text(logged_in.get(base(mailbox)))
    assert page.index("Whole mailbox") < page.index("Folder <span")
