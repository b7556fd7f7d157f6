"""The domain-admin boundary: another domain's records answer 404 and nothing is written."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import Alias, AuditEvent, Domain, Mailbox
from provider.services import audit, provisioning
from tests.conftest import TEST_ACTOR, make_mailbox
from tests.web.conftest import count, errors_of, text_of

PASSWORD = "a long new passphrase"


@pytest.fixture
def records(session: Session, tenants: tuple[Domain, Domain]) -> dict[str, int]:
    """A mailbox and an alias in each tenant's domain (ids, so they survive expiry)."""
    mine = make_mailbox(session, "me@mine.test", quota_gb=10)
    theirs = make_mailbox(session, "them@other.test", quota_gb=10, plan="trial")
    my_alias = provisioning.create_alias(session, "alias@mine.test", mine, actor=TEST_ACTOR)
    their_alias = provisioning.create_alias(session, "alias@other.test", theirs, actor=TEST_ACTOR)
    session.commit()
    return {
        "my_mailbox": mine.id,
        "their_mailbox": theirs.id,
        "my_alias": my_alias.id,
        "their_alias": their_alias.id,
        "my_domain": tenants[0].id,
        "their_domain": tenants[1].id,
    }


def snapshot(session: Session) -> list[tuple]:
    """Everything a forbidden request could have changed."""
    session.expire_all()
    mailboxes = session.execute(
        select(
            Mailbox.address,
            Mailbox.quota_bytes,
            Mailbox.status,
            Mailbox.plan,
            Mailbox.imap_enabled,
            Mailbox.pop3_enabled,
            Mailbox.password_hash,
            Mailbox.contact_email,
        ).order_by(Mailbox.id)
    ).all()
    aliases = session.execute(select(Alias.address, Alias.mailbox_id).order_by(Alias.id)).all()
    domains = session.execute(select(Domain.name, Domain.signup_enabled).order_by(Domain.id)).all()
    return [*mailboxes, *aliases, *domains, ("events", count(session, AuditEvent))]


def test_domain_admin_cannot_view_other_domains_mailbox(
    as_domain_admin: FlaskClient, records: dict[str, int]
):
    theirs = records["their_mailbox"]
    assert as_domain_admin.get(f"/admin/mailboxes/{theirs}").status_code == 404
    assert as_domain_admin.get(f"/admin/mailboxes/{theirs}/delete/confirm").status_code == 404
    assert as_domain_admin.get(f"/admin/mailboxes/{records['my_mailbox']}").status_code == 200


def test_domain_admin_cannot_edit_other_domains_mailbox(
    as_domain_admin: FlaskClient, session: Session, records: dict[str, int]
):
    before = snapshot(session)
    theirs = records["their_mailbox"]
    posts = {
        f"/admin/mailboxes/{theirs}": {
            "quota_gb": "50",
            "protocols": "pop3",
            "plan": "paid",
            "contact_email": "x@evil.example",
        },
        f"/admin/mailboxes/{theirs}/suspend": {},
        f"/admin/mailboxes/{theirs}/reactivate": {},
        f"/admin/mailboxes/{theirs}/password": {"password": PASSWORD, "password_confirm": PASSWORD},
        f"/admin/mailboxes/{theirs}/aliases": {"address": "grab@other.test"},
        f"/admin/mailboxes/{theirs}/delete": {},
    }
    for url, data in posts.items():
        assert as_domain_admin.post(url, data=data).status_code == 404, url
    assert snapshot(session) == before


def test_domain_admin_cannot_delete_other_domains_alias(
    as_domain_admin: FlaskClient, session: Session, records: dict[str, int]
):
    before = snapshot(session)
    response = as_domain_admin.post(f"/admin/aliases/{records['their_alias']}/delete")
    assert response.status_code == 404
    assert snapshot(session) == before


def test_domain_admin_cannot_touch_other_domain(
    as_domain_admin: FlaskClient, session: Session, records: dict[str, int]
):
    before = snapshot(session)
    theirs = records["their_domain"]
    assert as_domain_admin.post(f"/admin/domains/{theirs}/signup").status_code == 404
    assert as_domain_admin.post(f"/admin/domains/{theirs}/delete").status_code == 404
    assert as_domain_admin.get(f"/admin/domains/{theirs}/delete/confirm").status_code == 404
    assert snapshot(session) == before


def test_domain_admin_can_open_signup_of_own_domain(
    as_domain_admin: FlaskClient, session: Session, records: dict[str, int]
):
    response = as_domain_admin.post(f"/admin/domains/{records['my_domain']}/signup")
    assert response.status_code == 302
    session.expire_all()
    assert session.get(Domain, records["my_domain"]).signup_enabled is True


