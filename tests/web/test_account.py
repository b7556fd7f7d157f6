"""The mailbox owner's portal: login, sessions, own backups, trial, password change, terms."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, BackupRestore, Mailbox
from provider.services import auth, backups, clock, provisioning
from provider.web.account.trial import UPGRADE_REQUESTED, upgrade_requested_at
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, login, make_domain, make_mailbox
from tests.web.conftest import count, errors_of
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


def copied_session(app: Flask, owner: FlaskClient) -> FlaskClient:
    """Another browser holding a copy of the owner's session cookie."""
    copy = app.test_client()
    with owner.session_transaction() as original, copy.session_transaction() as stolen:
        stolen.update(original)
    return copy


def test_logout_ends_copies_of_the_session_too(app: Flask, owner: FlaskClient):
    copy = copied_session(app, owner)
    assert copy.get("/account/").status_code == 200
    owner.post("/account/logout")
    assert copy.get("/account/").status_code == 302


def test_reactivating_a_mailbox_does_not_revive_old_sessions(
    app: Flask, owner: FlaskClient, alice, session
):
    copy = copied_session(app, owner)
    provisioning.update_mailbox(session, alice, actor=TEST_ACTOR, status="suspended")
    session.commit()
    provisioning.update_mailbox(session, alice, actor=TEST_ACTOR, status="active")
    session.commit()
    assert owner.get("/account/").status_code == 302
    assert copy.get("/account/").status_code == 302
    assert account_login(owner, alice.address).status_code == 302  # a new login works
    assert owner.get("/account/").status_code == 200


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


# --- overview: usage, client settings, trial (issue 7) --------------------------------------


@pytest.fixture
def public_hosts(app_config: dict) -> dict:
    app_config.update(
        PUBLIC_IMAP_HOST="imap.provider.test",
        PUBLIC_POP3_HOST="pop.provider.test",
        PUBLIC_SMTP_HOST="smtp.provider.test",
        PUBLIC_SMTP_PORT=465,
    )
    return app_config


def _settings_rows(html: str) -> dict[str, list[str]]:
    """The client settings table: protocol -> its cells."""
    table = re.search(r'<table id="client-settings">(.*?)</table>', html, re.S)
    assert table, "no client settings table"
    return {
        protocol: re.findall(r"<td>(.*?)</td>", cells)
        for protocol, cells in re.findall(
            r'<tr data-protocol="(\w+)">(.*?)</tr>', table.group(1), re.S
        )
    }


def test_overview_shows_usage_policy_and_the_client_settings_of_the_policy(
    public_hosts: dict, owner: FlaskClient, alice: Mailbox, session: Session
):
    alice.used_bytes = 2 * 1024**3
    session.commit()
    html = text(owner.get("/account/"))
    assert '<label for="usage-meter">Storage used</label>' in html
    assert re.search(r'<meter id="usage-meter"[^>]* max="8589934592" value="2147483648"', html)
    assert "2 GB of 8 GB (25.0%)" in html
    assert '<dd id="protocol-policy">IMAP only</dd>' in html
    assert _settings_rows(html) == {
        "imap": ["IMAP", "imap.provider.test", "1993", "SSL/TLS", alice.address],
        "smtp": ["SMTP (sending)", "smtp.provider.test", "465", "SSL/TLS", alice.address],
    }
    # A paid mailbox has no trial box and nothing to upgrade.
    assert 'id="trial"' not in html and "/account/upgrade" not in html


def test_a_pop3_owner_gets_the_pop3_settings(public_hosts: dict, client: FlaskClient, session):
    make_mailbox(session, "pop@example.test", protocols="both")
    account_login(client, "pop@example.test")
    rows = _settings_rows(text(client.get("/account/")))
    assert list(rows) == ["imap", "pop3", "smtp"]
    assert rows["pop3"][:4] == ["POP3", "pop.provider.test", "1995", "SSL/TLS"]


def test_without_public_settings_the_overview_shows_the_listeners_and_no_sending_server(
    owner: FlaskClient, alice: Mailbox
):
    """Issue 11, item 16: the page said IMAP 993 and SMTP 587 while IMAPS listened on 1993
    and no submission listener existed."""
    html = text(owner.get("/account/"))
    assert _settings_rows(html) == {
        "imap": ["IMAP", "127.0.0.1", "1993", "SSL/TLS", alice.address],
    }
    assert "This service does not offer outgoing mail (SMTP)" in html


@pytest.fixture
def trial_owner(client: FlaskClient, session: Session) -> tuple[FlaskClient, Mailbox]:
    mailbox = make_mailbox(session, "tina@example.test", plan="trial", contact_email="t@else.test")
    assert account_login(client, mailbox.address).status_code == 302
    return client, mailbox


def test_a_trial_owner_sees_the_days_left(trial_owner, session: Session):
    client, tina = trial_owner
    tina.trial_expires_at = clock.now() + timedelta(days=9, hours=1)
    session.commit()
    html = text(client.get("/account/"))
    assert '<strong id="trial-days-left">10 days left</strong>' in html
    assert 'action="/account/upgrade"' in html and "Request an upgrade" in html
    assert "has ended" not in html
    tina.trial_expires_at = clock.now() + timedelta(hours=3)
    session.commit()
    assert "1 day left</strong>" in text(client.get("/account/"))


