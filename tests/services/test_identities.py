"""Identity rules: who may get extra sender addresses, which addresses, and the audit trail."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from provider.errors import AlreadyExists, InvalidInput, NotFound
from provider.models import AuditEvent, Identity
from provider.services import identities, provisioning
from tests.conftest import TEST_ACTOR, make_admin, make_domain, make_mailbox


def events(session, action: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def add(session, mailbox, address, name="", **kwargs) -> Identity:
    identity = identities.add_identity(session, mailbox, address, name, actor=TEST_ACTOR, **kwargs)
    session.commit()
    return identity


def test_an_identity_becomes_a_sender_address_and_is_audited(session):
    alice = make_mailbox(session, "alice@example.test")
    identity = add(session, alice, "  Sales@Example.TEST ", " Sales Team ")
    assert (identity.address, identity.display_name, identity.enabled) == (
        "sales@example.test",
        "Sales Team",
        True,
    )
    assert identities.may_send_as(session, alice, "SALES@example.test")
    [event] = events(session, "identity.create")
    assert event.target == "sales@example.test"
    assert event.domain == "example.test"
    assert event.after["mailbox"] == "alice@example.test"
    assert event.after["display_name"] == "Sales Team"


def test_an_identity_may_be_in_another_hosted_domain(session):
    alice = make_mailbox(session, "alice@example.test")
    make_domain(session, "brand.test")
    add(session, alice, "hello@brand.test")
    assert identities.may_send_as(session, alice, "hello@brand.test")


def test_pop3_only_mailbox_cannot_have_extra_identities(session):
    pop = make_mailbox(session, "pop@example.test", protocols="pop3")
    with pytest.raises(InvalidInput) as caught:
        identities.add_identity(session, pop, "sales@example.test", actor=TEST_ACTOR)
    assert caught.value.message == (
        "POP3-only mailboxes send only as their own address and aliases; identities need IMAP"
    )
    assert session.scalar(select(Identity.id)) is None
    overview = identities.sender_overview(session, pop)
    assert overview.extras_unavailable == identities.POP3_ONLY_REASON


def test_identity_kept_after_switch_to_pop3_only_is_not_usable(session):
    alice = make_mailbox(session, "alice@example.test")
    add(session, alice, "sales@example.test")
    provisioning.update_mailbox(session, alice, actor=TEST_ACTOR, protocols="pop3")
    session.commit()
    assert not identities.may_send_as(session, alice, "sales@example.test")
    [entry] = identities.sender_overview(session, alice).identities
    assert entry.enabled and not entry.usable


def test_domain_admin_is_limited_to_their_domains(session):
    mine = make_domain(session, "mine.test")
    make_domain(session, "other.test")
    tenant = make_admin(session, "tenant@mine.test", superadmin=False, domains=[mine])
    alice = make_mailbox(session, "alice@mine.test")
    with pytest.raises(NotFound) as caught:
        identities.add_identity(session, alice, "ceo@other.test", actor=TEST_ACTOR, admin=tenant)
    assert caught.value.field == "address"
    assert "domains you manage" in caught.value.message
    # A domain hosted nowhere reads the same to a domain admin: no oracle for other tenants.
    with pytest.raises(NotFound) as unknown:
        identities.add_identity(session, alice, "x@nowhere.test", actor=TEST_ACTOR, admin=tenant)
    assert unknown.value.message == caught.value.message
    # Their own domain is fine.
    add(session, alice, "info@mine.test", admin=tenant)


def test_domain_admin_cannot_touch_a_mailbox_of_another_domain(session):
    mine = make_domain(session, "mine.test")
    tenant = make_admin(session, "tenant@mine.test", superadmin=False, domains=[mine])
    bob = make_mailbox(session, "bob@other.test")
    with pytest.raises(NotFound):
        identities.add_identity(session, bob, "info@mine.test", actor=TEST_ACTOR, admin=tenant)


def test_superadmin_and_cli_may_use_any_hosted_domain_but_not_foreign_ones(session):
    root = make_admin(session, "root@example.com")
    alice = make_mailbox(session, "alice@example.test")
    make_domain(session, "other.test")
    add(session, alice, "x@other.test", admin=root)
    with pytest.raises(NotFound) as caught:
        identities.add_identity(session, alice, "someone@gmail.test", actor=TEST_ACTOR)
    assert caught.value.message == "domain gmail.test is not hosted here"


def test_own_address_and_own_aliases_are_already_sender_addresses(session):
    alice = make_mailbox(session, "alice@example.test")
    provisioning.create_alias(session, "info@example.test", alice, actor=TEST_ACTOR)
    session.commit()
    with pytest.raises(AlreadyExists, match="own address"):
        identities.add_identity(session, alice, "Alice@example.test", actor=TEST_ACTOR)
    with pytest.raises(AlreadyExists, match="alias of this mailbox"):
        identities.add_identity(session, alice, "info@example.test", actor=TEST_ACTOR)


def test_another_mailbox_and_its_aliases_are_refused(session):
    alice = make_mailbox(session, "alice@example.test")
    bob = make_mailbox(session, "bob@example.test")
    provisioning.create_alias(session, "bobby@example.test", bob, actor=TEST_ACTOR)
    session.commit()
    with pytest.raises(AlreadyExists, match="another mailbox"):
        identities.add_identity(session, alice, "bob@example.test", actor=TEST_ACTOR)
    with pytest.raises(AlreadyExists, match="alias of another mailbox"):
        identities.add_identity(session, alice, "bobby@example.test", actor=TEST_ACTOR)


def test_duplicates_are_refused_but_two_mailboxes_may_share_a_team_address(session):
    alice = make_mailbox(session, "alice@example.test")
    bob = make_mailbox(session, "bob@example.test")
    add(session, alice, "team@example.test")
    with pytest.raises(AlreadyExists, match=r"already an identity of alice@example\.test"):
        identities.add_identity(session, alice, "TEAM@example.test", actor=TEST_ACTOR)
    add(session, bob, "team@example.test")
    assert identities.may_send_as(session, bob, "team@example.test")


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-at-sign",
        "a@b",
        "sales@exa mple.test",
        "sa\x00les@example.test",
        "sales@example.test\r\nBcc: x@evil.test",
        "x" * 300 + "@example.test",
        "a+tag@example.test",
        "../x@example.test",
    ],
)
def test_bad_addresses_are_refused_with_a_message_for_the_address_field(session, address):
    alice = make_mailbox(session, "alice@example.test")
    with pytest.raises(InvalidInput) as caught:
        identities.add_identity(session, alice, address, actor=TEST_ACTOR)
    assert caught.value.field == "address"
    assert "\n" not in caught.value.message and "\x00" not in caught.value.message


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Sales\r\nBcc: victim@example.test", "line breaks"),
        ("Sales\nTeam", "line breaks"),
        ("Sa\x00les", "control characters"),
        ("x" * 201, "at most 200"),
    ],
)
def test_bad_display_names_are_refused(session, name, message):
    alice = make_mailbox(session, "alice@example.test")
    with pytest.raises(InvalidInput, match=message) as caught:
        identities.add_identity(session, alice, "sales@example.test", name, actor=TEST_ACTOR)
    assert caught.value.field == "display_name"
    assert session.scalar(select(Identity.id)) is None


def test_display_name_of_exactly_200_characters_is_kept(session):
    alice = make_mailbox(session, "alice@example.test")
    assert len(add(session, alice, "sales@example.test", "é" * 200).display_name) == 200


def test_switching_off_and_renaming_is_audited_and_stops_sending(session):
    alice = make_mailbox(session, "alice@example.test")
    identity = add(session, alice, "sales@example.test", "Sales")
    identities.set_identity(session, identity, actor=TEST_ACTOR, enabled=False, display_name="S")
    session.commit()
    assert not identities.may_send_as(session, alice, "sales@example.test")
    [event] = events(session, "identity.update")
    assert (event.before["enabled"], event.after["enabled"]) == (True, False)
    assert (event.before["display_name"], event.after["display_name"]) == ("Sales", "S")
    # Nothing changed, nothing recorded.
    identities.set_identity(session, identity, actor=TEST_ACTOR, enabled=False)
    session.commit()
    assert len(events(session, "identity.update")) == 1
    with pytest.raises(InvalidInput):
        identities.set_identity(session, identity, actor=TEST_ACTOR, display_name="a\rb")


def test_delete_removes_the_identity_and_is_audited(session):
    alice = make_mailbox(session, "alice@example.test")
    add(session, alice, "sales@example.test")
    identity = identities.get_identity(session, alice, " SALES@example.test")
    identities.delete_identity(session, identity, actor=TEST_ACTOR)
    session.commit()
    assert identities.list_identities(session, alice) == []
    assert [e.target for e in events(session, "identity.delete")] == ["sales@example.test"]
    with pytest.raises(NotFound):
        identities.get_identity(session, alice, "sales@example.test")
    with pytest.raises(NotFound):
        identities.get_identity(session, alice, "sa\x00les@example.test")


def test_sender_overview_lists_every_kind_in_order(session):
    alice = make_mailbox(session, "alice@example.test")
    provisioning.create_alias(session, "info@example.test", alice, actor=TEST_ACTOR)
    session.commit()
    add(session, alice, "zed@example.test", "Zed")
    off = add(session, alice, "b@example.test")
    identities.set_identity(session, off, actor=TEST_ACTOR, enabled=False)
    session.commit()
    overview = identities.sender_overview(session, alice)
    assert overview.extras_unavailable is None
    assert [(e.address, e.kind, e.usable) for e in overview.entries] == [
        ("alice@example.test", "mailbox", True),
        ("info@example.test", "alias", True),
        ("b@example.test", "identity", False),
        ("zed@example.test", "identity", True),
    ]
    assert overview.to_dict()["senders"][3]["display_name"] == "Zed"


def test_deleting_the_mailbox_deletes_its_identities(session):
    alice = make_mailbox(session, "alice@example.test")
    add(session, alice, "sales@example.test")
    provisioning.delete_mailbox(session, alice, actor=TEST_ACTOR)
    session.commit()
    assert session.scalar(select(Identity.id)) is None


def test_a_racing_duplicate_is_refused_by_the_constraint_not_a_crash(session, monkeypatch):
    alice = make_mailbox(session, "alice@example.test")
    add(session, alice, "team@example.test")
    # As if another request committed the same identity between the check and the insert.
    monkeypatch.setattr(identities, "_identity_id", lambda *_args: None)
    with pytest.raises(AlreadyExists, match="already an identity"):
        identities.add_identity(session, alice, "team@example.test", actor=TEST_ACTOR)
    assert len(identities.list_identities(session, alice)) == 1
    assert len(events(session, "identity.create")) == 1


def test_deleting_the_identitys_domain_takes_the_identity_with_it(session):
    alice = make_mailbox(session, "alice@example.test")
    brand = make_domain(session, "brand.test")
    add(session, alice, "hi@brand.test")
    provisioning.delete_domain(session, brand, actor=TEST_ACTOR)
    session.commit()
    session.expire_all()
    assert identities.list_identities(session, alice) == []
    assert not identities.may_send_as(session, alice, "hi@brand.test")
