"""The mailbox owner's portal: login, throttling, sessions apart from the admins', own backups."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from provider.models import BackupRestore, Mailbox
from provider.services import backups, provisioning
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, login, make_mailbox
from tests.web.conftest import count
from tests.web.timemachine_helpers import (
    csrf_token,
    deliver,
    expunge,
    folder_bodies,
    mail,
    snapshot,
    text,
)


def account_login(client: FlaskClient, email: str, password: str = MAILBOX_PASSWORD) -> Any:
    return client.post("/account/login", data={"email": email, "password": password})


@pytest.fixture
def alice(session: Session) -> Mailbox:
    return make_mailbox(session, "alice@example.test")


@pytest.fixture
def owner(client: FlaskClient, alice: Mailbox) -> FlaskClient:
    """A client logged in to /account as alice@example.test."""
    response = account_login(client, alice.address)
    assert response.status_code == 302 and response.location.endswith("/account/")
    return client


def _error(response: Any) -> str:
    match = re.search(r'<p class="form-errors" role="alert">(.*?)</p>', text(response))
    return match.group(1) if match else ""


# --- login ----------------------------------------------------------------------------------


def test_owner_logs_in_and_sees_the_overview(owner: FlaskClient, alice: Mailbox):
    html = text(owner.get("/account/"))
    assert alice.address in html
    assert "Paid" in html and "of 8 GB" in html and "<meter" in html
    assert "IMAP only" in html
    assert 'action="/account/logout"' in html


def test_pages_need_an_account_session(client: FlaskClient, alice: Mailbox):
    for url in ("/account/", "/account/backups", "/account/backups/20260101T000000Z-abcdef"):
        response = client.get(url)
        assert response.status_code == 302 and response.location.endswith("/account/login")
    assert client.get("/account/login").status_code == 200


def test_wrong_password_and_unknown_user_get_the_same_answer(client: FlaskClient, alice: Mailbox):
    wrong = account_login(client, alice.address, "not the password")
    unknown = account_login(client, "nobody@example.test", "not the password")
    assert wrong.status_code == unknown.status_code == 200
    assert _error(wrong) == _error(unknown) == "Wrong e-mail address or password."
    assert text(wrong).replace(alice.address, "X") == text(unknown).replace(
        "nobody@example.test", "X"
    )
    assert client.get("/account/").status_code == 302


@pytest.fixture
def three_failures(app_config: dict) -> dict:
    app_config["LOGIN_MAX_FAILURES"] = 3
    return app_config


def test_too_many_failures_get_429_even_with_the_right_password(
    three_failures: dict, client: FlaskClient, alice: Mailbox
):
    for _ in range(3):
        assert account_login(client, alice.address, "wrong").status_code == 200
    blocked = account_login(client, alice.address)
    assert (
        blocked.status_code == 429 and _error(blocked) == "Too many failed logins. Try again later."
    )
    assert client.get("/account/").status_code == 302


def test_one_address_spraying_many_mailboxes_is_blocked(
    three_failures: dict, client: FlaskClient, alice: Mailbox
):
    for n in range(3):
        account_login(client, f"user{n}@example.test", "guess")
    assert account_login(client, alice.address).status_code == 429


def test_an_address_banned_on_imap_and_pop3_is_refused_here_too(
    app: Flask, client: FlaskClient, alice: Mailbox
):
    from provider.services import mail_access

    bans = mail_access.guards(app).bans
    while not bans.failure("127.0.0.1"):
        pass
    assert account_login(client, alice.address).status_code == 429


@pytest.fixture
def csrf_on(app_config: dict) -> dict:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def test_login_needs_a_csrf_token(csrf_on: dict, client: FlaskClient, alice: Mailbox):
    assert account_login(client, alice.address).status_code == 400
    assert client.get("/account/").status_code == 302
    token = csrf_token(text(client.get("/account/login")))
    response = client.post(
        "/account/login",
        data={"email": alice.address, "password": MAILBOX_PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302
    assert client.get("/account/").status_code == 200


def test_a_suspended_mailbox_may_not_log_in(client: FlaskClient, alice: Mailbox, session):
    provisioning.update_mailbox(session, alice, actor=TEST_ACTOR, status="suspended")
    session.commit()
    response = account_login(client, alice.address)
    assert response.status_code == 200 and "suspended" in _error(response)
    assert client.get("/account/").status_code == 302
    # Only the right password learns the status.
    assert _error(account_login(client, alice.address, "wrong")) == (
        "Wrong e-mail address or password."
    )


# --- sessions -------------------------------------------------------------------------------


def test_password_change_ends_the_account_session(owner: FlaskClient, alice, session):
    assert owner.get("/account/").status_code == 200
    provisioning.update_mailbox(session, alice, actor=TEST_ACTOR, password="a brand new secret")
    session.commit()
    response = owner.get("/account/")
    assert response.status_code == 302 and response.location.endswith("/account/login")


def test_suspension_ends_the_account_session(owner: FlaskClient, alice, session):
    provisioning.update_mailbox(session, alice, actor=TEST_ACTOR, status="suspended")
    session.commit()
    assert owner.get("/account/backups").status_code == 302
    assert owner.get("/account/").status_code == 302


def test_logout_is_a_post_and_ends_the_session(owner: FlaskClient):
    assert owner.get("/account/logout").status_code == 405
    response = owner.post("/account/logout")
    assert response.status_code == 302 and response.location.endswith("/account/login")
    assert owner.get("/account/").status_code == 302


def test_an_account_session_cannot_open_the_admin_panel(owner: FlaskClient, alice, admin):
    for url in ("/admin/", "/admin/mailboxes", f"/admin/mailboxes/{alice.id}/backups"):
        response = owner.get(url)
        assert response.status_code == 302, url
        assert "/admin/login" in response.location
    assert owner.post("/admin/domains", data={"name": "evil.test"}).status_code == 302


def test_an_admin_session_is_not_an_account_session(logged_in: FlaskClient, alice: Mailbox):
    response = logged_in.get("/account/")
    assert response.status_code == 302 and response.location.endswith("/account/login")
    assert logged_in.get("/admin/").status_code == 200


def test_a_forged_account_session_is_refused(app: Flask, client: FlaskClient, alice: Mailbox):
    with client.session_transaction() as flask_session:
        flask_session["account_session"] = f"{alice.id}:{'0' * 32}"
    assert client.get("/account/").status_code == 302


# --- the owner's time machine ---------------------------------------------------------------


def test_owner_sees_and_restores_their_own_snapshots(
    owner: FlaskClient, alice: Mailbox, session: Session
):
    uids = deliver(session, alice, [mail("Tax return"), mail("Receipt")])
    snapshot_id = snapshot(session, alice)
    listing = text(owner.get("/account/backups"))
    assert f"/account/backups/{snapshot_id}" in listing
    browse = text(owner.get(f"/account/backups/{snapshot_id}?q=tax"))
    assert "Tax return" in browse and "Receipt" not in browse
    message = text(owner.get(f"/account/backups/{snapshot_id}/messages/{uids[0]}?folder=INBOX"))
    assert "Tax return" in message and "Hello." in message
    eml = owner.get(f"/account/backups/{snapshot_id}/messages/{uids[0]}.eml?folder=INBOX")
    assert eml.data == mail("Tax return") and eml.headers["Content-Disposition"].startswith(
        "attachment"
    )
    expunge(session, alice, [uids[0]])
    response = owner.post(
        f"/account/backups/{snapshot_id}/restore",
        data={"folder": "INBOX", "uid": str(uids[0]), "restore_messages": "1"},
    )
    assert response.status_code == 302
    page = text(owner.get("/account/backups"))
    assert "Restored 1 message" in page and "mailbox:alice@example.test" in page
    assert sorted(folder_bodies(alice)) == sorted([mail("Tax return"), mail("Receipt")])
    [row] = backups.restore_history(session, alice.address)
    assert row.actor == "mailbox:alice@example.test"


def test_owner_cannot_reach_another_mailbox_by_changing_the_url(
    owner: FlaskClient, alice: Mailbox, session: Session
):
    bob = make_mailbox(session, "bob@example.test")
    [uid] = deliver(session, bob, [mail("Bob's secret")])
    bobs = snapshot(session, bob)
    for url in (
        f"/account/backups/{bobs}",
        f"/account/backups/{bobs}/messages/{uid}?folder=INBOX",
        f"/account/backups/{bobs}/messages/{uid}.eml?folder=INBOX",
    ):
        response = owner.get(url)
        assert response.status_code == 404, url
        assert b"secret" not in response.data
    expunge(session, bob, [uid])
    response = owner.post(f"/account/backups/{bobs}/restore", data={"restore_mailbox": "1"})
    assert response.status_code == 404
    assert count(session, BackupRestore) == 0 and folder_bodies(bob) == []
    # Nor does the admin URL of that mailbox work with an account session.
    assert owner.get(f"/admin/mailboxes/{bob.id}/backups/{bobs}").status_code == 302


def test_owner_restore_needs_a_csrf_token(csrf_on: dict, client: FlaskClient, alice, session):
    token = csrf_token(text(client.get("/account/login")))
    client.post(
        "/account/login",
        data={"email": alice.address, "password": MAILBOX_PASSWORD, "csrf_token": token},
    )
    [uid] = deliver(session, alice, [mail("Keep")])
    snapshot_id = snapshot(session, alice)
    expunge(session, alice, [uid])
    url = f"/account/backups/{snapshot_id}/restore"
    assert client.post(url, data={"restore_mailbox": "1"}).status_code == 400
    assert folder_bodies(alice) == []
    token = csrf_token(text(client.get(f"/account/backups/{snapshot_id}")))
    response = client.post(url, data={"restore_mailbox": "1", "csrf_token": token})
    assert response.status_code == 302 and folder_bodies(alice) == [mail("Keep")]


def test_pop3_only_owner_is_told_there_are_no_backups(client: FlaskClient, session: Session):
    make_mailbox(session, "pop@example.test", protocols="pop3")
    assert account_login(client, "pop@example.test").status_code == 302
    assert "POP3 only" in text(client.get("/account/"))
    page = text(client.get("/account/backups"))
    assert "This mailbox is not backed up" in page and "No snapshot yet" not in page


def test_account_pages_have_no_inline_script_or_style(owner: FlaskClient, alice, session):
    [uid] = deliver(session, alice, [mail("Hi")])
    snapshot_id = snapshot(session, alice)
    for url in (
        "/account/",
        "/account/backups",
        f"/account/backups/{snapshot_id}",
        f"/account/backups/{snapshot_id}/messages/{uid}?folder=INBOX",
    ):
        html = text(owner.get(url))
        assert "<script" not in html and " style=" not in html, url
        assert not re.search(r"\son[a-z]+=", html), url


def test_admin_login_still_works_beside_an_account_session(owner: FlaskClient, admin):
    response = login(owner)
    assert response.status_code == 302
    assert owner.get("/admin/").status_code == 200
