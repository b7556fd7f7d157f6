"""Sieve redirect and vacation at delivery: real LMTP in, the real queue runner out."""

from __future__ import annotations

import email
from collections.abc import Iterator
from datetime import timedelta
from email.policy import default
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from provider.models import OutboundMessage, VacationResponse
from provider.protocols.outbound.runner import QueueRunner
from provider.protocols.server import ProtocolRunner
from provider.services import clock, outbound, sieve_actions
from provider.services.audit import Actor
from provider.services.identities import add_identity
from tests.conftest import make_mailbox
from tests.dnszone import DnsZone
from tests.outbound.helpers import ScriptedMx, inbox
from tests.protocols.conftest import RawClient
from tests.protocols.test_sieve_delivery import error_log, put

ALICE = "alice@example.test"
BOB = "bob@example.test"
VACATION = 'require "vacation";\nvacation :days 3 :subject "Away" "I am away until Monday.";\n'


@pytest.fixture
def lmtp_address(app: Flask) -> Iterator[tuple[str, int]]:
    runner = ProtocolRunner(app, ["lmtp"])
    [bound] = runner.start()
    try:
        yield (bound.host, bound.port)
    finally:
        runner.stop()


@pytest.fixture
def queue(app: Flask) -> Iterator[QueueRunner]:
    app.config["OUTBOUND_RELAY"] = ""
    runner = QueueRunner(app)
    try:
        yield runner
    finally:
        runner.stop()


def lmtp(
    address: tuple[str, int], recipient: str, data: bytes, sender: str = BOB
) -> tuple[int, str]:
    with RawClient(address) as client:
        client.reply()
        client.command("LHLO test.example")
        assert client.command(f"MAIL FROM:<{sender}>")[0] == 250
        assert client.command(f"RCPT TO:<{recipient}>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(data + b".\r\n")
        return client.reply()


def message(
    subject: str = "Hello", extra: str = "", to: str = ALICE, sender: str = BOB, n: int = 1
) -> bytes:
    return (
        f"From: Bob <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}"
        f"Message-ID: <m{n}.{subject.replace(' ', '.')}@example.test>\r\n\r\nHi.\r\n"
    ).encode()


def queued(session) -> list[OutboundMessage]:
    session.expire_all()
    return list(session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))


# --- vacation ------------------------------------------------------------------------------


def test_a_vacation_reply_reaches_the_sender_once(runner, session, lmtp_address, queue):
    make_mailbox(session, ALICE)
    make_mailbox(session, BOB)
    put(runner, VACATION)
    assert lmtp(lmtp_address, ALICE, message("Lunch?"))[0] == 250
    assert lmtp(lmtp_address, ALICE, message("Lunch again?", n=2))[0] == 250
    [reply_row] = queued(session)
    assert reply_row.sender == "" and reply_row.mailbox_id is None
    queue.run_until_idle()
    [reply] = inbox(BOB)
    assert reply["Subject"] == "Away"
    assert reply["From"] == ALICE and reply["To"] == BOB
    assert reply["Auto-Submitted"].startswith("auto-replied")
    assert reply["In-Reply-To"] == "<m1.Lunch?@example.test>"
    assert reply["References"] == "<m1.Lunch?@example.test>"
    assert reply.get_content().strip() == "I am away until Monday."
    assert len(inbox(ALICE)) == 2  # the vacation action keeps the message too


def test_the_period_ends_and_the_next_message_gets_a_reply(runner, session, lmtp_address):
    make_mailbox(session, ALICE)
    put(runner, VACATION)
    start = clock.now()
    try:
        assert lmtp(lmtp_address, ALICE, message("one"))[0] == 250
        clock.set_now(start + timedelta(days=2, hours=23))
        assert lmtp(lmtp_address, ALICE, message("two", n=2))[0] == 250
        assert len(queued(session)) == 1
        clock.set_now(start + timedelta(days=3, minutes=1))
        assert lmtp(lmtp_address, ALICE, message("three", n=3))[0] == 250
        assert len(queued(session)) == 2
        # The outbound-cleanup job forgets replies whose period is over, not the others.
        clock.set_now(start + timedelta(days=6))
        assert sieve_actions.prune_responses(session) == 0
        clock.set_now(start + timedelta(days=6, minutes=2))
        assert sieve_actions.prune_responses(session) == 1
        assert session.scalars(select(VacationResponse)).all() == []
    finally:
        clock.set_now(None)


