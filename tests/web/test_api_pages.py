"""The panel's API pages: tokens made (secret shown once), listed with last use, revoked; and
the API reference drawn from the OpenAPI document, with no outside asset."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from provider.models import AdminUser
from provider.services import tokens
from tests.conftest import login, make_admin, make_domain


def _secret(html: str) -> str:
    found = re.search(r'id="new-token-secret">(pvd_[^<]+)<', html)
    assert found, html[:2000]
    return found[1]


def test_create_shows_the_secret_once_and_it_authenticates(
    logged_in: FlaskClient, session: Session, admin: AdminUser
) -> None:
    response = logged_in.post(
        "/admin/api-tokens", data={"name": "billing", "scope": "write", "allowed_ips": ""}
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    secret = _secret(response.get_data(as_text=True))
    token = tokens.authenticate(session, secret, "127.0.0.1")
    assert (token.name, token.scope, token.admin_id) == ("billing", "write", admin.id)
    listing = logged_in.get("/admin/api-tokens").get_data(as_text=True)
    assert secret not in listing and "billing" in listing
    assert f"pvd_{token.prefix}" in listing and "from 127.0.0.1" in listing


def test_bad_input_is_shown_next_to_its_field(logged_in: FlaskClient, session: Session) -> None:
    html = logged_in.post(
        "/admin/api-tokens",
        data={"name": "x", "scope": "write", "expires_days": "99999", "allowed_ips": "not-an-ip"},
    ).get_data(as_text=True)
    assert "new-token-secret" not in html
    assert "is not an IP address or network" in html or "expiry must be" in html
    assert tokens.list_tokens(session) == []


def test_revoke(logged_in: FlaskClient, session: Session, admin: AdminUser) -> None:
    secret = _secret(
        logged_in.post("/admin/api-tokens", data={"name": "old", "scope": "read"}).get_data(
            as_text=True
        )
    )
    (token,) = tokens.list_tokens(session)
    response = logged_in.post(f"/admin/api-tokens/{token.id}/revoke")
    assert response.status_code == 302
    session.expire_all()
    assert tokens.list_tokens(session)[0].revoked_at is not None
    try:
        tokens.authenticate(session, secret, "127.0.0.1")
    except tokens.TokenRefused:
        pass
    else:
        raise AssertionError("a revoked token still authenticates")


def test_a_domain_admin_sees_and_revokes_only_their_own(
    client: FlaskClient, session: Session, admin: AdminUser
) -> None:
    from provider.services.audit import Actor

    theirs = tokens.create_token(session, admin, name="root-token", actor=Actor("test"))
    session.commit()
    tenant = make_admin(
        session, "tenant@example.com", superadmin=False, domains=[make_domain(session)]
    )
    assert login(client, "tenant@example.com").status_code == 302
    assert "root-token" not in client.get("/admin/api-tokens").get_data(as_text=True)
    assert client.post(f"/admin/api-tokens/{theirs.token.id}/revoke").status_code == 404
    session.expire_all()
    assert tokens.get_token(session, theirs.token.id).revoked_at is None
    assert tenant.id


def test_the_reference_lists_every_operation_without_outside_assets(
    logged_in: FlaskClient,
) -> None:
    response = logged_in.get("/admin/api")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for method, path in [
        ("GET", "/api/v1/domains"),
        ("POST", "/api/v1/mailboxes"),
        ("PATCH", "/api/v1/mailboxes/{address}"),
        ("DELETE", "/api/v1/aliases/{address}"),
        ("GET", "/api/v1/audit-events"),
    ]:
        assert re.search(rf">{method}</span> <code>{re.escape(path)}</code>", html), (method, path)
    assert "quota_gb" in html and "Idempotency-Key" in html
    assert not re.search(r"""(src|href)=["']https?://""", html)
    assert "<script" not in html
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