def test_domain_admin_cannot_add_alias_in_other_domain_to_own_mailbox(
    as_domain_admin: FlaskClient, session: Session, records: dict[str, int]
):
    before = snapshot(session)
    response = as_domain_admin.post(
        f"/admin/mailboxes/{records['my_mailbox']}/aliases", data={"address": "steal@other.test"}
    )
    assert response.status_code == 200
    assert "only use addresses in the domains you manage" in errors_of(response, "address")
    # A domain that is not hosted at all reads the same: nothing is revealed about others.
    unknown = as_domain_admin.post(
        f"/admin/mailboxes/{records['my_mailbox']}/aliases", data={"address": "x@nowhere.test"}
    )
    assert "only use addresses in the domains you manage" in errors_of(unknown, "address")
    assert snapshot(session) == before


def test_domain_admin_manages_own_mailbox_and_alias(
    as_domain_admin: FlaskClient, session: Session, records: dict[str, int]
):
    mine = records["my_mailbox"]
    assert as_domain_admin.post(f"/admin/mailboxes/{mine}/suspend").status_code == 302
    added = as_domain_admin.post(
        f"/admin/mailboxes/{mine}/aliases", data={"address": "new@mine.test"}
    )
    assert added.status_code == 302
    assert as_domain_admin.post(f"/admin/aliases/{records['my_alias']}/delete").status_code == 302
    session.expire_all()
    assert session.get(Mailbox, mine).status == "suspended"
    assert sorted(alias.address for alias in session.scalars(select(Alias))) == [
        "alias@other.test",
        "new@mine.test",
    ]


def test_domain_admin_cannot_create_mailbox_in_other_domain(
    as_domain_admin: FlaskClient, session: Session, records: dict[str, int]
):
    form = text_of(as_domain_admin.get("/admin/mailboxes/new"))
    assert "mine.test" in form and "other.test" not in form
    before = count(session, Mailbox)
    response = as_domain_admin.post(
        "/admin/mailboxes/new",
        data={
            "local_part": "intruder",
            "domain": str(records["their_domain"]),
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "quota_gb": "8",
            "protocols": "imap",
            "plan": "paid",
        },
    )
    assert response.status_code == 200
    assert "Not a valid choice" in errors_of(response, "domain")
    sneaky = as_domain_admin.post(
        "/admin/mailboxes/new",
        data={
            "local_part": "intruder@other.test",
            "domain": str(records["my_domain"]),
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "quota_gb": "8",
            "protocols": "imap",
            "plan": "paid",
        },
    )
    assert sneaky.status_code == 200
    assert count(session, Mailbox) == before


def test_domain_admin_lists_show_only_their_domains(
    as_domain_admin: FlaskClient, records: dict[str, int]
):
    mailboxes = text_of(as_domain_admin.get("/admin/mailboxes"))
    assert "me@mine.test" in mailboxes and "other.test" not in mailboxes
    filtered = text_of(as_domain_admin.get(f"/admin/mailboxes?domain={records['their_domain']}"))
    assert "them@other.test" not in filtered
    searched = text_of(as_domain_admin.get("/admin/mailboxes?q=them"))
    assert "them@other.test" not in searched
    aliases = text_of(as_domain_admin.get("/admin/aliases"))
    assert "alias@mine.test" in aliases and "alias@other.test" not in aliases
    domains = text_of(as_domain_admin.get("/admin/domains"))
    assert "mine.test" in domains and "other.test" not in domains


def test_domain_admin_dashboard_counts_only_their_domains(
    as_domain_admin: FlaskClient, records: dict[str, int]
):
    html = text_of(as_domain_admin.get("/admin/"))
    assert re.search(r'id="stat-domains">1<', html)
    assert re.search(r'id="stat-mailboxes">1<', html)
    assert re.search(r'data-key="trial">0<', html)
    assert "<strong>10 GB</strong> allocated" in html


def test_domain_admin_audit_log_shows_only_their_domains(
    as_domain_admin: FlaskClient, session: Session, records: dict[str, int]
):
    audit.record(session, TEST_ACTOR, "admin.password", "someone@example.com")
    session.commit()
    html = text_of(as_domain_admin.get("/admin/audit"))
    assert "me@mine.test" in html and "alias@mine.test" in html
    assert "other.test" not in html
    assert "someone@example.com" not in html
    assert "other.test" not in text_of(as_domain_admin.get("/admin/audit?target=other"))
