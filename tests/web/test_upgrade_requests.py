"""Trial upgrade requests reach someone: the dashboard and the mailbox list show them, the
domain's admins get an e-mail through the outbound queue, and an admin converts or declines
with a message the customer reads in /account."""

from __future__ import annotations

import re
from email import message_from_bytes

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Mailbox, OutboundMessage, UpgradeRequest
from provider.services import outbound
from tests.conftest import ADMIN_EMAIL, login, make_admin, make_mailbox
from tests.web.conftest import DOMAIN_ADMIN_EMAIL, errors_of
from tests.web.test_account import account_login
from tests.web.timemachine_helpers import text


@pytest.fixture
def tina(session: Session, tenants) -> Mailbox:
    return make_mailbox(session, "tina@mine.test", plan="trial", contact_email="t@else.test")


@pytest.fixture
def asked(app: Flask, tina: Mailbox, admin, domain_admin) -> Mailbox:
    """tina@mine.test's owner has asked for the upgrade (in a browser of her own)."""
    owner = app.test_client()
    assert account_login(owner, tina.address).status_code == 302
    assert owner.post("/account/upgrade").status_code == 302
    return tina


def _requests(session: Session) -> list[UpgradeRequest]:
    session.expire_all()
    return list(session.scalars(select(UpgradeRequest).order_by(UpgradeRequest.id)))


def test_a_request_e_mails_the_domain_admins_through_the_queue(
    asked: Mailbox, session: Session, tenants
):
    make_admin(session, "elsewhere@other.test", superadmin=False, domains=[tenants[1]])
    [request] = _requests(session)
    assert request.status == "pending" and request.mailbox_id == asked.id
    [queued] = session.scalars(select(OutboundMessage))
    assert (queued.sender, queued.mailbox_id) == ("", None)
    # The domain's admin and the superadmin; not the admin of another domain.
    assert sorted(r.address for r in queued.recipients) == sorted([ADMIN_EMAIL, DOMAIN_ADMIN_EMAIL])
    mail = message_from_bytes(outbound.read_spool(queued.queue_id))
    assert mail["Subject"] == "Upgrade requested for tina@mine.test"
    assert mail["Auto-Submitted"] == "auto-generated"
    body = mail.get_payload(decode=True).decode()
    assert f"/admin/mailboxes/{asked.id}" in body and "t@else.test" in body


def test_the_dashboard_the_mailbox_list_and_the_nav_show_pending_requests(
    asked: Mailbox, logged_in: FlaskClient
):
    dashboard = text(logged_in.get("/admin/"))
    card = re.search(
        r'<section class="card alert" id="upgrade-requests".*?</section>', dashboard, re.S
    )
    assert card and 'data-address="tina@mine.test"' in card.group(0)
    assert f'action="/admin/mailboxes/{asked.id}/convert"' in card.group(0)
    assert 'id="nav-upgrades"' in dashboard
    listing = text(logged_in.get("/admin/mailboxes"))
    row = re.search(r"tina@mine.test</a>.*?</tr>", listing, re.S)
    assert row and "upgrade requested" in row.group(0)


def test_converting_answers_the_request(asked: Mailbox, logged_in: FlaskClient, session):
    response = logged_in.post(f"/admin/mailboxes/{asked.id}/convert")
    assert response.status_code == 302
    [request] = _requests(session)
    assert request.status == "converted" and request.answered_by == f"admin:{ADMIN_EMAIL}"
    session.refresh(asked)
    assert asked.plan == "paid"
    dashboard = text(logged_in.get("/admin/"))
    assert 'id="upgrade-requests"' not in dashboard and 'id="nav-upgrades"' not in dashboard
    assert "upgrade requested" not in text(logged_in.get("/admin/mailboxes"))


def test_declining_needs_a_message_and_the_customer_reads_it(
    asked: Mailbox, logged_in: FlaskClient, app: Flask, session: Session
):
    [request] = _requests(session)
    url = f"/admin/mailboxes/{asked.id}/upgrade-requests/{request.id}/decline"
    assert url in text(logged_in.get(f"/admin/mailboxes/{asked.id}"))
    assert url in text(logged_in.get("/admin/"))
    empty = logged_in.post(url, data={"message": "   "})
    assert empty.status_code == 200 and "the customer reads this" in errors_of(empty, "message")
    assert _requests(session)[0].status == "pending"
    answer = "We only sell paid plans to companies.\nWrite to sales@mine.test."
    response = logged_in.post(url, data={"message": answer})
    assert response.status_code == 302
    [request] = _requests(session)
    assert request.status == "declined" and request.message == answer
    [event] = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "trial.upgrade_declined")
    )
    assert event.target == asked.address and event.after["message"] == answer
    session.refresh(asked)
    assert asked.plan == "trial"
    # The customer sees the answer, and may ask again.
    owner = app.test_client()
    account_login(owner, asked.address)
    page = text(owner.get("/account/"))
    declined = re.search(r'<div id="upgrade-declined".*?</div>', page, re.S)
    assert declined and "We only sell paid plans to companies." in declined.group(0)
    assert 'action="/account/upgrade"' in page
    owner.post("/account/upgrade")
    assert [r.status for r in _requests(session)] == ["declined", "pending"]
    assert 'id="upgrade-declined"' not in text(owner.get("/account/"))
    # The old request cannot be answered twice.
    again = logged_in.post(url, data={"message": "No."})
    assert "already answered" in text(again)


def test_another_domains_admin_neither_sees_nor_answers_the_request(
    asked: Mailbox, client: FlaskClient, session: Session, tenants
):
    make_admin(session, "elsewhere@other.test", superadmin=False, domains=[tenants[1]])
    login(client, "elsewhere@other.test")
    assert 'id="upgrade-requests"' not in text(client.get("/admin/"))
    [request] = _requests(session)
    url = f"/admin/mailboxes/{asked.id}/upgrade-requests/{request.id}/decline"
    assert client.get(url).status_code == 404
    assert client.post(url, data={"message": "no"}).status_code == 404
    assert _requests(session)[0].status == "pending"


def test_a_request_id_of_another_mailbox_is_404(
    asked: Mailbox, logged_in: FlaskClient, session: Session
):
    other = make_mailbox(session, "other@mine.test", plan="trial")
    [request] = _requests(session)
    url = f"/admin/mailboxes/{other.id}/upgrade-requests/{request.id}/decline"
    assert logged_in.get(url).status_code == 404


def test_deleting_the_mailbox_takes_its_requests_along(asked: Mailbox, session: Session):
    from provider.services import provisioning
    from tests.conftest import TEST_ACTOR

    provisioning.delete_mailbox(session, asked, actor=TEST_ACTOR)
    session.commit()
    assert _requests(session) == []
