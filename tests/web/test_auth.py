"""Admin login, logout, throttling and the login requirement of every admin page."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from provider.models import AdminUser
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login
from tests.web.conftest import text_of

SESSION_COOKIE = "__Host-session"


def test_login_with_right_password_opens_the_dashboard(client: FlaskClient, admin: AdminUser):
    response = login(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"
    page = client.get("/admin/")
    assert page.status_code == 200
    assert ADMIN_EMAIL in text_of(page)


def test_login_email_is_case_insensitive(client: FlaskClient, admin: AdminUser):
    assert login(client, ADMIN_EMAIL.upper()).status_code == 302


def test_login_with_wrong_password_is_refused_generically(client: FlaskClient, admin: AdminUser):
    response = login(client, password="wrong password here")
    assert response.status_code == 200
    assert "Wrong e-mail or password." in text_of(response)
    unknown = login(client, "nobody@example.com", "wrong password here")
    assert "Wrong e-mail or password." in text_of(unknown)
    assert client.get("/admin/").status_code == 302


@pytest.fixture
def login_limit(app_config: dict) -> int:
    """A small LOGIN_MAX_FAILURES; request it before `client` so the app is built with it."""
    app_config["LOGIN_MAX_FAILURES"] = 3
    return 3


def test_login_is_throttled_after_max_failures(
    login_limit: int, client: FlaskClient, admin: AdminUser
):
    for _ in range(login_limit):
        assert login(client, password="wrong password here").status_code == 200
    blocked = login(client)
    assert blocked.status_code == 429
    assert "Too many failed logins" in text_of(blocked)
    assert "Wrong e-mail or password" not in text_of(blocked)
    assert client.get("/admin/").status_code == 302


def test_throttling_counts_per_address_across_accounts(
    login_limit: int, client: FlaskClient, admin: AdminUser
):
    for number in range(login_limit):
        login(client, f"sprayed{number}@example.com", "wrong password here")
    assert login(client).status_code == 429


def test_login_follows_only_local_next(client: FlaskClient, admin: AdminUser):
    response = client.post(
        "/admin/login?next=/admin/mailboxes",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
    )
    assert response.headers["Location"] == "/admin/mailboxes"
    client.post("/admin/logout")
    response = client.post(
        "/admin/login?next=https://evil.example/",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
    )
    assert response.headers["Location"] == "/admin/"


def test_logged_in_admin_visiting_login_goes_to_dashboard(logged_in: FlaskClient):
    response = logged_in.get("/admin/login")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"


def test_logout_ends_the_session(logged_in: FlaskClient):
    response = logged_in.post("/admin/logout")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login"
    assert logged_in.get("/admin/").status_code == 302


def test_replaying_a_cookie_after_logout_is_sent_to_login(logged_in: FlaskClient):
    old_cookie = logged_in.get_cookie(SESSION_COOKIE)
    assert old_cookie is not None
    logged_in.post("/admin/logout")
    logged_in.set_cookie(SESSION_COOKIE, old_cookie.value)
    response = logged_in.get("/admin/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login")


def test_logout_ends_sessions_on_other_devices(app: Flask, logged_in: FlaskClient):
    other_device = app.test_client()
    assert login(other_device).status_code == 302
    assert other_device.get("/admin/").status_code == 200
    logged_in.post("/admin/logout")
    assert other_device.get("/admin/").status_code == 302


def test_login_issues_a_new_session(client: FlaskClient, admin: AdminUser):
    client.get("/admin/login")
    with client.session_transaction() as before:
        before["planted"] = "by an attacker"
    login(client)
    with client.session_transaction() as after:
        assert "planted" not in after


def test_logout_is_post_only(logged_in: FlaskClient):
    assert logged_in.get("/admin/logout").status_code == 405
    assert logged_in.get("/admin/").status_code == 200


def test_every_admin_page_but_login_needs_a_session(app: Flask, client: FlaskClient):
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("admin.")]
    assert len(rules) > 20
    for rule in rules:
        if rule.endpoint == "admin.login":
            continue
        url = rule.build({name: 1 for name in rule.arguments})[1]  # type: ignore[index]
        method = "GET" if "GET" in (rule.methods or ()) else "POST"
        response = client.open(url, method=method)
        assert response.status_code == 302, (rule.endpoint, response.status_code)
        assert response.headers["Location"].startswith("/admin/login"), rule.endpoint
