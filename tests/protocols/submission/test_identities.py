"""Who a mailbox may send as: MAIL FROM and the From:/Sender: header fields (553 5.7.1)."""

from __future__ import annotations

import smtplib

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import Identity, Mailbox, OutboundMessage
from provider.protocols import submission as submission_protocol
from provider.services import provisioning
from tests.conftest import TEST_ACTOR, make_mailbox
from tests.protocols.submission.conftest import (
    ADDRESS,
    ALIAS,
    IDENTITY,
    Submission,
    add_identity,
    message,
)


def queued(session: Session) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(OutboundMessage)) or 0)


@pytest.mark.parametrize("address", [ADDRESS, ALIAS, IDENTITY, "Alice@Example.TEST"])
def test_mailbox_sends_as_itself_its_alias_and_its_identity(
    session: Session, sender: Mailbox, submission: Submission, address: str
):
    client = submission.login()
    assert client.sendmail(address, ["bob@remote.test"], message(address)) == {}
    client.quit()
    assert queued(session) == 1


def test_other_envelope_sender_is_refused_naming_the_rule(
    session: Session, sender: Mailbox, submission: Submission
):
    make_mailbox(session, "bob@example.test")
    client = submission.login()
    for address in ("bob@example.test", "ceo@bank.test"):
        assert client.mail(address) == (
            553,
            f"5.7.1 Sender address not allowed: <{address}> is not one of your identities".encode(),
        )
        client.rset()
    client.quit()
    assert queued(session) == 0


def test_null_sender_is_refused(sender: Mailbox, submission: Submission):
    client = submission.login()
    code, text = client.mail("")
    assert code == 553 and text.startswith(b"5.7.1 Sender address not allowed: the null sender")
    client.quit()


def data_reply(
    submission: Submission, content: bytes, envelope: str = ADDRESS
) -> tuple[int, bytes]:
    client = submission.login()
    assert client.mail(envelope)[0] == 250
    assert client.rcpt("bob@remote.test")[0] == 250
    answer = client.data(content)
    client.quit()
    return answer


def test_from_header_must_be_an_identity(session: Session, sender: Mailbox, submission: Submission):
    assert data_reply(submission, message("boss@example.test")) == (
        553,
        b"5.7.1 Sender address not allowed: From: <boss@example.test> is not one of your "
        b"identities",
    )
    assert queued(session) == 0


def test_every_from_address_must_be_an_identity(
    session: Session, sender: Mailbox, submission: Submission
):
    content = message().replace(
        b"From: Alice <alice@example.test>", b"From: alice@example.test, mallory@evil.test"
    )
    code, text = data_reply(submission, content)
    assert code == 553 and b"<mallory@evil.test>" in text
    both_ours = message().replace(
        b"From: Alice <alice@example.test>", f"From: {ADDRESS}, {ALIAS}".encode()
    )
    assert data_reply(submission, both_ours)[0] == 250
    assert queued(session) == 1


@pytest.mark.parametrize(
    "headers",
    [b"To: bob@remote.test\r\n", b"From: a@example.test\r\nFrom: a@example.test\r\n"],
    ids=["no-from", "two-from-fields"],
)
def test_exactly_one_from_header_is_required(
    session: Session, sender: Mailbox, submission: Submission, headers: bytes
):
    headers = headers.replace(b"a@example.test", ADDRESS.encode())
    code, text = data_reply(submission, headers + b"Subject: x\r\n\r\nbody\r\n")
    assert code == 553
    assert b"exactly one From: header" in text and b"RFC 5322 section 3.6" in text
    assert queued(session) == 0


def test_sender_header_must_be_an_identity_too(
    session: Session, sender: Mailbox, submission: Submission
):
    forged = b"Sender: secretary@bank.test\r\n" + message()
    code, text = data_reply(submission, forged)
    assert code == 553 and b"Sender: <secretary@bank.test>" in text
    assert data_reply(submission, f"Sender: {ALIAS}\r\n".encode() + message())[0] == 250
    assert queued(session) == 1


def test_envelope_and_header_may_be_different_identities(
    session: Session, sender: Mailbox, submission: Submission
):
    assert data_reply(submission, message(IDENTITY), envelope=ALIAS)[0] == 250


