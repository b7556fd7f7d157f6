"""The queue runner against a scripted far MX found through a real DNS server (dnsmasq):
retries with backoff, exactly one copy, one DSN per failure event, null MX, NXDOMAIN, a DNS
timeout, give-up after OUTBOUND_MAX_DAYS, the delay notice, NOTIFY=NEVER, the null sender."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provider.models import OutboundMessage, OutboundRecipient
from provider.protocols.outbound import runner as queue
from provider.protocols.outbound.runner import QueueRunner
from provider.services import clock, outbound
from tests.conftest import make_mailbox
from tests.dnszone import DnsZone
from tests.outbound.helpers import ScriptedMx, inbox

SENDER = "a@example.test"
MESSAGE = (
    b"From: Alice <a@example.test>\r\nTo: bob@example.net\r\nSubject: Quarterly figures\r\n"
    b"Message-ID: <q1@example.test>\r\n\r\nThe figures.\r\n"
)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def mx(app: Flask, tmp_path) -> Iterator[ScriptedMx]:
    """A scripted MX for example.net, published by dnsmasq; the runner asks that dnsmasq."""
    far = ScriptedMx()
    with DnsZone(tmp_path) as zone, far:
        zone.mx("example.net", "mx.example.net", 10)
        zone.a("mx.example.net", "127.0.0.1")
        zone.mx("nullmx.test", ".", 0)
        zone.a("aonly.test", "127.0.0.1")
        zone.reload()
        app.config.update(DNS_RESOLVER=zone.resolver, OUTBOUND_MX_PORT=far.port)
        yield far


@pytest.fixture
def sender(session: Session):
    return make_mailbox(session, SENDER)


@pytest.fixture
def queue_runner(app: Flask) -> Iterator[QueueRunner]:
    clock.set_now(T0)
    runner = QueueRunner(app)
    try:
        yield runner
    finally:
        runner.stop()
        clock.set_now(None)


def enqueue(session: Session, mailbox_id: int | None, *recipients, sender: str = SENDER) -> str:
    return outbound.enqueue(
        session,
        sender=sender,
        recipients=list(recipients) or ["bob@example.net"],
        content=MESSAGE,
        mailbox_id=mailbox_id,
    ).queue_id


def states(session: Session) -> list[tuple[str, str]]:
    session.expire_all()
    rows = session.scalars(select(OutboundRecipient).order_by(OutboundRecipient.id))
    return [(row.address, row.state) for row in rows]


def row(session: Session, address: str = "bob@example.net") -> OutboundRecipient:
    session.expire_all()
    return session.scalars(
        select(OutboundRecipient).where(OutboundRecipient.address == address)
    ).one()


def test_451_three_times_then_250_arrives_exactly_once_on_the_postfix_schedule(
    session, sender, mx, queue_runner
):
    mx.replies = ["451 4.3.0 try later"] * 3
    queue_id = enqueue(session, sender.id)
    waits = []
    for attempt in range(1, 4):
        queue_runner.run_until_idle()
        recipient = row(session)
        assert recipient.state == "deferred" and recipient.attempts == attempt
        assert recipient.last_reply.startswith("451 4.3.0 try later (from mx.example.net)")
        waits.append(recipient.next_attempt_at - clock.now())
        queue_runner.run_until_idle()  # not due yet: nothing happens
        assert mx.attempts == attempt
        clock.set_now(recipient.next_attempt_at)
    assert waits == [timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=20)]
    queue_runner.run_until_idle()
    assert row(session).state == "delivered" and row(session).attempts == 4
    assert len(mx.received) == 1 and mx.attempts == 4
    assert mx.received[0][0] == SENDER and mx.received[0][1] == ["bob@example.net"]
    assert b"The figures." in mx.received[0][2]
    assert not outbound.spool_path(queue_id).exists()  # every recipient final: spool gone
    assert inbox(SENDER) == []  # no DSN for a delivered message
    queue_runner.run_until_idle()
    assert mx.attempts == 4


def test_backoff_doubles_from_five_minutes_and_stays_at_an_hour():
    assert [queue.backoff(n) for n in range(1, 8)] == [
        timedelta(minutes=m) for m in (5, 10, 20, 40, 60, 60, 60)
    ]
    assert queue.backoff(10**9) == timedelta(hours=1)  # no overflow on a huge count


def test_550_gives_exactly_one_dsn_naming_the_recipients_and_the_reply(
    session, sender, mx, queue_runner
):
    mx.rcpt_replies = {
        "gone@example.net": "550 5.1.1 <gone@example.net>: Recipient address rejected",
        "moved@example.net": "550 5.1.6 moved away",
    }
    queue_id = enqueue(
        session, sender.id, "gone@example.net", "moved@example.net", "bob@example.net"
    )
    queue_runner.run_until_idle()
    assert states(session) == [
        ("gone@example.net", "bounced"),
        ("moved@example.net", "bounced"),
        ("bob@example.net", "delivered"),
    ]
    assert len(mx.received) == 1 and mx.received[0][1] == ["bob@example.net"]
    [notice] = inbox(SENDER)
    assert notice["Subject"] == "Undelivered Mail Returned to Sender"
    assert notice["Auto-Submitted"] == "auto-replied"
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    human, report, returned = notice.iter_parts()
    text = human.get_content()
    assert "<gone@example.net>: 550 5.1.1 <gone@example.net>: Recipient address rejected" in text
    assert "<moved@example.net>: 550 5.1.6 moved away" in text
    assert "bob@example.net" not in text
    status = report.as_bytes().decode()
    assert "Final-Recipient: rfc822; gone@example.net" in status
    assert "Status: 5.1.1" in status and "Status: 5.1.6" in status
    assert "Action: failed" in status and "Remote-MTA: dns; mx.example.net" in status
    assert returned.get_content_type() == "message/rfc822"
    assert b"The figures." in returned.as_bytes()
    assert not outbound.spool_path(queue_id).exists()
    queue_runner.run_until_idle()
    assert len(inbox(SENDER)) == 1


def test_550_at_data_bounces_with_one_dsn(session, sender, mx, queue_runner):
    mx.replies = ["554 5.7.1 message refused as spam"]
    enqueue(session, sender.id, "bob@example.net", "carol@example.net")
    queue_runner.run_until_idle()
    assert {state for _, state in states(session)} == {"bounced"}
    [notice] = inbox(SENDER)
    text = notice.as_string()
    assert "bob@example.net" in text and "carol@example.net" in text
    assert "554 5.7.1 message refused as spam" in text


def test_notify_never_and_the_null_sender_get_no_dsn(session, sender, mx, queue_runner):
    mx.rcpt_replies = {"gone@example.net": "550 5.1.1 no such user"}
    outbound.enqueue(
        session,
        sender=SENDER,
        recipients=[outbound.QueuedRecipient("gone@example.net", notify="NEVER")],
        content=MESSAGE,
        mailbox_id=sender.id,
    )
    enqueue(session, sender.id, "gone@example.net", sender="")  # a notice of ours
    queue_runner.run_until_idle()
    assert [state for _, state in states(session)] == ["bounced", "bounced"]
    assert inbox(SENDER) == []


def test_ret_hdrs_returns_only_the_headers(session, sender, mx, queue_runner):
    mx.rcpt_replies = {"gone@example.net": "550 5.1.1 no such user"}
    outbound.enqueue(
        session,
        sender=SENDER,
        recipients=["gone@example.net"],
        content=MESSAGE,
        mailbox_id=sender.id,
        ret="HDRS",
        envid="env-42",
    )
    queue_runner.run_until_idle()
    [notice] = inbox(SENDER)
    _human, report, returned = notice.iter_parts()
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Subject: Quarterly figures" in returned.as_bytes()
    assert b"The figures." not in notice.as_bytes()
    assert "Original-Envelope-Id: env-42" in report.as_bytes().decode()


def test_null_mx_bounces_556_and_nxdomain_bounces(session, sender, mx, queue_runner):
    enqueue(session, sender.id, "x@nullmx.test", "y@no-such-domain.test")
    queue_runner.run_until_idle()
    assert [r.state for r in map(lambda a: row(session, a), ["x@nullmx.test"])] == ["bounced"]
    assert row(session, "x@nullmx.test").last_reply.startswith("556 5.1.10")
    assert row(session, "y@no-such-domain.test").state == "bounced"
    assert "does not exist" in row(session, "y@no-such-domain.test").last_reply
    [notice] = inbox(SENDER)  # one DSN for both failures of this attempt
    text = notice.as_string()
    assert "x@nullmx.test" in text and "y@no-such-domain.test" in text
    assert mx.attempts == 0


def test_a_domain_without_mx_gets_its_a_record(session, sender, mx, queue_runner):
    enqueue(session, sender.id, "z@aonly.test")
    queue_runner.run_until_idle()
    assert row(session, "z@aonly.test").state == "delivered"
    assert mx.received[0][1] == ["z@aonly.test"]


def test_a_dns_timeout_defers(app, session, sender, mx, queue_runner):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives queries, never answers
        app.config.update(
            DNS_RESOLVER=f"127.0.0.1:{silent.getsockname()[1]}", OUTBOUND_TIMEOUT_SECONDS=1
        )
        enqueue(session, sender.id)
        queue_runner.run_until_idle()
    recipient = row(session)
    assert recipient.state == "deferred" and "timed out" in recipient.last_reply
    assert inbox(SENDER) == []


def test_an_unreachable_mx_defers_and_gives_up_after_max_days_with_one_dsn(
    app, session, sender, mx, queue_runner
):
    app.config["OUTBOUND_MX_PORT"] = mx.port
    mx.down()  # the far side is down
    app.config["OUTBOUND_DELAY_NOTICE_HOURS"] = 4
    queue_id = enqueue(session, sender.id)
    queue_runner.run_until_idle()
    assert row(session).state == "deferred"
    assert "cannot talk to mx.example.net" in row(session).last_reply
    assert inbox(SENDER) == []

    clock.set_now(T0 + timedelta(hours=5))  # past the delay notice
    queue_runner.run_until_idle()
    assert row(session).state == "deferred" and row(session).delay_notified
    [delay] = inbox(SENDER)
    assert delay["Subject"] == "Delayed Mail (still being retried)"
    assert "Action: delayed" in delay.as_string() and "Will-Retry-Until:" in delay.as_string()

    clock.set_now(T0 + timedelta(hours=7))
    queue_runner.run_until_idle()
    assert len(inbox(SENDER)) == 1  # the delay notice comes once

    clock.set_now(T0 + timedelta(days=5, minutes=1))
    queue_runner.run_until_idle()
    recipient = row(session)
    assert recipient.state == "bounced" and "given up after 5 days" in recipient.last_reply
    subjects = [str(m["Subject"]) for m in inbox(SENDER)]
    assert subjects.count("Undelivered Mail Returned to Sender") == 1
    assert not outbound.spool_path(queue_id).exists()


def test_give_up_reads_the_rows_time_not_a_wall_clock(app, session, sender, mx, queue_runner):
    """Moving created_at back (as an operator's old queue would be) gives up at once."""
    mx.replies = ["421 4.7.0 busy"]
    enqueue(session, sender.id)
    session.execute(update(OutboundMessage).values(created_at=T0 - timedelta(days=6)))
    session.commit()
    queue_runner.run_until_idle()
    assert row(session).state == "bounced"
    assert "421 4.7.0 busy" in row(session).last_reply


def test_a_lost_spool_file_bounces_instead_of_looping(session, sender, mx, queue_runner):
    queue_id = enqueue(session, sender.id)
    outbound.spool_path(queue_id).unlink()
    queue_runner.run_until_idle()
    assert row(session).state == "bounced"
    [notice] = inbox(SENDER)
    assert "queued copy of the message is lost" in notice.as_string()


def test_a_non_ascii_address_to_a_server_without_smtputf8_bounces_5_6_7(
    session, sender, mx, queue_runner
):
    enqueue(session, sender.id, "jörg@example.net")
    queue_runner.run_until_idle()
    assert row(session, "jörg@example.net").state == "bounced"
    assert row(session, "jörg@example.net").last_reply.startswith("553 5.6.7")
    assert mx.attempts == 0


def test_bad_bytes_in_the_message_still_go_out_once(session, sender, mx, queue_runner):
    """Bare LF, a NUL, 8-bit text and a header line of 500 characters: sent, not lost. (A
    line over RFC 5321's 1000 is the far side's to refuse: a 5xx, then a DSN, as above.)"""
    content = (
        b"From: a@example.test\nTo: bob@example.net\nSubject: odd \xff bytes\n"
        b"X-Long: " + b"x" * 500 + b"\n\nline one\nnul \x00 here\r\n\xe2\x82\xac\n"
    )
    outbound.enqueue(
        session,
        sender=SENDER,
        recipients=["bob@example.net"],
        content=content,
        mailbox_id=sender.id,
    )
    queue_runner.run_until_idle()
    assert row(session).state == "delivered", row(session).last_reply
    [(_, _, received)] = mx.received
    assert b"line one\r\nnul \x00 here\r\n" in received
    # Bare line endings left as CRLF only (smtplib sends bytes as given: SMTP smuggling).
    assert received.count(b"\n") == received.count(b"\r\n")
    assert received.count(b"\r") == received.count(b"\r\n")