@pytest.mark.parametrize(
    ("sender", "extra", "to"),
    [
        (BOB, "Auto-Submitted: auto-replied\r\n", ALICE),
        (BOB, "Auto-Submitted: auto-generated; owner-email=x@y.test\r\n", ALICE),
        (BOB, "List-Id: Dev <dev.lists.example>\r\n", ALICE),
        (BOB, "List-Unsubscribe: <mailto:leave@lists.example>\r\n", ALICE),
        (BOB, "Precedence: bulk\r\n", ALICE),
        (BOB, "Precedence: junk\r\n", ALICE),
        ("", "", ALICE),
        ("MAILER-DAEMON@outside.test", "", ALICE),
        ("owner-dev@lists.example", "", ALICE),
        ("dev-request@lists.example", "", ALICE),
        (BOB, "", "someone-else@outside.test"),
        (BOB, "", "undisclosed-recipients:;"),
        (ALICE, "", ALICE),
    ],
    ids=[
        "auto-replied",
        "auto-generated",
        "list-id",
        "list-unsubscribe",
        "bulk",
        "junk",
        "null-sender",
        "mailer-daemon",
        "owner-",
        "-request",
        "not-in-to-cc",
        "undisclosed",
        "to-self",
    ],
)
def test_no_vacation_reply_where_rfc_3834_forbids_one(
    runner, session, lmtp_address, sender, extra, to
):
    make_mailbox(session, ALICE)
    put(runner, VACATION)
    assert lmtp(lmtp_address, ALICE, message("x", extra, to=to), sender=sender)[0] == 250
    assert queued(session) == []
    assert session.scalars(select(VacationResponse)).all() == []


def test_auto_submitted_no_and_cc_of_an_alias_or_identity_get_a_reply(
    runner, session, lmtp_address
):
    mailbox = make_mailbox(session, ALICE)
    add_identity(session, mailbox, "sales@example.test", actor=Actor("test"))
    session.commit()
    put(runner, VACATION)
    data = message("q", "Auto-Submitted: no\r\nCc: Sales <Sales@Example.TEST>\r\n", to="x@y.test")
    assert lmtp(lmtp_address, ALICE, data)[0] == 250
    [row] = queued(session)
    reply = email.message_from_bytes(outbound.read_spool(row.queue_id), policy=default)
    assert reply["From"] == "sales@example.test"  # the address the sender wrote to


def test_addresses_and_mime_and_a_foreign_from(runner, session, lmtp_address):
    make_mailbox(session, ALICE)
    put(
        runner,
        'require "vacation";\n'
        'vacation :addresses ["team@outside.test"] :from "ceo@bank.test" :mime\n'
        '"Content-Type: text/plain; charset=utf-8\r\n\r\nWeg bis Montag \u00e9.";\n',
    )
    assert lmtp(lmtp_address, ALICE, message("Héllo", to="Team <team@outside.test>"))[0] == 250
    [row] = queued(session)
    reply = email.message_from_bytes(outbound.read_spool(row.queue_id), policy=default)
    assert reply["From"] == "team@outside.test"  # :from may not name someone else's address
    assert reply["Subject"] == "Auto: Héllo"
    assert "Weg bis Montag é." in reply.get_content()
    assert "not one of this mailbox's addresses" in error_log(ALICE)


def test_two_handles_reply_separately_and_a_huge_days_is_capped(runner, session, lmtp_address):
    make_mailbox(session, ALICE)
    put(runner, 'require "vacation";\nvacation :days 4294967295 :handle "a" "Away.";\n')
    assert lmtp(lmtp_address, ALICE, message("one"))[0] == 250
    put(runner, 'require "vacation";\nvacation :days 1 :handle "b" "Away again.";\n')
    assert lmtp(lmtp_address, ALICE, message("two", n=2))[0] == 250
    assert lmtp(lmtp_address, ALICE, message("three", n=3))[0] == 250
    assert len(queued(session)) == 2


# --- redirect ------------------------------------------------------------------------------


def test_a_redirect_arrives_at_a_local_address(runner, session, lmtp_address, queue):
    make_mailbox(session, ALICE)
    make_mailbox(session, "carol@example.test")
    put(runner, 'redirect "carol@example.test";\n')
    assert lmtp(lmtp_address, ALICE, message("fwd"), sender="bob@outside.test")[0] == 250
    [row] = queued(session)
    assert row.sender == ALICE  # SPF: the envelope is ours, bounces reach the owner
    queue.run_until_idle()
    assert inbox(ALICE) == []
    [copy] = inbox("carol@example.test")
    assert copy["Subject"] == "fwd"
    assert copy.get_all("Delivered-To") == ["carol@example.test", ALICE]
    assert copy.get_all("Return-Path") == [f"<{ALICE}>"]


def test_a_redirect_copy_of_a_bounce_keeps_the_null_sender(runner, session, lmtp_address):
    make_mailbox(session, ALICE)
    put(runner, 'require "copy";\nredirect :copy "carol@outside.test";\n')
    assert lmtp(lmtp_address, ALICE, message("bounce"), sender="")[0] == 250
    [row] = queued(session)
    assert row.sender == "" and row.mailbox_id is not None  # counted, never bounced
    assert len(inbox(ALICE)) == 1