def _upgrade_events(session: Session) -> list[AuditEvent]:
    session.expire_all()
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == UPGRADE_REQUESTED)))


def test_an_upgrade_request_is_recorded_once_and_converts_nothing(
    trial_owner, session: Session, admin, app: Flask
):
    client, tina = trial_owner
    response = client.post("/account/upgrade")
    assert response.status_code == 302 and response.location.endswith("/account/")
    [event] = _upgrade_events(session)
    assert event.actor == "mailbox:tina@example.test" and event.target == tina.address
    assert event.domain == "example.test" and event.after["contact_email"] == "t@else.test"
    session.refresh(tina)
    assert tina.plan == "trial" and tina.trial_expires_at is not None
    html = text(client.get("/account/"))
    assert "An administrator will convert your" in html and 'id="upgrade-requested"' in html
    assert 'action="/account/upgrade"' not in html
    # Asking again records nothing more.
    client.post("/account/upgrade")
    assert len(_upgrade_events(session)) == 1
    assert "already sent" in text(client.get("/account/"))
    # The admin sees the request on the mailbox page.
    admin_client = app.test_client()
    login(admin_client)
    page = text(admin_client.get(f"/admin/mailboxes/{tina.id}"))
    assert 'id="upgrade-requested"' in page and "Upgrade requested" in page


def test_a_paid_owner_cannot_request_an_upgrade(owner: FlaskClient, session: Session):
    assert owner.post("/account/upgrade").status_code == 302
    assert _upgrade_events(session) == []
    assert "not a trial" in text(owner.get("/account/"))


def test_an_old_request_does_not_carry_over_to_a_new_trial_period(trial_owner, session: Session):
    client, tina = trial_owner
    client.post("/account/upgrade")
    with clock.frozen_at(clock.now() + timedelta(minutes=5)):
        provisioning.update_mailbox(session, tina, actor=TEST_ACTOR, plan="paid")
        session.commit()
    with clock.frozen_at(clock.now() + timedelta(minutes=10)):
        provisioning.update_mailbox(session, tina, actor=TEST_ACTOR, plan="trial")
        session.commit()
        assert upgrade_requested_at(session, tina) is None
        assert 'action="/account/upgrade"' in text(client.get("/account/"))


def test_the_upgrade_request_needs_a_csrf_token(csrf_on: dict, client: FlaskClient, session):
    tina = make_mailbox(session, "tina@example.test", plan="trial")
    token = csrf_token(text(client.get("/account/login")))
    client.post(
        "/account/login",
        data={"email": tina.address, "password": MAILBOX_PASSWORD, "csrf_token": token},
    )
    assert client.post("/account/upgrade").status_code == 400
    assert _upgrade_events(session) == []
    token = csrf_token(text(client.get("/account/")))
    assert client.post("/account/upgrade", data={"csrf_token": token}).status_code == 302
    assert len(_upgrade_events(session)) == 1


def test_an_expired_trial_is_told_so_with_the_grace_end_and_how_to_upgrade(
    trial_owner, session: Session
):
    client, tina = trial_owner
    expired_at = clock.now() - timedelta(days=2)
    tina.trial_expires_at = expired_at
    tina.status = "expired"
    session.commit()
    # The status change ended the session (its epoch); an expired trial may log in again.
    assert client.get("/account/").status_code == 302
    assert account_login(client, tina.address).status_code == 302
    html = text(client.get("/account/"))
    assert "Your free trial has ended" in html
    grace_end = (expired_at + timedelta(days=30)).strftime("%Y-%m-%d %H:%M UTC")
    assert f"mail sent to you is still accepted until {grace_end}" in html
    assert "days left" not in html
    assert 'action="/account/upgrade"' in html
    assert "<script" not in html and " style=" not in html


def test_a_trial_past_its_date_shows_expired_before_the_job_marks_it(trial_owner, session):
    client, tina = trial_owner
    tina.trial_expires_at = clock.now() - timedelta(minutes=1)
    session.commit()
    assert "Your free trial has ended" in text(client.get("/account/"))


# --- password change ------------------------------------------------------------------------

NEW_PASSWORD = "another quite long passphrase"


def _change(client: FlaskClient, current: str, new: str, repeat: str | None = None, **extra: str):
    return client.post(
        "/account/password",
        data={
            "current_password": current,
            "new_password": new,
            "new_password_confirm": new if repeat is None else repeat,
            **extra,
        },
    )


def _field_error(response: Any, name: str) -> str:
    return errors_of(response, name)


def _password_ok(session: Session, mailbox: Mailbox, password: str) -> bool:
    session.expire_all()
    return auth.verify_password(mailbox.password_hash, password).ok


