"""Provisioning rules for domains, mailboxes and aliases, and their audit trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from provider.errors import (
    AlreadyExists,
    DomainNotEmpty,
    InvalidInput,
    NotFound,
    QuotaOutOfRange,
    WeakPassword,
)
from provider.models import Alias, AuditEvent, Domain, Mailbox
from provider.services import provisioning
from provider.services.clock import frozen_at
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_domain, make_mailbox


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def events(session, action: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# --- domains -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Example.TEST", "example.test"),
        ("example.test.", "example.test"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_domain_names_are_normalized(session, given, stored):
    assert provisioning.create_domain(session, given, actor=TEST_ACTOR).name == stored


@pytest.mark.parametrize(
    "name",
    [
        "",
        "localhost",
        "-bad.test",
        "bad-.test",
        "a..b",
        "x" * 64 + ".test",
        "1.2.3.4",
        "a b.test",
        "a/b.test",
    ],
)
def test_invalid_domain_names_are_refused(session, name):
    with pytest.raises(InvalidInput, match="not a valid domain name"):
        provisioning.create_domain(session, name, actor=TEST_ACTOR)
    assert count(session, Domain) == 0


def test_duplicate_domain_is_refused_case_insensitively(session):
    make_domain(session, "example.test")
    with pytest.raises(AlreadyExists):
        provisioning.create_domain(session, "EXAMPLE.test", actor=TEST_ACTOR)


def test_domain_with_mailboxes_cannot_be_deleted(session):
    make_mailbox(session)
    domain = provisioning.get_domain(session, "example.test")
    with pytest.raises(DomainNotEmpty, match="1 mailbox"):
        provisioning.delete_domain(session, domain, actor=TEST_ACTOR)
    session.rollback()
    assert count(session, Domain) == 1


def test_domain_with_only_an_alias_cannot_be_deleted(session):
    mailbox = make_mailbox(session)
    make_domain(session, "other.test")
    provisioning.create_alias(session, "info@other.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    with pytest.raises(DomainNotEmpty, match="1 alias"):
        provisioning.delete_domain(
            session, provisioning.get_domain(session, "other.test"), actor=TEST_ACTOR
        )


def test_empty_domain_is_deleted_and_audited(session):
    domain = make_domain(session)
    provisioning.delete_domain(session, domain, actor=TEST_ACTOR)
    session.commit()
    assert count(session, Domain) == 0
    [event] = events(session, "domain.delete")
    assert event.before["name"] == "example.test" and event.after is None


def test_signup_flag_toggles_with_audit(session):
    domain = make_domain(session)
    provisioning.set_domain_signup(session, domain, True, actor=TEST_ACTOR)
    session.commit()
    [event] = events(session, "domain.update")
    assert event.before["signup_enabled"] is False and event.after["signup_enabled"] is True


def test_get_domain_of_unknown_name_is_not_found(session):
    with pytest.raises(NotFound):
        provisioning.get_domain(session, "nowhere.test")
    with pytest.raises(NotFound):
        provisioning.get_domain(session, "not a domain")


# --- mailboxes -----------------------------------------------------------------------------


def test_mailbox_is_created_with_bytes_protocols_and_audit(session):
    mailbox = make_mailbox(session, "Alice@Example.test", quota_gb="12.5", protocols="imap,pop3")
    assert mailbox.address == "alice@example.test"
    assert mailbox.local_part == "alice"
    assert mailbox.quota_bytes == int(12.5 * 1024**3)
    assert mailbox.protocols == ["imap", "pop3"]
    assert (mailbox.status, mailbox.plan, mailbox.used_bytes) == ("active", "paid", 0)
    assert mailbox.password_hash.startswith("{ARGON2ID}")
    [event] = events(session, "mailbox.create")
    assert event.actor == "test" and event.remote_addr == "127.0.0.1"
    assert event.after["quota_bytes"] == mailbox.quota_bytes and "password_hash" not in event.after


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("imap", ["imap"]),
        ("pop3", ["pop3"]),
        ("both", ["imap", "pop3"]),
        ("pop3,imap", ["imap", "pop3"]),
        (["pop3"], ["pop3"]),
    ],
)
def test_protocol_policy_choices(session, given, expected):
    assert make_mailbox(session, protocols=given).protocols == expected


@pytest.mark.parametrize("given", ["", ",", [], "smtp", "imap,smtp"])
def test_mailbox_without_a_valid_protocol_is_refused(session, given):
    make_domain(session)
    with pytest.raises(InvalidInput, match="protocol"):
        provisioning.create_mailbox(
            session, "bob@example.test", MAILBOX_PASSWORD, 8, given, actor=TEST_ACTOR
        )
    assert count(session, Mailbox) == 0


@pytest.mark.parametrize("quota_gb", ["7.99", "100.5", "0", "-1", "lots"])
def test_mailbox_outside_quota_bounds_is_refused_and_nothing_written(session, quota_gb):
    make_domain(session)
    with pytest.raises(QuotaOutOfRange):
        provisioning.create_mailbox(
            session, "bob@example.test", MAILBOX_PASSWORD, quota_gb, "imap", actor=TEST_ACTOR
        )
    session.rollback()
    assert count(session, Mailbox) == 0
    assert events(session, "mailbox.create") == []


@pytest.mark.parametrize("quota_gb", ["8", "100"])
def test_mailbox_at_each_quota_bound_is_accepted(session, quota_gb):
    assert make_mailbox(session, quota_gb=quota_gb).quota_bytes == int(quota_gb) * 1024**3


@pytest.mark.parametrize(
    "address",
    [
        "bob",
        "@example.test",
        "bob@",
        "bo b@example.test",
        "bob+tag@example.test",
        "../x@example.test",
        ".bob@example.test",
        "bob..x@example.test",
        "b/ob@example.test",
        "x" * 65 + "@example.test",
    ],
)
def test_malformed_addresses_are_refused(session, address):
    make_domain(session)
    with pytest.raises(InvalidInput):
        provisioning.create_mailbox(session, address, MAILBOX_PASSWORD, 8, "imap", actor=TEST_ACTOR)
    assert count(session, Mailbox) == 0


def test_mailbox_in_unhosted_domain_is_refused(session):
    with pytest.raises(NotFound, match="not hosted"):
        provisioning.create_mailbox(
            session, "bob@nowhere.test", MAILBOX_PASSWORD, 8, "imap", actor=TEST_ACTOR
        )


def test_duplicate_mailbox_is_refused_case_insensitively(session):
    make_mailbox(session, "alice@example.test")
    with pytest.raises(AlreadyExists, match="already exists"):
        provisioning.create_mailbox(
            session, "ALICE@example.test", MAILBOX_PASSWORD, 8, "imap", actor=TEST_ACTOR
        )


def test_mailbox_cannot_take_an_alias_address(session):
    mailbox = make_mailbox(session)
    provisioning.create_alias(session, "info@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    with pytest.raises(AlreadyExists, match="alias"):
        provisioning.create_mailbox(
            session, "info@example.test", MAILBOX_PASSWORD, 8, "imap", actor=TEST_ACTOR
        )


def test_weak_password_is_refused_before_anything_is_written(session):
    make_domain(session)
    with pytest.raises(WeakPassword):
        provisioning.create_mailbox(
            session, "bob@example.test", "password", 8, "imap", actor=TEST_ACTOR
        )
    assert count(session, Mailbox) == 0


def test_trial_mailbox_expires_after_trial_days(session):
    moment = datetime(2026, 1, 1, 12, tzinfo=UTC)
    with frozen_at(moment):
        mailbox = make_mailbox(session, plan="trial")
    assert mailbox.plan == "trial"
    assert mailbox.trial_expires_at == moment + timedelta(days=30)


def test_update_changes_several_settings_and_audits_before_after(session):
    mailbox = make_mailbox(session)
    provisioning.update_mailbox(
        session, mailbox, actor=TEST_ACTOR, quota_gb="20", protocols="both", status="suspended"
    )
    session.commit()
    assert mailbox.quota_bytes == 20 * 1024**3 and mailbox.protocols == ["imap", "pop3"]
    assert mailbox.status == "suspended"
    [event] = events(session, "mailbox.update")
    assert event.before["quota_bytes"] == 8 * 1024**3 and event.after["quota_bytes"] == 20 * 1024**3
    assert event.before["protocols"] == ["imap"] and event.after["status"] == "suspended"


def test_update_with_one_bad_value_changes_nothing(session):
    mailbox = make_mailbox(session)
    with pytest.raises(QuotaOutOfRange):
        provisioning.update_mailbox(
            session, mailbox, actor=TEST_ACTOR, protocols="pop3", quota_gb="101"
        )
    session.rollback()
    session.refresh(mailbox)
    assert mailbox.protocols == ["imap"] and mailbox.quota_bytes == 8 * 1024**3


def test_quota_cannot_drop_below_current_usage(session):
    mailbox = make_mailbox(session, quota_gb=50)
    mailbox.used_bytes = 9 * 1024**3
    session.commit()
    with pytest.raises(InvalidInput, match="below what the mailbox already holds"):
        provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, quota_gb=8)


def test_password_change_is_audited_without_the_hash(session):
    mailbox = make_mailbox(session)
    old_hash = mailbox.password_hash
    provisioning.update_mailbox(
        session, mailbox, actor=TEST_ACTOR, password="a brand new passphrase"
    )
    session.commit()
    assert mailbox.password_hash != old_hash
    [event] = events(session, "mailbox.password")
    assert "password_hash" not in (event.after or {})


def test_converting_a_trial_to_paid_clears_expiry_and_reactivates_expired(session):
    mailbox = make_mailbox(session, plan="trial")
    mailbox.status = "expired"
    session.commit()
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, plan="paid")
    assert (mailbox.plan, mailbox.status, mailbox.trial_expires_at) == ("paid", "active", None)


@pytest.mark.parametrize(("field", "value"), [("status", "deleted"), ("plan", "gold")])
def test_unknown_status_or_plan_is_refused(session, field, value):
    mailbox = make_mailbox(session)
    with pytest.raises(InvalidInput, match=f"unknown {field}"):
        provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, **{field: value})


def test_deleting_a_mailbox_deletes_its_aliases(session):
    mailbox = make_mailbox(session)
    provisioning.create_alias(session, "info@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    provisioning.delete_mailbox(session, mailbox, actor=TEST_ACTOR)
    session.commit()
    assert count(session, Mailbox) == 0 and count(session, Alias) == 0
    [event] = events(session, "mailbox.delete")
    assert event.before["aliases"] == ["info@example.test"]


# --- aliases -------------------------------------------------------------------------------


def test_alias_must_be_in_a_hosted_domain(session):
    mailbox = make_mailbox(session)
    with pytest.raises(NotFound):
        provisioning.create_alias(session, "info@elsewhere.test", mailbox, actor=TEST_ACTOR)


def test_alias_cannot_take_a_mailbox_or_alias_address(session):
    alice = make_mailbox(session)
    make_mailbox(session, "bob@example.test")
    with pytest.raises(AlreadyExists):
        provisioning.create_alias(session, "BOB@example.test", alice, actor=TEST_ACTOR)
    provisioning.create_alias(session, "info@example.test", alice, actor=TEST_ACTOR)
    with pytest.raises(AlreadyExists):
        provisioning.create_alias(session, "info@example.test", alice, actor=TEST_ACTOR)


def test_alias_delete_is_audited(session):
    alias = provisioning.create_alias(
        session, "info@example.test", make_mailbox(session), actor=TEST_ACTOR
    )
    provisioning.delete_alias(session, alias, actor=TEST_ACTOR)
    session.commit()
    assert count(session, Alias) == 0
    assert [e.target for e in events(session, "alias.delete")] == ["info@example.test"]


def test_an_update_that_changes_nothing_is_not_audited(session):
    mailbox = make_mailbox(session, protocols="imap")
    provisioning.update_mailbox(
        session, mailbox, actor=TEST_ACTOR, quota_gb="8", protocols="imap", plan="paid"
    )
    session.commit()
    assert events(session, "mailbox.update") == []
