"""Security of the panel itself: headers, cookie flags, CSRF, and no state change on GET."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from provider.models import AdminUser, Alias, Domain, Mailbox
from provider.services import provisioning
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_ACTOR, make_admin, make_mailbox
from tests.web.conftest import count, text_of


def test_pages_send_security_headers(client: FlaskClient, admin: AdminUser):
    response = client.get("/admin/login")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "style-src 'self'" in csp
    assert "object-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    max_age = re.search(r"max-age=(\d+)", response.headers["Strict-Transport-Security"])
    assert max_age and int(max_age.group(1)) >= 31536000


def test_session_cookie_is_host_only_secure_httponly_lax(client: FlaskClient, admin: AdminUser):
    response = client.post("/admin/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    cookie = next(
        value for value in response.headers.getlist("Set-Cookie") if value.startswith("__Host-")
    )
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert cookie.startswith("__Host-session=")
    assert "secure" in attributes
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    assert not any(part.startswith("domain=") for part in attributes)


def test_templates_have_no_inline_script_style_or_handlers(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session)
    for url in ("/admin/", "/admin/mailboxes", f"/admin/mailboxes/{mailbox.id}", "/admin/audit"):
        html = text_of(logged_in.get(url))
        assert "<script" not in html
        assert " style=" not in html
        assert "<style" not in html
        assert not re.search(r"\son[a-z]+=", html), url


@pytest.fixture
def csrf_app(app_config: dict) -> dict:
    """CSRF checking as in production; request it before `client`."""
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def _token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


def _login_with_token(client: FlaskClient) -> None:
    token = _token(text_of(client.get("/admin/login")))
    response = client.post(
        "/admin/login",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302


def test_login_without_csrf_token_is_refused(csrf_app: dict, client: FlaskClient, admin):
    response = client.post("/admin/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_post_without_csrf_token_is_refused_and_writes_nothing(
    csrf_app: dict, client: FlaskClient, session: Session
):
    make_admin(session)
    _login_with_token(client)
    response = client.post("/admin/domains", data={"name": "new.test"})
    assert response.status_code == 400
    assert count(session, Domain) == 0


def test_post_with_foreign_csrf_token_is_refused(
    csrf_app: dict, app: Flask, client: FlaskClient, session: Session
):
    make_admin(session)
    _login_with_token(client)
    stranger = app.test_client()
    foreign = _token(text_of(stranger.get("/admin/login")))
    response = client.post("/admin/domains", data={"name": "new.test", "csrf_token": foreign})
    assert response.status_code == 400
    assert count(session, Domain) == 0


def test_post_with_csrf_token_from_the_page_works(
    csrf_app: dict, client: FlaskClient, session: Session
):
    make_admin(session)
    _login_with_token(client)
    token = _token(text_of(client.get("/admin/domains")))
    response = client.post("/admin/domains", data={"name": "new.test", "csrf_token": token})
    assert response.status_code == 302
    assert count(session, Domain) == 1


def test_delete_of_mailbox_without_csrf_token_keeps_it(
    csrf_app: dict, client: FlaskClient, session: Session
):
    make_admin(session)
    mailbox = make_mailbox(session)
    _login_with_token(client)
    assert client.post(f"/admin/mailboxes/{mailbox.id}/delete").status_code == 400
    assert count(session, Mailbox) == 1


def test_state_changing_routes_refuse_get(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session)
    alias = provisioning.create_alias(session, "alias@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    routes = [
        f"/admin/mailboxes/{mailbox.id}/delete",
        f"/admin/mailboxes/{mailbox.id}/suspend",
        f"/admin/mailboxes/{mailbox.id}/reactivate",
        f"/admin/mailboxes/{mailbox.id}/password",
        f"/admin/mailboxes/{mailbox.id}/aliases",
        f"/admin/aliases/{alias.id}/delete",
        f"/admin/domains/{mailbox.domain_id}/delete",
        "/admin/admins/1/delete",
        "/admin/admins/1/password",
        "/admin/admins/1/domains",
        "/admin/logout",
    ]
    for url in routes:
        assert logged_in.get(url).status_code == 405, url
    # Signup's GET is the question before the change (the POST does it): it changes nothing.
    signup = session.get(Domain, mailbox.domain_id).signup_enabled
    assert logged_in.get(f"/admin/domains/{mailbox.domain_id}/signup").status_code == 200
    session.expire_all()
    assert session.get(Domain, mailbox.domain_id).signup_enabled == signup
    assert count(session, Mailbox) == 1
    assert count(session, Alias) == 1
    assert count(session, Domain) == 1
    assert count(session, AdminUser) == 1
    assert session.get(Mailbox, mailbox.id).status == "active"
