"""Sending limits through the real submission server with smtplib: 451 4.7.1 past the hourly
limit, the limit lifting as the clock moves on, and a burst suspending sending (550 5.7.1 at the
next MAIL FROM, in this session and in others) with the admins alerted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from provider.models import AuditEvent, Mailbox, OutboundMessage
from provider.services import sending
from provider.services.clock import frozen_at
from tests.conftest import make_admin
from tests.protocols.submission.conftest import ADDRESS, Submission, message

T0 = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)
LIMITED = (
    451,
    b"4.7.1 sending limit reached: 3 recipients per hour for this mailbox; try again later",
)
SUSPENDED = (550, b"5.7.1 sending suspended for this mailbox; contact your provider")


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(SEND_LIMIT_PER_HOUR=3, SEND_LIMIT_PER_DAY=100, SEND_BURST_FACTOR=2)
    return app_config


def queued(session: Session) -> list[OutboundMessage]:
    session.expire_all()
    return list(
        session.scalars(
            select(OutboundMessage)
            .options(selectinload(OutboundMessage.recipients))
            .order_by(OutboundMessage.id)
        )
    )


def test_the_fourth_recipient_in_an_hour_gets_451_and_the_three_go(
    app: Flask, session: Session, sender: Mailbox, submission: Submission
):
    app.config["SEND_BURST_FACTOR"] = 10  # this test retries; the burst rule is the next one's
    with frozen_at(T0):
        client = submission.login()
        client.mail(ADDRESS)
        for name in ("a", "b", "c"):
            assert client.rcpt(f"{name}@remote.test")[0] == 250
        assert client.rcpt("d@remote.test") == LIMITED
        assert client.data(message())[0] == 250
        # The next message: its first recipient is the hour's 4th.
        client.mail(ADDRESS)
        assert client.rcpt("e@remote.test") == LIMITED
        client.rset()
        client.quit()
    [sent] = queued(session)
    assert sorted(r.address for r in sent.recipients) == [
        "a@remote.test",
        "b@remote.test",
        "c@remote.test",
    ]
    assert sending.window_counts(session, sender.id, T0).hour_accepted == 3
    # The window is this clock hour and the one before: at 12:00 the 10:xx recipients are out.
    with frozen_at(T0 + timedelta(hours=1, minutes=29)):
        client = submission.login(implicit=True)
        client.mail(ADDRESS)
        assert client.rcpt("f@remote.test") == LIMITED
        client.quit()
    with frozen_at(datetime(2026, 12, 6, 12, 0, tzinfo=UTC)):
        client = submission.login(implicit=True)
        assert client.sendmail(ADDRESS, ["f@remote.test"], message()) == {}
        client.quit()


def test_recipients_of_an_abandoned_transaction_do_not_count(
    session: Session, sender: Mailbox, submission: Submission
):
    with frozen_at(T0):
        client = submission.login()
        client.mail(ADDRESS)
        for name in ("a", "b", "c"):
            assert client.rcpt(f"{name}@remote.test")[0] == 250
        client.rset()
        assert client.sendmail(ADDRESS, ["x@remote.test", "y@remote.test"], message()) == {}
        client.quit()
    assert sending.window_counts(session, sender.id, T0).hour_accepted == 2


def test_a_burst_suspends_sending_at_the_next_mail_from_everywhere(
    session: Session, sender: Mailbox, submission: Submission
):
    make_admin(session, "root@example.com")
    with frozen_at(T0):
        other = submission.login(implicit=True)  # an open session elsewhere
        client = submission.login()
        assert client.sendmail(ADDRESS, ["a@remote.test", "b@remote.test"], message()) == {}
        client.mail(ADDRESS)
        assert client.rcpt("c@remote.test")[0] == 250  # the hour's 3rd
        # 2 sent + 1 pending + refused attempts: the 6th attempt is 2 x 3 per hour.
        assert client.rcpt("d@remote.test") == LIMITED
        assert client.rcpt("e@remote.test") == LIMITED
        assert client.rcpt("f@remote.test") == SUSPENDED
        client.rset()
        assert client.mail(ADDRESS) == SUSPENDED
        client.quit()
        assert other.mail(ADDRESS) == SUSPENDED
        other.quit()
        # Logging in still works (the owner can read mail); sending does not.
        again = submission.login()
        assert again.mail(ADDRESS) == SUSPENDED
        again.quit()
    session.expire_all()
    mailbox = session.get(Mailbox, sender.id)
    assert mailbox.sending_suspended_at == T0
    assert mailbox.sending_suspended_reason.startswith("burst: 6 recipients tried")
    assert mailbox.status == "active"
    suspends = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "mailbox.sending_suspend")
    ).all()
    assert len(suspends) == 1
    # Only the first message went; the alert to the admin is queued as system mail.
    sent, alert = queued(session)
    assert [r.address for r in sent.recipients] == ["a@remote.test", "b@remote.test"]
    assert (alert.sender, alert.mailbox_id) == ("", None)
    assert [r.address for r in alert.recipients] == ["root@example.com"]
    assert alert.subject == f"Sending suspended for {ADDRESS}"
    # An admin lets it send again: the refusals of the hour are forgotten, not what it sent.
    with frozen_at(T0 + timedelta(minutes=5)):
        sending.resume_sending(session, mailbox, actor=sending.BURST_ACTOR)
        session.commit()
        client = submission.login()
        client.mail(ADDRESS)
        assert client.rcpt("g@remote.test")[0] == 250
        assert client.rcpt("h@remote.test") == LIMITED
        client.quit()
