"""Admin accounts page (superadmins only): list, create, change domains, reset password, delete."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AdminUser, Domain
from provider.services import auth
from tests.conftest import ADMIN_PASSWORD, login, make_domain
from tests.web.conftest import DOMAIN_ADMIN_EMAIL, count, errors_of, text_of

NEW_PASSWORD = "a fresh admin passphrase"


def by_email(session: Session, email: str) -> AdminUser | None:
    session.expire_all()
    return session.scalar(select(AdminUser).where(AdminUser.email == email))


def test_admin_list_shows_roles_and_domains(logged_in: FlaskClient, domain_admin: AdminUser):
    html = text_of(logged_in.get("/admin/admins"))
    assert "root@example.com" in html and DOMAIN_ADMIN_EMAIL in html
    assert "superadmin" in html and "mine.test" in html


def test_create_domain_admin_with_domains(logged_in: FlaskClient, session: Session, tenants):
    mine, other = tenants
    response = logged_in.post(
        "/admin/admins/new",
        data={
            "email": "Helper@Example.com",
            "password": NEW_PASSWORD,
            "password_confirm": NEW_PASSWORD,
            "domains": [str(mine.id), str(other.id)],
        },
    )
    assert response.status_code == 302
    created = by_email(session, "helper@example.com")
    assert created is not None and not created.is_superadmin
    assert sorted(domain.name for domain in created.domains) == ["mine.test", "other.test"]


def test_create_superadmin(logged_in: FlaskClient, session: Session):
    response = logged_in.post(
        "/admin/admins/new",
        data={
            "email": "boss@example.com",
            "password": NEW_PASSWORD,
            "password_confirm": NEW_PASSWORD,
            "superadmin": "y",
        },
    )
    assert response.status_code == 302
    assert by_email(session, "boss@example.com").is_superadmin


def test_create_domain_admin_without_domains_is_refused(logged_in: FlaskClient, session: Session):
    response = logged_in.post(
        "/admin/admins/new",
        data={"email": "x@example.com", "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )
    assert response.status_code == 200
    assert "needs at least one domain" in errors_of(response, "domains")
    assert count(session, AdminUser) == 1


def test_create_admin_refuses_duplicates_mismatch_and_weak_passwords(
    logged_in: FlaskClient, session: Session
):
    base = {"superadmin": "y", "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    duplicate = logged_in.post("/admin/admins/new", data={**base, "email": "ROOT@example.com"})
    assert "already exists" in errors_of(duplicate, "email")
    mismatch = logged_in.post(
        "/admin/admins/new",
        data={**base, "email": "y@example.com", "password_confirm": "different words"},
    )
    assert "do not match" in errors_of(mismatch, "password_confirm")
    weak = logged_in.post(
        "/admin/admins/new",
        data={
            **base,
            "email": "y@example.com",
            "password": "password",
            "password_confirm": "password",
        },
    )
    assert weak.status_code == 200
    assert errors_of(weak, "password")
    assert count(session, AdminUser) == 1


def test_change_domains_of_a_domain_admin_ends_their_sessions(
    app: Flask, logged_in: FlaskClient, session: Session, domain_admin: AdminUser, tenants
):
    _mine, other = tenants
    their_browser = app.test_client()
    assert login(their_browser, DOMAIN_ADMIN_EMAIL).status_code == 302
    response = logged_in.post(
        f"/admin/admins/{domain_admin.id}/domains", data={"domains": [str(other.id)]}
    )
    assert response.status_code == 302
    changed = by_email(session, DOMAIN_ADMIN_EMAIL)
    assert [domain.name for domain in changed.domains] == ["other.test"]
    assert their_browser.get("/admin/").status_code == 302


def test_change_domains_to_none_is_refused(
    logged_in: FlaskClient, session: Session, domain_admin: AdminUser
):
    response = logged_in.post(f"/admin/admins/{domain_admin.id}/domains", data={})
    assert response.status_code == 200
    assert "needs at least one domain" in errors_of(response, "domains")
    assert [d.name for d in by_email(session, DOMAIN_ADMIN_EMAIL).domains] == ["mine.test"]


def test_reset_password_of_another_admin(
    app: Flask, logged_in: FlaskClient, session: Session, domain_admin: AdminUser
):
    their_browser = app.test_client()
    login(their_browser, DOMAIN_ADMIN_EMAIL)
    response = logged_in.post(
        f"/admin/admins/{domain_admin.id}/password",
        data={"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )
    assert response.status_code == 302
    assert auth.verify_password(
        by_email(session, DOMAIN_ADMIN_EMAIL).password_hash, NEW_PASSWORD
    ).ok
    assert their_browser.get("/admin/").status_code == 302
    assert login(app.test_client(), DOMAIN_ADMIN_EMAIL, NEW_PASSWORD).status_code == 302


def test_reset_own_password_keeps_this_session_and_ends_the_others(
    app: Flask, logged_in: FlaskClient, admin: AdminUser
):
    other_device = app.test_client()
    login(other_device)
    response = logged_in.post(
        f"/admin/admins/{admin.id}/password",
        data={"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )
    assert response.status_code == 302
    assert logged_in.get("/admin/").status_code == 200
    assert other_device.get("/admin/").status_code == 302


def test_delete_admin_after_confirmation(
    logged_in: FlaskClient, session: Session, domain_admin: AdminUser
):
    confirm = logged_in.get(f"/admin/admins/{domain_admin.id}/delete/confirm")
    assert confirm.status_code == 200
    response = logged_in.post(f"/admin/admins/{domain_admin.id}/delete")
    assert response.status_code == 302
    assert by_email(session, DOMAIN_ADMIN_EMAIL) is None
    assert count(session, Domain) == 2


def test_last_superadmin_cannot_be_deleted(logged_in: FlaskClient, session: Session, admin):
    response = logged_in.post(f"/admin/admins/{admin.id}/delete")
    assert response.status_code == 200
    assert "the last superadmin cannot be deleted" in text_of(response)
    assert by_email(session, "root@example.com") is not None


def test_missing_admin_is_404(logged_in: FlaskClient):
    assert logged_in.get("/admin/admins/999999").status_code == 404


def test_admins_pages_are_forbidden_to_domain_admins(
    as_domain_admin: FlaskClient, session: Session, admin: AdminUser
):
    make_domain(session, "extra.test")
    admins_before = count(session, AdminUser)
    assert as_domain_admin.get("/admin/admins").status_code == 403
    assert as_domain_admin.get("/admin/admins/new").status_code == 403
    assert as_domain_admin.get(f"/admin/admins/{admin.id}").status_code == 403
    denied = as_domain_admin.post(
        "/admin/admins/new",
        data={
            "email": "sneaky@example.com",
            "password": NEW_PASSWORD,
            "password_confirm": NEW_PASSWORD,
            "superadmin": "y",
        },
    )
    assert denied.status_code == 403
    assert as_domain_admin.post(f"/admin/admins/{admin.id}/delete").status_code == 403
    assert (
        as_domain_admin.post(
            f"/admin/admins/{admin.id}/password",
            data={"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
        ).status_code
        == 403
    )
    assert count(session, AdminUser) == admins_before
    assert auth.verify_password(
        by_email(session, "root@example.com").password_hash, ADMIN_PASSWORD
    ).ok
    nav = text_of(as_domain_admin.get("/admin/"))
    assert 'href="/admin/admins"' not in nav


def test_domain_admin_cannot_create_or_delete_domains(
    as_domain_admin: FlaskClient, session: Session, tenants
):
    mine, _other = tenants
    assert as_domain_admin.post("/admin/domains", data={"name": "new.test"}).status_code == 403
    assert as_domain_admin.post(f"/admin/domains/{mine.id}/delete").status_code == 403
    assert as_domain_admin.get(f"/admin/domains/{mine.id}/delete/confirm").status_code == 403
    assert count(session, Domain) == 2
    html = text_of(as_domain_admin.get("/admin/domains"))
    assert 'action="/admin/domains"' not in html


def test_superadmin_sees_the_admins_link(logged_in: FlaskClient):
    assert 'href="/admin/admins"' in text_of(logged_in.get("/admin/"))
