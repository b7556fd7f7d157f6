"""What DATA does: a message answered 250 is in the queue (row and spool file), with trace
headers, its DSN parameters, within the limits; nothing is queued when the answer is not 250."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from provider.errors import SendingLimited, SendingSuspended, TemporaryFailure
from provider.models import Mailbox, OutboundMessage
from provider.services import outbound, sending
from provider.services.outbound import QueueFull
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, wait_until
from tests.protocols.conftest import RawClient
from tests.protocols.submission.conftest import ADDRESS, Submission, message

from .test_session import plain


def queued_messages(session: Session) -> list[OutboundMessage]:
    session.expire_all()
    return list(
        session.scalars(select(OutboundMessage).options(selectinload(OutboundMessage.recipients)))
    )


def test_a_message_answered_250_is_in_the_queue(
    session: Session, sender: Mailbox, submission: Submission
):
    client = submission.login()
    client.mail(ADDRESS)
    client.rcpt("bob@remote.test")
    client.rcpt("carol@example.test")
    code, text = client.data(message())
    client.quit()
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    queue_id = text.decode().rsplit(" ", 1)[1]
    [queued] = queued_messages(session)
    assert queued.queue_id == queue_id
    assert queued.sender == ADDRESS and queued.mailbox_id == sender.id
    assert sorted(r.address for r in queued.recipients) == ["bob@remote.test", "carol@example.test"]
    assert {r.state for r in queued.recipients} == {"queued"}
    assert queued.subject == "Test"
    spooled = outbound.spool_path(queue_id).read_bytes()
    assert spooled.endswith(message())
    assert queued.size == len(spooled)


def test_trace_headers_say_esmtpsa_and_tls_but_not_the_client_address(
    session: Session, sender: Mailbox, submission: Submission
):
    client = submission.login(implicit=True)
    client.sendmail(ADDRESS, ["bob@remote.test"], message())
    client.quit()
    [queued] = queued_messages(session)
    spooled = outbound.spool_path(queued.queue_id).read_bytes()
    head = spooled[: spooled.index(b"From: ")]
    assert head.startswith(
        b"Received: by smtp.provider.test (provider) with ESMTPSA\r\n\t(using TLSv1."
    )
    assert b"127.0.0.1" not in spooled and b"client.test" not in head
    # The client's own Message-ID and Date are kept, not doubled.
    assert spooled.count(b"Message-ID:") == 1 and spooled.count(b"Date:") == 1


def test_message_id_and_date_are_added_when_missing(
    session: Session, sender: Mailbox, submission: Submission
):
    bare = f"From: {ADDRESS}\r\nTo: bob@remote.test\r\nSubject: bare\r\n\r\nHi\r\n".encode()
    client = submission.login()
    client.sendmail(ADDRESS, ["bob@remote.test"], bare)
    client.quit()
    [queued] = queued_messages(session)
    spooled = outbound.spool_path(queued.queue_id).read_bytes()
    assert b"\r\nMessage-ID: <" in spooled and b"@smtp.provider.test>\r\n" in spooled
    assert b"\r\nDate: " in spooled and spooled.endswith(bare)


def test_nothing_goes_to_the_sent_folder(sender: Mailbox, submission: Submission):
    client = submission.login()
    client.sendmail(ADDRESS, ["bob@remote.test", ADDRESS], message())
    client.quit()
    sent = mail_store().path_for(ADDRESS) / ".Sent"
    assert sent.is_dir()
    assert [p for sub in ("new", "cur", "tmp") for p in (sent / sub).iterdir()] == []


def test_dsn_parameters_are_kept_for_the_queue(
    session: Session, sender: Mailbox, submission: Submission
):
    client = submission.login()
    assert client.mail(ADDRESS, ["RET=HDRS", "ENVID=QQ+2Bid-1"])[0] == 250
    assert (
        client.rcpt("bob@remote.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@remote.test"])[
            0
        ]
        == 250
    )
    assert client.rcpt("carol@remote.test", ["NOTIFY=NEVER"])[0] == 250
    assert client.rcpt("dave@remote.test")[0] == 250
    assert client.data(message())[0] == 250
    client.quit()
    [queued] = queued_messages(session)
    assert (queued.ret, queued.envid) == ("HDRS", "QQ+2Bid-1")
    options = {r.address: (r.notify, r.orcpt) for r in queued.recipients}
    assert options == {
        "bob@remote.test": ("SUCCESS,FAILURE", "rfc822;Bob@remote.test"),
        "carol@remote.test": ("NEVER", None),
        "dave@remote.test": (None, None),
    }


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<{a}> RET=ALL", "501 5.5.4 RET can only be FULL or HDRS"),
        ("MAIL FROM:<{a}> ENVID=a=b", "501 5.5.4 ENVID must be xtext"),
        ("MAIL FROM:<{a}> ENVID=" + "x" * 101, "501 5.5.4 ENVID must be xtext"),
        ("MAIL FROM:<{a}> SIZE=12x", "501 5.5.4 SIZE takes a number"),
        ("MAIL FROM:<{a}> SIZE=99999999999999999999999", "501 5.5.4 SIZE takes a number"),
        ("MAIL FROM:<{a}> SIZE=2000000", "552 5.3.4 Message size exceeds"),
        ("MAIL FROM:<{a}> BODY=BINARYMIME", "501 5.5.4 BODY can only be"),
        ("MAIL FROM:<{a}> XFORWARD=1", "555 5.5.4 MAIL FROM parameter XFORWARD"),
        ("MAIL FROM:<{a}> RET=FULL RET=HDRS", "501 5.5.4 Syntax"),
    ],
)
def test_bad_mail_parameters_are_refused(
    sender: Mailbox, submission: Submission, command: str, reply: str
):
    with logged_in_raw(submission) as raw:
        code, text = raw.command(command.format(a=ADDRESS))
        assert f"{code} {text}".startswith(reply)
        # The transaction did not start.
        assert raw.command(f"MAIL FROM:<{ADDRESS}>")[0] == 250


@pytest.mark.parametrize(
    ("parameters", "reply"),
    [
        ("NOTIFY=SOMETIMES", "501 5.5.4 NOTIFY is NEVER"),
        ("NOTIFY=NEVER,SUCCESS", "501 5.5.4 NOTIFY is NEVER"),
        ("NOTIFY=SUCCESS,SUCCESS", "501 5.5.4 NOTIFY is NEVER"),
        ("ORCPT=bob@remote.test", "501 5.5.4 ORCPT must be"),
        ("ORCPT=rfc822;a=b", "501 5.5.4 ORCPT must be"),
        ("ORCPT=rfc822;" + "x" * 400, "501 5.5.4 ORCPT must be"),
        ("FOO=1", "555 5.5.4 RCPT TO parameter FOO"),
    ],
)
def test_bad_rcpt_parameters_are_refused(
    sender: Mailbox, submission: Submission, parameters: str, reply: str
):
    with logged_in_raw(submission) as raw:
        assert raw.command(f"MAIL FROM:<{ADDRESS}>")[0] == 250
        code, text = raw.command(f"RCPT TO:<bob@remote.test> {parameters}")
        assert f"{code} {text}".startswith(reply)


@contextmanager
def logged_in_raw(submission: Submission) -> Iterator[RawClient]:
    """A raw client on the STARTTLS port, logged in (loopback: no TLS needed)."""
    with RawClient(submission.starttls) as raw:
        raw.reply()
        raw.send(b"EHLO client.test\r\n")
        raw.reply_lines()
        assert raw.command("AUTH PLAIN " + plain(ADDRESS, MAILBOX_PASSWORD))[0] == 235
        yield raw


def test_recipient_limit_hook_is_asked_for_each_recipient(
    sender: Mailbox, submission: Submission, monkeypatch: pytest.MonkeyPatch
):
    asked: list[tuple[str, int]] = []

    def check(session: Session, mailbox: Mailbox, pending: int) -> None:
        asked.append((mailbox.address, pending))
        if pending == 2:
            raise SendingLimited("sending limit reached: 2 recipients per hour; try later")

    monkeypatch.setattr(sending, "check_recipient", check)
    client = submission.login()
    client.mail(ADDRESS)
    assert client.rcpt("a@remote.test")[0] == 250
    assert client.rcpt("b@remote.test")[0] == 250
    assert client.rcpt("c@remote.test") == (
        451,
        b"4.7.1 sending limit reached: 2 recipients per hour; try later",
    )
    assert client.data(message())[0] == 250  # the two accepted ones go
    client.quit()
    assert asked == [(ADDRESS, 0), (ADDRESS, 1), (ADDRESS, 2)]


def test_sending_suspended_by_the_burst_rule_at_rcpt(
    session: Session, sender: Mailbox, submission: Submission, monkeypatch: pytest.MonkeyPatch
):
    def check(session: Session, mailbox: Mailbox, pending: int) -> None:
        raise SendingSuspended("sending suspended for this mailbox: too many recipients at once")

    monkeypatch.setattr(sending, "check_recipient", check)
    client = submission.login()
    client.mail(ADDRESS)
    code, text = client.rcpt("a@remote.test")
    assert (code, text[:6]) == (550, b"5.7.1 ")
    client.quit()
    assert queued_messages(session) == []


@pytest.fixture
def three_recipients(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(SEND_MAX_RECIPIENTS=3)
    return app_config


def test_recipients_per_message_are_capped(
    three_recipients: dict[str, Any], session: Session, sender: Mailbox, submission: Submission
):
    client = submission.login()
    client.mail(ADDRESS)
    for number in range(3):
        assert client.rcpt(f"r{number}@remote.test")[0] == 250
    assert client.rcpt("r3@remote.test") == (452, b"4.5.3 Too many recipients")
    assert client.data(message())[0] == 250
    client.quit()
    [queued] = queued_messages(session)
    assert len(queued.recipients) == 3


def test_message_over_the_size_limit_is_refused_and_not_queued(
    session: Session, sender: Mailbox, submission: Submission
):
    big = message(body=("x" * 998 + "\r\n") * 1100)  # over 1 MB
    client = submission.login()
    client.mail(ADDRESS)  # without SIZE=, which would have it refused here
    client.rcpt("bob@remote.test")
    code, text = client.data(big)
    assert (code, text) == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert client.noop()[0] == 250  # the session goes on
    client.quit()
    assert queued_messages(session) == []


@pytest.mark.parametrize(
    ("failure", "reply"),
    [
        (QueueFull("the mail queue's disk is full; try again later"), 452),
        (TemporaryFailure("temporary failure queueing the message; try again later"), 451),
        (OSError("disk on fire"), 451),
    ],
)
def test_queue_failures_are_temporary_and_leave_nothing(
    session: Session,
    sender: Mailbox,
    submission: Submission,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    reply: int,
):
    def write_spool(queue_id: str, content: bytes) -> None:
        raise failure

    monkeypatch.setattr(outbound, "write_spool", write_spool)
    client = submission.login()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(ADDRESS, ["bob@remote.test"], message())
    assert refused.value.smtp_code == reply
    assert refused.value.smtp_error.startswith(f"{reply // 100}.3.".encode())
    client.quit()
    assert queued_messages(session) == []


def test_a_failed_commit_removes_the_spool_file(
    session: Session, sender: Mailbox, submission: Submission, monkeypatch: pytest.MonkeyPatch
):
    def record_accepted(session: Session, mailbox_id: int, recipients: int) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(sending, "record_accepted", record_accepted)
    client = submission.login()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(ADDRESS, ["bob@remote.test"], message())
    assert refused.value.smtp_code == 451
    client.quit()
    assert queued_messages(session) == []
    assert [p for p in outbound.queue_dir().glob("*.eml")] == []


def test_pipelined_transaction_gets_its_replies_in_order(
    session: Session, sender: Mailbox, submission: Submission
):
    with logged_in_raw(submission) as raw:
        raw.send(
            f"MAIL FROM:<{ADDRESS}>\r\nRCPT TO:<a@remote.test>\r\nRCPT TO:<b@remote.test>\r\n"
            "RCPT TO:<bad address>\r\nDATA\r\n".encode()
        )
        assert [raw.reply()[0] for _ in range(5)] == [250, 250, 250, 501, 354]
        raw.send(message() + b".\r\nNOOP\r\nQUIT\r\n")
        code, text = raw.reply()
        assert code == 250 and text.startswith("2.0.0 Ok: queued as ")
        assert raw.reply() == (250, "2.0.0 OK")
        assert raw.reply()[0] == 221
    [queued] = queued_messages(session)
    assert len(queued.recipients) == 2


def test_queue_counts_one_row_per_message(
    session: Session, sender: Mailbox, submission: Submission
):
    client = submission.login()
    for _ in range(3):
        client.sendmail(ADDRESS, ["bob@remote.test"], message())
    client.quit()
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 3


def test_shutdown_waits_for_a_message_being_queued_and_its_250(
    session: Session, sender: Mailbox, submission: Submission, monkeypatch: pytest.MonkeyPatch
):
    entered, gate = threading.Event(), threading.Event()
    real_enqueue = outbound.enqueue

    def slow_enqueue(*args: Any, **kwargs: Any) -> OutboundMessage:
        entered.set()
        gate.wait(10)
        return real_enqueue(*args, **kwargs)

    monkeypatch.setattr(outbound, "enqueue", slow_enqueue)
    with logged_in_raw(submission) as raw:
        raw.command(f"MAIL FROM:<{ADDRESS}>")
        raw.command("RCPT TO:<bob@remote.test>")
        raw.command("DATA")
        raw.send(message() + b".\r\n")
        assert entered.wait(10)
        stopper = threading.Thread(target=submission.stop)
        stopper.start()
        # The listener stops accepting at once; the message in flight is waited for.
        assert wait_until(lambda: refused(submission.starttls), timeout=10)
        gate.set()
        code, text = raw.reply()
        assert code == 250 and text.startswith("2.0.0 Ok: queued as ")
        assert raw.reply() == (421, "4.3.2 Service shutting down")
        stopper.join(30)
    assert len(queued_messages(session)) == 1


def refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return True
    return False
