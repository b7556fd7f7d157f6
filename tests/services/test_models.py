"""Invariants the database enforces by itself, whatever code writes to it."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError

from provider.models import Mailbox
from tests.conftest import make_mailbox


@pytest.mark.parametrize(
    "values",
    [
        {"imap_enabled": False, "pop3_enabled": False},
        {"quota_bytes": 0},
        {"used_bytes": -1},
        {"status": "gone"},
        {"plan": "gold"},
    ],
    ids=["no-protocol", "zero-quota", "negative-usage", "unknown-status", "unknown-plan"],
)
def test_database_refuses_broken_mailbox_rows(session, values):
    mailbox = make_mailbox(session)
    with pytest.raises(IntegrityError):
        session.execute(update(Mailbox).where(Mailbox.id == mailbox.id).values(**values))
        session.flush()
    session.rollback()


def test_database_refuses_mixed_case_address_written_behind_the_model(session):
    mailbox = make_mailbox(session)
    with pytest.raises(IntegrityError):
        session.execute(
            insert(Mailbox).values(
                domain_id=mailbox.domain_id,
                local_part="bob",
                address="Bob@example.test",
                password_hash="x",
                quota_bytes=1,
                used_bytes=0,
                imap_enabled=True,
                pop3_enabled=False,
                status="active",
                plan="paid",
                created_at=mailbox.created_at,
                updated_at=mailbox.created_at,
            )
        )
        session.flush()
    session.rollback()


def test_protocols_setter_refuses_empty_and_unknown(session):
    mailbox = make_mailbox(session)
    with pytest.raises(ValueError):
        mailbox.protocols = []
    with pytest.raises(ValueError):
        mailbox.protocols = ["smtp"]
    assert mailbox.protocol_allowed("imap") and not mailbox.protocol_allowed("pop3")


def test_to_dict_never_contains_the_password_hash(session):
    assert "password_hash" not in make_mailbox(session).to_dict()
