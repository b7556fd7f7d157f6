"""API access: bearer tokens only (never the panel's cookie, no CSRF), scope, IP allow-list,
revocation and the per-token rate limit, through the real HTTP server."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AdminUser, AuditEvent
from provider.services import tokens
from provider.services.audit import Actor
from tests.api.conftest import PROBLEM_TYPE, ApiClient, token_for
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, make_domain


def test_no_token_is_401_with_a_bearer_challenge(client_for: Any) -> None:
    response = client_for(None).get("/api/v1/domains")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["Content-Type"] == PROBLEM_TYPE
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize(
    "header",
    ["Bearer pvd_not-a-real-token", "Bearer ", "Basic cm9vdDpwdw==", "pvd_bare", "Bearer \u00e9"],
)
def test_a_wrong_token_or_scheme_is_401(api_server: str, header: str) -> None:
    response = requests.get(
        f"{api_server}/api/v1/domains",
        headers={"Authorization": header.encode("utf-8")},  # type: ignore[dict-item]
        timeout=10,
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_token_is_refused_at_once(
    api: ApiClient, session: Session, superadmin: AdminUser
) -> None:
    assert api.get("/api/v1/domains").status_code == 200
    (token,) = tokens.list_tokens(session)
    tokens.revoke_token(session, token, actor=Actor("test"))
    session.commit()
    response = api.get("/api/v1/domains")
    assert response.status_code == 401
    assert response.json()["detail"] == tokens.REFUSED


def test_a_read_token_reads_but_every_write_is_403(
    client_for: Any, session: Session, superadmin: AdminUser
) -> None:
    reader = client_for(token_for(session, superadmin, scope="read"))
    assert reader.get("/api/v1/mailboxes").status_code == 200
    refused = [
        reader.post("/api/v1/domains", json={"name": "example.test"}),
        reader.patch("/api/v1/domains/example.test", json={"signup_enabled": True}),
        reader.delete("/api/v1/domains/example.test"),
    ]
    assert [response.status_code for response in refused] == [403, 403, 403]
    assert "scope read" in refused[0].json()["detail"]
    assert session.scalar(select(AuditEvent).where(AuditEvent.action == "domain.create")) is None


def test_the_panel_session_cookie_does_not_authenticate_the_api(
    api_server: str, superadmin: AdminUser
) -> None:
    browser = requests.Session()
    login = browser.get(f"{api_server}/admin/login", timeout=10)
    assert login.status_code == 200
    csrf_token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', login.text)
    assert csrf_token is not None
    logged_in = browser.post(
        f"{api_server}/admin/login",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": csrf_token[1]},
        timeout=10,
        allow_redirects=False,
    )
    assert logged_in.status_code == 302 and browser.cookies
    assert browser.get(f"{api_server}/admin/", timeout=10).status_code == 200
    response = browser.get(f"{api_server}/api/v1/domains", timeout=10)
    assert response.status_code == 401
    created = browser.post(f"{api_server}/api/v1/domains", json={"name": "a.test"}, timeout=10)
    assert created.status_code == 401


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    # CSRF on, as in production: the API must not need (or accept) a CSRF token.
    app_config["WTF_CSRF_ENABLED"] = True
    app_config["COOKIE_SECURE"] = False  # the test server speaks plain HTTP
    return app_config


def test_writes_need_no_csrf_token_and_set_no_cookie(api: ApiClient) -> None:
    response = api.post("/api/v1/domains", json={"name": "example.test"})
    assert response.status_code == 201, response.text
    assert "Set-Cookie" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"


def test_an_ip_allow_list_refuses_other_addresses_with_403(
    client_for: Any, session: Session, superadmin: AdminUser
) -> None:
    elsewhere = client_for(token_for(session, superadmin, allowed_ips=["192.0.2.0/24"], name="a"))
    response = elsewhere.get("/api/v1/domains")
    assert response.status_code == 403
    assert "127.0.0.1" in response.json()["detail"]
    here = client_for(token_for(session, superadmin, allowed_ips=["127.0.0.0/8"], name="b"))
    assert here.get("/api/v1/domains").status_code == 200


def test_every_write_is_audited_with_the_tokens_name(api: ApiClient, session: Session) -> None:
    assert api.post("/api/v1/domains", json={"name": "example.test"}).status_code == 201
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "domain.create"))
    assert event is not None
    assert event.actor == f"token:billing ({ADMIN_EMAIL})"
    assert event.remote_addr == "127.0.0.1"


def test_a_domain_admin_token_may_not_create_or_delete_domains(
    client_for: Any, session: Session
) -> None:
    domain = make_domain(session, "mine.test")
    from tests.conftest import make_admin

    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[domain])
    client = client_for(token_for(session, tenant))
    assert client.post("/api/v1/domains", json={"name": "new.test"}).status_code == 403
    assert client.delete("/api/v1/domains/mine.test").status_code == 403
    assert client.get("/api/v1/domains/mine.test").status_code == 200


class TestRateLimit:
    @pytest.fixture
    def app_config(self, app_config: dict[str, Any]) -> dict[str, Any]:
        app_config["API_RATE_LIMIT"] = "3 per minute"
        return app_config

    def test_over_the_limit_is_429_with_retry_after_per_token(
        self, api: ApiClient, client_for: Any, session: Session, superadmin: AdminUser
    ) -> None:
        statuses = [api.get("/api/v1/domains").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = api.get("/api/v1/domains")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["Content-Type"] == PROBLEM_TYPE
        # Another token has its own budget.
        other = client_for(token_for(session, superadmin, name="other"))
        assert other.get("/api/v1/domains").status_code == 200
