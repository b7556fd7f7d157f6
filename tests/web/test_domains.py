"""Domains page: list with counts, create, open and close signup, delete only when empty."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Domain
from provider.services import provisioning
from tests.conftest import TEST_ACTOR, make_domain, make_mailbox
from tests.web.conftest import count, errors_of, text_of


def test_domain_list_shows_signup_state_and_mailbox_count(logged_in: FlaskClient, session: Session):
    make_mailbox(session, "a@example.test")
    make_mailbox(session, "b@example.test")
    make_domain(session, "open.test", signup_enabled=True)
    html = text_of(logged_in.get("/admin/domains"))
    assert "example.test" in html and "open.test" in html
    row = html[html.index("example.test") : html.index("</tr>", html.index("example.test"))]
    assert '<td class="num">2</td>' in row
    assert "closed" in row
    open_row = html[html.index("open.test") : html.index("</tr>", html.index("open.test"))]
    assert ">open<" in open_row


def test_superadmin_creates_a_domain(logged_in: FlaskClient, session: Session):
    response = logged_in.post("/admin/domains", data={"name": "New.Test", "signup_enabled": "y"})
    assert response.status_code == 302
    domain = session.scalar(select(Domain).where(Domain.name == "new.test"))
    assert domain is not None and domain.signup_enabled
    assert "Domain new.test added." in text_of(logged_in.get("/admin/domains"))
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "domain.create"))
    assert event is not None and event.actor == "admin:root@example.com"


def test_domain_create_without_signup_checkbox_keeps_signup_closed(
    logged_in: FlaskClient, session: Session
):
    logged_in.post("/admin/domains", data={"name": "closed.test"})
    domain = session.scalar(select(Domain).where(Domain.name == "closed.test"))
    assert domain is not None and not domain.signup_enabled


def test_invalid_domain_name_is_refused_next_to_the_field(logged_in: FlaskClient, session: Session):
    response = logged_in.post("/admin/domains", data={"name": "not a domain"})
    assert response.status_code == 200
    assert "is not a valid domain name" in errors_of(response, "name")
    assert count(session, Domain) == 0


def test_duplicate_domain_is_refused(logged_in: FlaskClient, session: Session):
    make_domain(session, "dup.test")
    response = logged_in.post("/admin/domains", data={"name": "DUP.test"})
    assert response.status_code == 200
    assert "already exists" in errors_of(response, "name")
    assert count(session, Domain) == 1


def test_empty_domain_name_is_required(logged_in: FlaskClient, session: Session):
    response = logged_in.post("/admin/domains", data={"name": ""})
    assert response.status_code == 200
    assert "required" in errors_of(response, "name")


def test_signup_toggle_opens_and_closes(logged_in: FlaskClient, session: Session):
    domain = make_domain(session, "toggle.test")
    domain_id = domain.id
    assert logged_in.post(f"/admin/domains/{domain_id}/signup").status_code == 302
    assert session.get(Domain, domain_id).signup_enabled is True
    logged_in.post(f"/admin/domains/{domain_id}/signup")
    session.expire_all()
    assert session.get(Domain, domain_id).signup_enabled is False


def test_closing_signup_asks_first_and_a_repeated_post_changes_nothing(
    logged_in: FlaskClient, session: Session
):
    domain = make_domain(session, "open.test", signup_enabled=True)
    domain_id = domain.id
    listing = text_of(logged_in.get("/admin/domains"))
    assert f'href="/admin/domains/{domain_id}/signup">Close signup</a>' in listing
    confirm = text_of(logged_in.get(f"/admin/domains/{domain_id}/signup"))
    assert "Close public signup for open.test?" in confirm
    assert 'name="signup" value="closed"' in confirm
    session.expire_all()
    assert session.get(Domain, domain_id).signup_enabled is True  # asking changed nothing
    for _ in range(2):  # a double click, a reload that posts again
        response = logged_in.post(f"/admin/domains/{domain_id}/signup", data={"signup": "closed"})
        assert response.status_code == 302
        session.expire_all()
        assert session.get(Domain, domain_id).signup_enabled is False
    closed = session.scalars(
        select(AuditEvent).where(
            AuditEvent.action == "domain.update", AuditEvent.target == "open.test"
        )
    ).all()
    assert [event.after["signup_enabled"] for event in closed] == [False]  # the repeat: nothing
    assert (
        logged_in.post(f"/admin/domains/{domain_id}/signup", data={"signup": "x"}).status_code
        == 400
    )
    confirm = text_of(logged_in.get(f"/admin/domains/{domain_id}/signup"))
    assert 'name="signup" value="open"' in confirm


def test_domain_delete_asks_for_confirmation_then_deletes(logged_in: FlaskClient, session: Session):
    domain = make_domain(session, "gone.test")
    confirm = logged_in.get(f"/admin/domains/{domain.id}/delete/confirm")
    assert confirm.status_code == 200
    assert f'action="/admin/domains/{domain.id}/delete"' in text_of(confirm)
    assert count(session, Domain) == 1
    response = logged_in.post(f"/admin/domains/{domain.id}/delete")
    assert response.status_code == 302
    assert count(session, Domain) == 0


def test_domain_with_mailboxes_or_aliases_cannot_be_deleted(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session, "keep@example.test")
    provisioning.create_alias(session, "other@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    response = logged_in.post(f"/admin/domains/{mailbox.domain_id}/delete")
    assert response.status_code == 200
    assert "still has 1 mailbox(es) and 1 alias(es)" in text_of(response)
    assert count(session, Domain) == 1


def test_delete_of_missing_domain_is_404(logged_in: FlaskClient):
    assert logged_in.post("/admin/domains/999999/delete").status_code == 404
    assert logged_in.get("/admin/domains/999999/delete/confirm").status_code == 404


# --- the postmaster target (issue 11, item 10) ---------------------------------------------


def test_superadmin_sets_the_postmaster_addresses_of_a_domain(
    logged_in: FlaskClient, session: Session
):
    domain = make_domain(session, "example.test")
    make_mailbox(session, "noc@example.test")
    make_mailbox(session, "abuse@ops.test")
    page = text_of(logged_in.get(f"/admin/domains/{domain.id}"))
    assert "is kept in" in page  # nobody here yet: the spool, and where it is
    response = logged_in.post(
        f"/admin/domains/{domain.id}/postmaster",
        data={"postmaster": "NOC@example.test,\r\nabuse@ops.test"},
    )
    assert response.status_code == 302
    session.expire_all()
    assert session.get(Domain, domain.id).postmaster == "noc@example.test, abuse@ops.test"
    page = text_of(logged_in.get(f"/admin/domains/{domain.id}"))
    assert "goes to noc@example.test, abuse@ops.test" in page
    assert "noc@example.test, abuse@ops.test" in text_of(logged_in.get("/admin/domains"))
    event = session.scalar(
        select(AuditEvent).where(AuditEvent.action == "domain.update").order_by(AuditEvent.id)
    )
    assert event is not None and event.after["postmaster"] == [
        "noc@example.test",
        "abuse@ops.test",
    ]


def test_emptying_the_postmaster_field_restores_the_default(
    logged_in: FlaskClient, session: Session
):
    domain = make_domain(session, "example.test")
    make_mailbox(session, "noc@example.test")
    provisioning.set_domain_postmaster(session, domain, "noc@example.test", actor=TEST_ACTOR)
    session.commit()
    assert "default" not in text_of(logged_in.get("/admin/domains")).split("example.test")[1]
    response = logged_in.post(f"/admin/domains/{domain.id}/postmaster", data={"postmaster": ""})
    assert response.status_code == 302
    session.expire_all()
    assert session.get(Domain, domain.id).postmaster is None
    # The superadmin root@example.com has no mailbox here: still the spool.
    assert "is kept in" in text_of(logged_in.get(f"/admin/domains/{domain.id}"))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("someone@outside.test", "is not a mailbox or alias hosted here"),
        ("nobody@example.test", "is not a mailbox or alias hosted here"),
        ("not an address", "is not an e-mail address"),
        (", ".join(f"a{n}@example.test" for n in range(11)), "at most 10 postmaster addresses"),
    ],
)
def test_a_postmaster_address_that_cannot_receive_here_is_refused(
    logged_in: FlaskClient, session: Session, value: str, error: str
):
    domain = make_domain(session, "example.test")
    response = logged_in.post(f"/admin/domains/{domain.id}/postmaster", data={"postmaster": value})
    assert response.status_code == 200
    assert error in errors_of(response, "postmaster")
    session.expire_all()
    assert session.get(Domain, domain.id).postmaster is None


def test_a_domain_admin_sets_the_postmaster_only_to_addresses_of_their_domains(
    as_domain_admin: FlaskClient, session: Session, tenants
):
    mine, other = tenants
    make_mailbox(session, "noc@mine.test")
    make_mailbox(session, "spy@other.test")
    page = as_domain_admin.get(f"/admin/domains/{mine.id}")
    assert page.status_code == 200 and "/postmaster" in text_of(page)
    assert "/data/" not in text_of(page)  # the spool's path on the server is not theirs to see
    response = as_domain_admin.post(
        f"/admin/domains/{mine.id}/postmaster", data={"postmaster": "spy@other.test"}
    )
    assert "is not a mailbox or alias hosted here" in errors_of(response, "postmaster")
    response = as_domain_admin.post(
        f"/admin/domains/{mine.id}/postmaster", data={"postmaster": "noc@mine.test"}
    )
    assert response.status_code == 302
    session.expire_all()
    assert session.get(Domain, mine.id).postmaster == "noc@mine.test"
    assert as_domain_admin.get(f"/admin/domains/{other.id}").status_code == 404
    assert (
        as_domain_admin.post(
            f"/admin/domains/{other.id}/postmaster", data={"postmaster": "noc@mine.test"}
        ).status_code
        == 404
    )
