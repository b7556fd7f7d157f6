"""The queue runner delivering to a real Postfix (its own config, queue and port on a loopback
address): through the smarthost, to the MX found with dnsmasq with opportunistic STARTTLS and
a DKIM signature that verifies against the record dnsmasq serves; and local recipients straight
into their mailboxes."""

from __future__ import annotations

import email
from collections.abc import Iterator
from email.policy import default

import dkim as dkimpy
import dns.message
import dns.query
import dns.rdatatype
import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import Domain, OutboundRecipient
from provider.protocols.outbound.runner import QueueRunner
from provider.services import dkim, outbound, provisioning
from tests.conftest import TEST_ACTOR, make_mailbox, wait_until
from tests.dnszone import DnsZone
from tests.outbound.helpers import Postfix, inbox

SENDER = "a@example.test"


def message(subject: str, to: str) -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\nMessage-ID: <{subject}@example.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        f"Grüße, this is {subject}.\r\n"
    ).encode()


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    with Postfix("127.0.0.9", ["example.net", "relay.test"]) as mta:
        yield mta


@pytest.fixture
def sender(session: Session):
    return make_mailbox(session, SENDER)


@pytest.fixture
def queue_runner(app: Flask) -> Iterator[QueueRunner]:
    runner = QueueRunner(app)
    try:
        yield runner
    finally:
        runner.stop()


def arrived(postfix: Postfix, subject: str) -> bytes:
    def found() -> bytes | None:
        for raw in postfix.messages():
            if f"Subject: {subject}\n".encode() in raw.replace(b"\r\n", b"\n"):
                return raw
        return None

    assert wait_until(lambda: found() is not None, timeout=20), postfix.log()[-3000:]
    copies = [raw for raw in postfix.messages() if f"Subject: {subject}\n".encode() in raw]
    assert len(copies) == 1
    return copies[0]


def state_of(session: Session, address: str) -> OutboundRecipient:
    session.expire_all()
    return session.scalars(
        select(OutboundRecipient).where(OutboundRecipient.address == address)
    ).one()


def test_relay_delivery_through_postfix(app, session, sender, postfix, queue_runner):
    app.config["OUTBOUND_RELAY"] = f"{postfix.host}:{postfix.port}"
    outbound.enqueue(
        session,
        sender=SENDER,
        recipients=["bob@relay.test"],
        content=message("relayed-1", "bob@relay.test"),
        mailbox_id=sender.id,
    )
    queue_runner.run_until_idle()
    assert state_of(session, "bob@relay.test").state == "delivered"
    assert "(from 127.0.0.9)" in state_of(session, "bob@relay.test").last_reply
    raw = arrived(postfix, "relayed-1")
    parsed = email.message_from_bytes(raw, policy=default)
    assert parsed["Return-Path"] == f"<{SENDER}>"
    assert "Grüße" in parsed.get_content()


def test_mx_delivery_with_starttls_and_a_dkim_signature_that_verifies(
    app, session, sender, postfix, queue_runner, tmp_path
):
    domain = session.scalars(select(Domain).where(Domain.name == "example.test")).one()
    key = dkim.signing_key(session, domain)
    assert key is not None
    with DnsZone(tmp_path) as zone:
        zone.mx("example.net", "mx.example.net", 10)
        zone.mx("example.net", "mx-down.example.net", 5)  # preferred, but refuses connections
        zone.a("mx-down.example.net", "127.0.0.11")
        zone.a("mx.example.net", postfix.host)
        zone.txt(f"{key.selector}._domainkey.example.test", dkim.dns_value(key))
        zone.reload()
        app.config.update(DNS_RESOLVER=zone.resolver, OUTBOUND_MX_PORT=postfix.port)
        outbound.enqueue(
            session,
            sender=SENDER,
            recipients=["bob@example.net", "carol@example.net"],
            content=message("by-mx-1", "bob@example.net, carol@example.net"),
            mailbox_id=sender.id,
        )
        queue_runner.run_until_idle()
        assert state_of(session, "bob@example.net").state == "delivered"
        assert state_of(session, "carol@example.net").state == "delivered"
        # One transaction for both recipients of the domain: Postfix stores one copy per
        # recipient of its virtual Maildir (all land in one here), with one queue id.
        assert wait_until(
            lambda: len([m for m in postfix.messages() if b"Subject: by-mx-1" in m]) == 2,
            timeout=20,
        )
        copies = [m for m in postfix.messages() if b"Subject: by-mx-1" in m]
        raw = copies[0]
        assert b"using TLS" in raw  # opportunistic STARTTLS was used (Postfix's Received)

        def ask_dnsmasq(name: bytes, timeout: int = 5) -> bytes:
            query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
            answer = dns.query.udp(query, zone.host, port=zone.port, timeout=timeout)
            for rrset in answer.answer:
                for rdata in rrset:
                    return b"".join(rdata.strings)
            return b""

        assert b"DKIM-Signature:" in raw
        assert dkimpy.verify(raw, dnsfunc=ask_dnsmasq)
        tampered = raw.replace(b"this is by-mx-1", b"this is by-mx-2")
        assert not dkimpy.verify(tampered, dnsfunc=ask_dnsmasq)
    log = postfix.log()
    assert log.count("status=sent") >= 2