def test_pop3_only_mailbox_sends_as_itself_and_aliases_but_not_an_identity_row(
    session: Session, submission: Submission
):
    mailbox = make_mailbox(session, ADDRESS, protocols="pop3")
    provisioning.create_alias(session, ALIAS, mailbox, actor=TEST_ACTOR)
    session.commit()
    # A row left from when the mailbox had IMAP: kept, but not usable.
    add_identity(session, mailbox, IDENTITY)
    client = submission.login()
    assert client.sendmail(ADDRESS, ["bob@remote.test"], message()) == {}
    assert client.sendmail(ALIAS, ["bob@remote.test"], message(ALIAS)) == {}
    code, text = client.mail(IDENTITY)
    assert code == 553 and b"is not one of your identities" in text
    client.quit()


def test_disabled_identity_cannot_be_used(
    session: Session, sender: Mailbox, submission: Submission
):
    identity = session.scalar(select(Identity).where(Identity.address == IDENTITY))
    assert identity is not None
    identity.enabled = False
    session.commit()
    client = submission.login()
    assert client.mail(IDENTITY)[0] == 553
    client.quit()


def test_a_refused_sender_leaves_the_session_usable(sender: Mailbox, submission: Submission):
    client = submission.login()
    assert client.mail("other@example.test")[0] == 553
    # The refused MAIL started no transaction: a new MAIL is not "nested".
    assert client.sendmail(ADDRESS, ["bob@remote.test"], message()) == {}
    with pytest.raises(smtplib.SMTPSenderRefused):
        client.sendmail("other@example.test", ["bob@remote.test"], message())
    client.quit()


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.test <mallory@evil.test>",
        '"alice@example.test" <mallory@evil.test>',
        "<alice@example.test> mallory@evil.test",
        "alice@example.test mallory@evil.test",
        "alice@example.test@evil.test",
        '"alice@example.test"@evil.test',
        "alice@example.test;mallory@evil.test",
        "Alice <alice@example.test>, <mallory@evil.test",
        "group: alice@example.test, mallory@evil.test;",
        "undisclosed-recipients:;",
        "alice@example.test\x00mallory@evil.test",
        "alice@example.test\x01",
    ],
)
def test_a_from_header_that_could_be_read_two_ways_is_refused(
    session: Session, sender: Mailbox, submission: Submission, value: str
):
    """Python's two address parsers, and mail programs, read broken From: fields differently:
    one that either parser reads as someone else is refused."""
    content = message().replace(b"From: Alice <alice@example.test>", f"From: {value}".encode())
    code, text = data_reply(submission, content)
    assert code == 553 and text.startswith(b"5.7.1 Sender address not allowed"), text
    assert queued(session) == 0


@pytest.mark.parametrize(
    "value",
    [
        "=?utf-8?q?J=C3=B6rg?= <alice@example.test>",
        "Jörg Ü <alice@example.test>",
        '"Alice, Sales" <sales@example.test>',
        "alice@example.test (Alice)",
        "alice@example.test,",
        "Alice\r\n <alice@example.test>",
    ],
)
def test_well_formed_from_headers_of_an_identity_are_accepted(
    session: Session, sender: Mailbox, submission: Submission, value: str
):
    content = message().replace(b"From: Alice <alice@example.test>", f"From: {value}".encode())
    assert data_reply(submission, content)[0] == 250


def test_an_identity_disabled_during_a_session_stops_working_once_the_cache_expires(
    session: Session, sender: Mailbox, submission: Submission, monkeypatch: pytest.MonkeyPatch
):
    """The session reads its sender addresses once (IDENTITY_CACHE_SECONDS), not per
    message; a change made meanwhile applies when that time is up (here: at once)."""
    client = submission.login()
    assert client.sendmail(IDENTITY, ["bob@remote.test"], message(IDENTITY)) == {}
    identity = session.scalar(select(Identity).where(Identity.address == IDENTITY))
    assert identity is not None
    identity.enabled = False
    session.commit()
    monkeypatch.setattr(submission_protocol, "IDENTITY_CACHE_SECONDS", 0.0)
    assert client.mail(IDENTITY)[0] == 553
    assert client.rset()[0] == 250
    # The From: header is checked against the addresses read at this MAIL FROM, too.
    client.mail(ADDRESS)
    client.rcpt("bob@remote.test")
    code, reply = client.data(message(IDENTITY))
    assert code == 553, reply
    client.quit()


def test_within_a_transaction_the_from_header_is_checked_against_fresh_addresses(
    session: Session, sender: Mailbox, submission: Submission
):
    """A new session reads the addresses at its first MAIL FROM: no stale set from before."""
    identity = session.scalar(select(Identity).where(Identity.address == IDENTITY))
    assert identity is not None
    identity.enabled = False
    session.commit()
    client = submission.login()
    client.mail(ADDRESS)
    client.rcpt("bob@remote.test")
    assert client.data(message(IDENTITY))[0] == 553
    client.quit()
