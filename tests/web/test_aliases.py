"""Aliases: add on the mailbox page, refuse collisions, delete, and the searchable list."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import Alias, AuditEvent, Mailbox
from provider.services import provisioning
from tests.conftest import TEST_ACTOR, make_domain, make_mailbox
from tests.web.conftest import count, errors_of, text_of


def test_add_alias_to_a_mailbox(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "rosa@example.test")
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}/aliases", data={"address": "Sales@Example.test"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/mailboxes/{mailbox.id}"
    alias = session.scalar(select(Alias))
    assert alias is not None
    assert alias.address == "sales@example.test" and alias.mailbox_id == mailbox.id
    page = text_of(logged_in.get(f"/admin/mailboxes/{mailbox.id}"))
    assert "sales@example.test" in page
    assert session.scalar(select(AuditEvent).where(AuditEvent.action == "alias.create"))


def test_alias_colliding_with_a_mailbox_is_refused(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "rosa@example.test")
    make_mailbox(session, "taken@example.test")
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}/aliases", data={"address": "TAKEN@example.test"}
    )
    assert response.status_code == 200
    assert "mailbox taken@example.test already exists" in errors_of(response, "address")
    assert count(session, Alias) == 0
    assert count(session, Mailbox) == 2


def test_alias_colliding_with_an_alias_is_refused(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "rosa@example.test")
    provisioning.create_alias(session, "info@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}/aliases", data={"address": "info@example.test"}
    )
    assert response.status_code == 200
    assert "is already an alias" in errors_of(response, "address")
    assert count(session, Alias) == 1


def test_alias_in_a_domain_not_hosted_is_refused(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "rosa@example.test")
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}/aliases", data={"address": "x@elsewhere.test"}
    )
    assert response.status_code == 200
    assert "is not hosted here" in errors_of(response, "address")
    bad = logged_in.post(f"/admin/mailboxes/{mailbox.id}/aliases", data={"address": "nonsense"})
    assert "is not an e-mail address" in errors_of(bad, "address")
    assert count(session, Alias) == 0


def test_failed_alias_keeps_the_rest_of_the_mailbox_page(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "rosa@example.test", quota_gb=12)
    response = logged_in.post(f"/admin/mailboxes/{mailbox.id}/aliases", data={"address": ""})
    assert response.status_code == 200
    html = text_of(response)
    # The edit form still shows the mailbox's values, not the alias form's empty post.
    assert re.search(r'id="quota_gb"[^>]*value="12"', html)


def test_delete_alias_from_the_mailbox_page(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "rosa@example.test")
    alias = provisioning.create_alias(session, "info@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    response = logged_in.post(f"/admin/aliases/{alias.id}/delete")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/mailboxes/{mailbox.id}"
    assert count(session, Alias) == 0
    assert count(session, Mailbox) == 1


def test_delete_alias_from_the_list_returns_to_the_list(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "rosa@example.test")
    alias = provisioning.create_alias(session, "info@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    response = logged_in.post(f"/admin/aliases/{alias.id}/delete", data={"back": "list"})
    assert response.headers["Location"] == "/admin/aliases"
    assert count(session, Alias) == 0


def test_delete_missing_alias_is_404(logged_in: FlaskClient):
    assert logged_in.post("/admin/aliases/999999/delete").status_code == 404


def test_alias_list_searches_alias_and_mailbox_addresses(logged_in: FlaskClient, session: Session):
    rosa = make_mailbox(session, "rosa@example.test")
    make_domain(session, "other.test")
    sam = make_mailbox(session, "sam@other.test")
    for address, mailbox in (
        ("sales@example.test", rosa),
        ("billing@example.test", rosa),
        ("help@other.test", sam),
    ):
        provisioning.create_alias(session, address, mailbox, actor=TEST_ACTOR)
    session.commit()
    listed = re.compile(r'<td class="address">([^<]+)</td>')
    everything = text_of(logged_in.get("/admin/aliases"))
    assert listed.findall(everything) == [
        "billing@example.test",
        "help@other.test",
        "sales@example.test",
    ]
    assert listed.findall(text_of(logged_in.get("/admin/aliases?q=sal"))) == ["sales@example.test"]
    assert listed.findall(text_of(logged_in.get("/admin/aliases?q=sam@"))) == ["help@other.test"]
    assert "No alias matches." in text_of(logged_in.get("/admin/aliases?q=zzz"))