def test_local_recipients_are_delivered_into_their_mailboxes(app, session, sender, queue_runner):
    carol = make_mailbox(session, "carol@example.test")
    provisioning.create_alias(session, "sales@example.test", carol, actor=TEST_ACTOR)
    session.commit()
    app.config["OUTBOUND_RELAY"] = "127.0.0.1:1"  # nothing may leave for a local recipient
    outbound.enqueue(
        session,
        sender=SENDER,
        recipients=["Carol@Example.TEST", "sales@example.test", "nobody@example.test"],
        content=message("local-1", "carol@example.test"),
        mailbox_id=sender.id,
    )
    queue_runner.run_until_idle()
    assert state_of(session, "Carol@Example.TEST").state == "delivered"
    assert state_of(session, "sales@example.test").state == "delivered"
    assert state_of(session, "nobody@example.test").state == "bounced"
    copies = inbox("carol@example.test")
    assert [str(m["Subject"]) for m in copies] == ["local-1", "local-1"]
    assert copies[0]["Return-Path"] == f"<{SENDER}>"
    assert "DKIM-Signature" not in copies[0]  # local mail is not signed
    [notice] = inbox(SENDER)
    assert "nobody@example.test" in notice.as_string()
    assert "550 5.1.1" in notice.as_string()


def test_a_sieve_redirect_reaches_a_remote_address_at_postfix(
    app, runner, session, postfix, queue_runner, tmp_path
):
    """Issue 13: a rule forwards mail that came in over LMTP to a remote address; it leaves
    through the queue, from the mailbox's own address (the documented SPF-safe envelope, no
    SRS), with the original message intact."""
    from provider.protocols.server import ProtocolRunner
    from tests.protocols.test_sieve_actions import lmtp
    from tests.protocols.test_sieve_delivery import put

    make_mailbox(session, "alice@example.test")
    put(runner, 'redirect "dave@example.net";\n', address="alice@example.test")
    app.config["LMTP_PORT"] = 0  # a free port: CI's SQLite and PostgreSQL runs share the host
    lmtp_runner = ProtocolRunner(app, ["lmtp"])
    [bound] = lmtp_runner.start()
    try:
        with DnsZone(tmp_path / "dns") as zone:
            zone.mx("example.net", "mx.example.net", 10)
            zone.a("mx.example.net", postfix.host)
            zone.reload()
            app.config.update(DNS_RESOLVER=zone.resolver, OUTBOUND_MX_PORT=postfix.port)
            original = message("forwarded by a rule", "alice@example.test")
            reply = lmtp((bound.host, bound.port), "alice@example.test", original, "b@far.test")
            assert reply[0] == 250, reply
            queue_runner.run_until_idle()
            raw = arrived(postfix, "forwarded by a rule")
    finally:
        lmtp_runner.stop()
    received = email.message_from_bytes(raw, policy=default)
    assert received["Return-Path"] == "<alice@example.test>"
    assert received["Delivered-To"] == "dave@example.net"
    assert received["From"] == f"Alice <{SENDER}>" and received["To"] == "alice@example.test"
    assert "Grüße, this is forwarded by a rule." in received.get_content()
    assert inbox("alice@example.test") == []  # redirect without :copy keeps nothing