def test_a_redirect_arrives_at_a_remote_mx(
    app: Flask, runner, session, lmtp_address, queue, tmp_path
):
    make_mailbox(session, ALICE)
    put(runner, 'redirect "dave@example.net";\n')
    with DnsZone(tmp_path / "dns") as zone, ScriptedMx() as far:
        zone.mx("example.net", "mx.example.net", 10)
        zone.a("mx.example.net", "127.0.0.1")
        zone.reload()
        app.config.update(DNS_RESOLVER=zone.resolver, OUTBOUND_MX_PORT=far.port)
        assert lmtp(lmtp_address, ALICE, message("far"), sender="bob@outside.test")[0] == 250
        queue.run_until_idle()
        [(mail_from, recipients, content)] = far.received
    assert mail_from == ALICE and recipients == ["dave@example.net"]
    assert b"Subject: far" in content and b"Delivered-To: " + ALICE.encode() in content
    assert not content.startswith(b"Return-Path")
    assert inbox(ALICE) == []


def test_a_redirect_loop_stops_and_the_mail_is_kept(runner, session, lmtp_address, queue):
    make_mailbox(session, ALICE)
    make_mailbox(session, BOB)
    put(runner, f'redirect "{BOB}";\n')
    put(runner, f'redirect "{ALICE}";\n', address=BOB)
    assert lmtp(lmtp_address, ALICE, message("loop"), sender="x@outside.test")[0] == 250
    queue.run_until_idle()
    assert inbox(ALICE) == []
    [kept] = inbox(BOB)
    assert kept["Subject"] == "loop"
    assert len(queued(session)) == 1
    assert "forwarding loop" in error_log(BOB)


def test_redirects_are_capped_per_run_and_by_the_sending_limit(
    app: Flask, runner, session, lmtp_address
):
    make_mailbox(session, ALICE)
    targets = [f"t{n}@outside.test" for n in range(6)]
    put(runner, "".join(f'redirect "{t}";\n' for t in targets))
    assert lmtp(lmtp_address, ALICE, message("many"), sender="x@outside.test")[0] == 250
    assert len(queued(session)) == sieve_actions.MAX_REDIRECTS
    assert len(inbox(ALICE)) == 1  # the ones not done keep the message
    assert "more than 4 redirects" in error_log(ALICE)
    app.config["SEND_LIMIT_PER_HOUR"] = sieve_actions.MAX_REDIRECTS  # used up by now
    put(runner, 'redirect "t9@outside.test";\n')
    assert lmtp(lmtp_address, ALICE, message("limit", n=2), sender="x@outside.test")[0] == 250
    assert len(queued(session)) == sieve_actions.MAX_REDIRECTS
    assert len(inbox(ALICE)) == 2
    assert "sending limit reached" in error_log(ALICE)


def test_a_redirect_that_cannot_be_queued_keeps_the_message(
    runner, session, lmtp_address, monkeypatch
):
    make_mailbox(session, ALICE)
    put(runner, 'redirect "carol@outside.test";\n')

    def full(*args: Any, **kwargs: Any) -> None:
        raise outbound.QueueFull("the queue's disk is full")

    monkeypatch.setattr(outbound, "enqueue", full)
    assert lmtp(lmtp_address, ALICE, message("kept"), sender="x@outside.test")[0] == 250
    assert len(inbox(ALICE)) == 1
    assert "could not be queued" in error_log(ALICE)


def test_hostile_headers_neither_break_the_reply_nor_lose_the_message(
    runner, session, lmtp_address
):
    make_mailbox(session, ALICE)
    put(runner, 'require "vacation";\nvacation "Away.";\n')
    data = (
        b"From: =?utf-8?b?!!broken?= <bob@example.test>\r\nTo: \xff\xfe <alice@example.test>\r\n"
        b"Subject: =?x-unknown?q?zz?= \xc3\x28 " + b"s" * 900 + b"\r\n " * 6 + b"s" * 900 + b"\r\n"
        b"Message-ID: <a b c>\r\nReferences:" + b" <r@x>\r\n" * 2000 + b"\r\nHi.\r\n"
    )
    assert lmtp(lmtp_address, ALICE, data)[0] == 250
    assert len(inbox(ALICE)) == 1
    [row] = queued(session)
    raw = outbound.read_spool(row.queue_id)
    reply = email.message_from_bytes(raw, policy=default)
    assert reply["To"] == BOB
    assert reply["In-Reply-To"] is None  # "<a b c>" is no message id
    assert len(reply["Subject"]) <= 250
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_a_vacation_for_mail_the_queue_delivers_locally_reaches_the_sender(runner, session, queue):
    bob = make_mailbox(session, BOB)
    make_mailbox(session, ALICE)
    put(runner, VACATION)
    outbound.enqueue(
        session, sender=BOB, recipients=[ALICE], content=message("queued"), mailbox_id=bob.id
    )
    queue.run_until_idle()
    assert [m["Subject"] for m in inbox(ALICE)] == ["queued"]
    [reply] = inbox(BOB)
    assert reply["Subject"] == "Away"
    assert {r.state for m in queued(session) for r in m.recipients} == {"delivered"}


def test_two_claims_at_the_same_moment_send_one_reply(session):
    mailbox = make_mailbox(session, ALICE)
    assert sieve_actions._claim(session, mailbox.id, "h", BOB, 86400)
    session.commit()
    assert not sieve_actions._claim(session, mailbox.id, "h", BOB, 86400)
    assert sieve_actions._claim(session, mailbox.id, "other handle", BOB, 86400)
    session.commit()
