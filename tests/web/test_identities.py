"""Identities in the admin panel (mailbox page) and in the owner's /account/identities."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Identity, Mailbox
from provider.services import identities, provisioning
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_mailbox
from tests.web.conftest import count, errors_of, text_of
from tests.web.timemachine_helpers import csrf_token


def add_identity(mailbox: Mailbox, address: str, name: str = "") -> Identity:
    from provider.extensions import db

    identity = identities.add_identity(db.session, mailbox, address, name, actor=TEST_ACTOR)
    db.session.commit()
    return identity


def actions(session: Session, prefix: str = "identity.") -> list[tuple[str, str, str]]:
    session.expire_all()
    rows = session.execute(
        select(AuditEvent.action, AuditEvent.target, AuditEvent.actor)
        .where(AuditEvent.action.like(f"{prefix}%"))
        .order_by(AuditEvent.id)
    ).all()
    return [tuple(row) for row in rows]


def section_of(html: str) -> str:
    match = re.search(r'<section class="card" id="identities".*?</section>', html, re.S)
    assert match, "no Identities section on the page"
    return match.group(0)


# --- admin panel ------------------------------------------------------------------------------


def test_mailbox_page_lists_every_sender_address_with_its_kind(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    provisioning.create_alias(session, "info@example.test", alice, actor=TEST_ACTOR)
    session.commit()
    add_identity(alice, "sales@example.test", "Sales Team")
    section = section_of(text_of(logged_in.get(f"/admin/mailboxes/{alice.id}")))
    kinds = re.findall(r'<li data-kind="(\w+)">\s*<span class="address">([^<]+)</span>', section)
    assert kinds == [
        ("mailbox", "alice@example.test"),
        ("alias", "info@example.test"),
        ("identity", "sales@example.test"),
    ]
    assert "“Sales Team”" in section
    assert 'name="address"' in section and 'name="display_name"' in section


def test_admin_adds_an_identity(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    response = logged_in.post(
        f"/admin/mailboxes/{alice.id}/identities",
        data={"address": "Team@Example.test", "display_name": "The Team"},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/mailboxes/{alice.id}#identities"
    page = text_of(logged_in.get(response.headers["Location"]))
    assert "alice@example.test may now send as team@example.test." in page
    identity = session.scalar(select(Identity))
    assert (identity.address, identity.display_name) == ("team@example.test", "The Team")
    assert actions(session) == [("identity.create", "team@example.test", "admin:root@example.com")]


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"address": "", "display_name": ""}, "identity-address", "This field is required."),
        ({"address": "nonsense"}, "identity-address", "is not an e-mail address"),
        ({"address": "x@elsewhere.test"}, "identity-address", "is not hosted here"),
        ({"address": "alice@example.test"}, "identity-address", "own address"),
        ({"address": "bob@example.test"}, "identity-address", "another mailbox"),
        ({"address": "x" * 400 + "@example.test"}, "identity-address", "320 characters"),
        (
            {"address": "t@example.test", "display_name": "T\r\nBcc: victim@example.test"},
            "identity-display-name",
            "line breaks",
        ),
        (
            {"address": "t@example.test", "display_name": "n" * 201},
            "identity-display-name",
            "at most 200",
        ),
    ],
)
def test_refused_identities_show_the_message_next_to_the_field(
    logged_in, session, data, field, message
):
    alice = make_mailbox(session, "alice@example.test")
    make_mailbox(session, "bob@example.test")
    response = logged_in.post(f"/admin/mailboxes/{alice.id}/identities", data=data)
    assert response.status_code == 200
    assert message in errors_of(response, field), errors_of(response, field)
    # The form keeps what was typed (bar control characters the browser never sends).
    assert count(session, Identity) == 0
    assert actions(session) == []


def test_nul_in_a_form_is_refused_before_any_view(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    for data in (
        {"address": "a\x00b@example.test"},
        {"address": "t@example.test", "display_name": "\x00"},
    ):
        response = logged_in.post(f"/admin/mailboxes/{alice.id}/identities", data=data)
        assert response.status_code == 400
    assert count(session, Identity) == 0


def test_alias_form_errors_stay_with_the_alias_form(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    response = logged_in.post(f"/admin/mailboxes/{alice.id}/identities", data={"address": "x"})
    assert errors_of(response, "address") == ""
    assert "not an e-mail address" in errors_of(response, "identity-address")


def test_pop3_only_mailbox_page_says_why_and_has_no_form(logged_in, session):
    pop = make_mailbox(session, "pop@example.test", protocols="pop3")
    section = section_of(text_of(logged_in.get(f"/admin/mailboxes/{pop.id}")))
    assert (
        "POP3-only mailboxes send only as their own address and aliases; identities need IMAP"
        in section
    )
    assert "<form" not in section.replace('class="inline"', "")  # no add form
    posted = logged_in.post(
        f"/admin/mailboxes/{pop.id}/identities", data={"address": "x@example.test"}
    )
    assert posted.status_code == 200
    assert "identities need IMAP" in text_of(posted)
    assert count(session, Identity) == 0


def test_switch_off_on_and_delete(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    identity = add_identity(alice, "team@example.test")
    off = logged_in.post(f"/admin/identities/{identity.id}/enabled", data={"enabled": "0"})
    assert off.status_code == 302
    session.expire_all()
    assert not identities.may_send_as(session, alice, "team@example.test")
    assert "Switch on" in section_of(text_of(logged_in.get(f"/admin/mailboxes/{alice.id}")))
    logged_in.post(f"/admin/identities/{identity.id}/enabled", data={"enabled": "1"})
    session.expire_all()
    assert identities.may_send_as(session, alice, "team@example.test")
    # Anything else changes nothing.
    logged_in.post(f"/admin/identities/{identity.id}/enabled", data={"enabled": "yes"})
    session.expire_all()
    assert identities.may_send_as(session, alice, "team@example.test")
    deleted = logged_in.post(f"/admin/identities/{identity.id}/delete")
    assert deleted.status_code == 302
    assert count(session, Identity) == 0
    assert [a for a, _t, _w in actions(session)] == [
        "identity.create",
        "identity.update",
        "identity.update",
        "identity.delete",
    ]


def test_get_on_post_routes_answers_405(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    identity = add_identity(alice, "team@example.test")
    assert logged_in.get(f"/admin/mailboxes/{alice.id}/identities").status_code == 405
    assert logged_in.get(f"/admin/identities/{identity.id}/delete").status_code == 405


def test_domain_admin_scope(as_domain_admin, session, tenants):
    mine_box = make_mailbox(session, "alice@mine.test")
    theirs = make_mailbox(session, "bob@other.test")
    foreign = add_identity(theirs, "team@other.test")
    refused = as_domain_admin.post(
        f"/admin/mailboxes/{mine_box.id}/identities", data={"address": "ceo@other.test"}
    )
    assert "domains you manage" in errors_of(refused, "identity-address")
    assert (
        as_domain_admin.post(
            f"/admin/mailboxes/{mine_box.id}/identities", data={"address": "team@mine.test"}
        ).status_code
        == 302
    )
    # Another tenant's mailbox and identity answer 404, like missing ones.
    assert (
        as_domain_admin.post(
            f"/admin/mailboxes/{theirs.id}/identities", data={"address": "x@mine.test"}
        ).status_code
        == 404
    )
    assert as_domain_admin.post(f"/admin/identities/{foreign.id}/delete").status_code == 404
    assert (
        as_domain_admin.post(
            f"/admin/identities/{foreign.id}/enabled", data={"enabled": "0"}
        ).status_code
        == 404
    )
    assert count(session, Identity) == 2


@pytest.fixture
def csrf_on(app_config: dict) -> dict:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def test_admin_identity_forms_need_a_csrf_token(csrf_on, app: Flask, session, admin):
    alice = make_mailbox(session, "alice@example.test")
    client = app.test_client()
    token = csrf_token(text_of(client.get("/admin/login")))
    client.post(
        "/admin/login",
        data={
            "email": "root@example.com",
            "password": "correct horse battery staple",
            "csrf_token": token,
        },
    )
    bare = client.post(
        f"/admin/mailboxes/{alice.id}/identities", data={"address": "t@example.test"}
    )
    assert bare.status_code == 400
    token = csrf_token(text_of(client.get(f"/admin/mailboxes/{alice.id}")))
    ok = client.post(
        f"/admin/mailboxes/{alice.id}/identities",
        data={"address": "t@example.test", "csrf_token": token},
    )
    assert ok.status_code == 302
    assert count(session, Identity) == 1


# --- the owner's /account/identities ---------------------------------------------------------


def account_login(client: FlaskClient, email: str) -> Any:
    return client.post("/account/login", data={"email": email, "password": MAILBOX_PASSWORD})


@pytest.fixture
def alice(session: Session) -> Mailbox:
    return make_mailbox(session, "alice@example.test")


@pytest.fixture
def owner(client: FlaskClient, alice: Mailbox) -> FlaskClient:
    assert account_login(client, alice.address).status_code == 302
    return client


def test_account_page_needs_login(client: FlaskClient, alice):
    response = client.get("/account/identities")
    assert response.status_code == 302 and response.location.endswith("/account/login")


def test_owner_sees_sender_addresses_and_switches_an_identity_off(owner, session, alice):
    provisioning.create_alias(session, "info@example.test", alice, actor=TEST_ACTOR)
    session.commit()
    identity = add_identity(alice, "team@example.test", "Team")
    overview = text_of(owner.get("/account/"))
    assert 'href="/account/identities"' in overview
    page = text_of(owner.get("/account/identities"))
    for address in ("alice@example.test", "info@example.test", "team@example.test"):
        assert address in page
    assert f'name="i{identity.id}-enabled"' in page and "checked" in page
    # An unchecked box is absent from the post: switched off, renamed.
    response = owner.post(
        f"/account/identities/{identity.id}", data={f"i{identity.id}-display_name": "Team A"}
    )
    assert response.status_code == 302
    session.expire_all()
    assert not identities.may_send_as(session, alice, "team@example.test")
    assert session.get(Identity, identity.id).display_name == "Team A"
    assert actions(session)[-1] == (
        "identity.update",
        "team@example.test",
        "mailbox:alice@example.test",
    )
    owner.post(
        f"/account/identities/{identity.id}",
        data={f"i{identity.id}-display_name": "Team A", f"i{identity.id}-enabled": "y"},
    )
    session.expire_all()
    assert identities.may_send_as(session, alice, "team@example.test")
    # Toggling without the name field keeps the name.
    owner.post(f"/account/identities/{identity.id}", data={})
    session.expire_all()
    assert session.get(Identity, identity.id).display_name == "Team A"
    assert not session.get(Identity, identity.id).enabled


def test_owner_bad_display_name_is_shown_next_to_the_field(owner, session, alice):
    identity = add_identity(alice, "team@example.test", "Team")
    response = owner.post(
        f"/account/identities/{identity.id}",
        data={
            f"i{identity.id}-display_name": "x\r\nBcc: y@example.test",
            f"i{identity.id}-enabled": "y",
        },
    )
    assert response.status_code == 200
    assert "line breaks" in errors_of(response, f"i{identity.id}-display_name")
    session.expire_all()
    assert session.get(Identity, identity.id).display_name == "Team"


def test_owner_cannot_add_addresses_nor_touch_another_mailbox(owner, session, alice):
    bob = make_mailbox(session, "bob@example.test")
    theirs = add_identity(bob, "bobs-team@example.test")
    page = text_of(owner.get("/account/identities"))
    assert "Only your administrator can allow other addresses." in page
    assert 'name="address"' not in page
    assert owner.post("/account/identities", data={"address": "x@example.test"}).status_code == 405
    stolen = owner.post(
        f"/account/identities/{theirs.id}", data={f"i{theirs.id}-display_name": "mine now"}
    )
    assert stolen.status_code == 404
    assert owner.post("/account/identities/99999999999999999999").status_code == 404
    session.expire_all()
    assert session.get(Identity, theirs.id).enabled


def test_pop3_only_owner_gets_the_explanation(client, session):
    pop = make_mailbox(session, "pop@example.test", protocols="pop3")
    assert account_login(client, pop.address).status_code == 302
    overview = text_of(client.get("/account/"))
    assert "extra identities need IMAP" in overview
    page = text_of(client.get("/account/identities"))
    assert "identities need IMAP" in page
    assert "<form" not in page.split("</header>", 1)[1]
    # A row kept from when the mailbox had IMAP is not the owner's to switch back on.
    provisioning.update_mailbox(session, pop, actor=TEST_ACTOR, protocols="imap")
    session.commit()
    kept = add_identity(pop, "team@example.test")
    provisioning.update_mailbox(session, pop, actor=TEST_ACTOR, protocols="pop3")
    session.commit()
    form = {f"i{kept.id}-display_name": "x", f"i{kept.id}-enabled": "y"}
    assert client.post(f"/account/identities/{kept.id}", data=form).status_code == 404


def test_owner_form_needs_a_csrf_token(csrf_on, app: Flask, session, alice):
    identity = add_identity(alice, "team@example.test")
    client = app.test_client()
    token = csrf_token(text_of(client.get("/account/login")))
    client.post(
        "/account/login",
        data={"email": alice.address, "password": MAILBOX_PASSWORD, "csrf_token": token},
    )
    bare = client.post(f"/account/identities/{identity.id}", data={})
    assert bare.status_code == 400
    session.expire_all()
    assert session.get(Identity, identity.id).enabled