def test_owner_changes_the_password_stays_logged_in_and_other_sessions_end(
    app: Flask, owner: FlaskClient, alice: Mailbox, session: Session
):
    other = app.test_client()
    assert account_login(other, alice.address).status_code == 302
    assert other.get("/account/").status_code == 200

    response = _change(owner, MAILBOX_PASSWORD, NEW_PASSWORD)
    assert response.status_code == 302 and response.location.endswith("/account/")
    assert _password_ok(session, alice, NEW_PASSWORD)
    page = owner.get("/account/")
    assert page.status_code == 200 and "Your password has been changed" in text(page)
    assert other.get("/account/").status_code == 302  # the other browser is out

    [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "mailbox.password"))
    assert event.actor == "mailbox:alice@example.test" and event.target == alice.address
    assert "password_hash" not in (event.after or {})
    fresh = app.test_client()
    assert account_login(fresh, alice.address, MAILBOX_PASSWORD).status_code == 200
    assert account_login(fresh, alice.address, NEW_PASSWORD).status_code == 302


@pytest.mark.parametrize(
    ("current", "new", "repeat", "field", "message"),
    [
        ("not the password", NEW_PASSWORD, None, "current_password", "current password is wrong"),
        (MAILBOX_PASSWORD, "short", None, "new_password", "at least 8 characters"),
        (MAILBOX_PASSWORD, "password123", None, "new_password", "too common"),
        (MAILBOX_PASSWORD, "alice@example.test", None, "new_password", "must not be the address"),
        (MAILBOX_PASSWORD, NEW_PASSWORD, "something else", "new_password_confirm", "do not match"),
    ],
)
def test_a_refused_password_change_changes_nothing(
    owner: FlaskClient,
    alice: Mailbox,
    session: Session,
    current: str,
    new: str,
    repeat: str | None,
    field: str,
    message: str,
):
    response = _change(owner, current, new, repeat)
    assert response.status_code == 200
    assert message in _field_error(response, field)
    assert _password_ok(session, alice, MAILBOX_PASSWORD)
    assert owner.get("/account/").status_code == 200  # still logged in
    assert (
        session.scalars(select(AuditEvent).where(AuditEvent.action == "mailbox.password")).all()
        == []
    )


def test_wrong_current_passwords_count_as_failed_logins(
    three_failures: dict, owner: FlaskClient, alice: Mailbox, session: Session
):
    for _ in range(3):
        assert _change(owner, "guess", NEW_PASSWORD).status_code == 200
    blocked = _change(owner, MAILBOX_PASSWORD, NEW_PASSWORD)
    assert blocked.status_code == 429 and "Too many failed logins" in text(blocked)
    assert _password_ok(session, alice, MAILBOX_PASSWORD)


def test_the_password_change_needs_a_csrf_token(csrf_on: dict, client: FlaskClient, alice, session):
    token = csrf_token(text(client.get("/account/login")))
    client.post(
        "/account/login",
        data={"email": alice.address, "password": MAILBOX_PASSWORD, "csrf_token": token},
    )
    assert _change(client, MAILBOX_PASSWORD, NEW_PASSWORD).status_code == 400
    assert _password_ok(session, alice, MAILBOX_PASSWORD)
    token = csrf_token(text(client.get("/account/")))
    response = _change(client, MAILBOX_PASSWORD, NEW_PASSWORD, csrf_token=token)
    assert response.status_code == 302 and _password_ok(session, alice, NEW_PASSWORD)
    assert client.get("/account/").status_code == 200


def test_the_password_form_is_labelled(owner: FlaskClient):
    html = text(owner.get("/account/"))
    for name in ("current_password", "new_password", "new_password_confirm"):
        assert f'<label for="{name}">' in html, name
        assert re.search(rf'<input[^>]* id="{name}"[^>]* name="{name}"', html), name
    assert 'autocomplete="current-password"' in html and 'autocomplete="new-password"' in html


# --- the terms page linked from /signup -------------------------------------------------------


def test_the_signup_form_links_the_built_in_terms_page(client: FlaskClient, session: Session):
    make_domain(session, "open.test", signup_enabled=True)
    form = text(client.get("/signup"))
    assert re.search(r'<a href="/terms" id="terms-link"[^>]*>terms of service</a>', form)
    terms = client.get("/terms")
    assert terms.status_code == 200 and "Terms of service" in text(terms)
    assert "placeholder" in text(terms)
    assert "<script" not in text(terms) and " style=" not in text(terms)


@pytest.fixture
def own_terms(app_config: dict) -> dict:
    app_config["TERMS_URL"] = "https://hoster.example/terms"
    return app_config


def test_terms_url_replaces_the_built_in_page(own_terms: dict, client: FlaskClient, session):
    make_domain(session, "open.test", signup_enabled=True)
    assert 'href="https://hoster.example/terms"' in text(client.get("/signup"))
    response = client.get("/terms")
    assert response.status_code == 302 and response.location == "https://hoster.example/terms"


def test_the_new_forms_need_an_account_session(client: FlaskClient, alice: Mailbox, session):
    for url in ("/account/upgrade", "/account/password"):
        response = client.post(url, data={"current_password": MAILBOX_PASSWORD})
        assert response.status_code == 302 and response.location.endswith("/account/login"), url
    assert _password_ok(session, alice, MAILBOX_PASSWORD) and _upgrade_events(session) == []
