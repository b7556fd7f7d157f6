"""The trial lifecycle with the clock moved: reminders once each, expiry, grace, deletion."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.errors import UnknownRecipient
from provider.models import AuditEvent, Mailbox, OutboundMessage, Trial, TrialReminder
from provider.services import backups, clock, delivery
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.trials.conftest import ADDRESS, START, inbox_subjects, run_job

EXPIRES = START + timedelta(days=30)


def mailbox(session: Session, address: str = ADDRESS) -> Mailbox | None:
    session.expire_all()
    return session.scalar(select(Mailbox).where(Mailbox.address == address))


def imap_login(servers: dict, password: str = MAILBOX_PASSWORD) -> imaplib.IMAP4:
    client = imaplib.IMAP4(*servers["imap"], timeout=10)
    try:
        client.login(ADDRESS, password)
    except imaplib.IMAP4.error:
        client.shutdown()
        raise
    return client


def smtp_deliver(servers: dict, subject: str) -> None:
    with smtplib.SMTP(*servers["smtp"], timeout=10) as smtp:
        smtp.sendmail(
            "someone@elsewhere.test",
            [ADDRESS],
            f"From: someone@elsewhere.test\r\nTo: {ADDRESS}\r\nSubject: {subject}\r\n\r\nHi.\r\n",
        )


def test_a_trial_ends_thirty_days_after_it_was_made(trial: Mailbox):
    assert trial.plan == "trial"
    assert trial.trial_expires_at == EXPIRES


def test_seven_days_before_the_end_exactly_one_reminder_is_in_inbox(
    app: Flask, session: Session, trial: Mailbox
):
    clock.set_now(EXPIRES - timedelta(days=8))
    run_job(app, session)
    assert inbox_subjects() == []

    clock.set_now(EXPIRES - timedelta(days=7))
    summary = run_job(app, session)
    assert summary["reminded"] == [{"address": ADDRESS, "days_before": 7}]
    assert inbox_subjects() == ["Your free trial ends in 7 days"]
    # Running again, and again a day later, sends nothing more.
    assert run_job(app, session)["reminded"] == []
    clock.set_now(EXPIRES - timedelta(days=6))
    run_job(app, session)
    assert inbox_subjects() == ["Your free trial ends in 7 days"]

    clock.set_now(EXPIRES - timedelta(days=3))
    run_job(app, session)
    run_job(app, session)
    clock.set_now(EXPIRES - timedelta(hours=20))
    run_job(app, session)
    run_job(app, session)
    assert inbox_subjects() == [
        "Your free trial ends in 7 days",
        "Your free trial ends in 3 days",
        "Your free trial ends tomorrow",
    ]
    reminded = mailbox(session)
    assert reminded is not None and reminded.status == "active"
    # The notices count against the quota like any mail.
    folder = mail_store().open(ADDRESS).folder("INBOX")
    assert reminded.used_bytes == sum(info.size for info in folder.messages())


def test_the_reminder_says_when_and_how_to_upgrade(app: Flask, session: Session, trial: Mailbox):
    clock.set_now(EXPIRES - timedelta(days=7))
    run_job(app, session)
    folder = mail_store().open(ADDRESS).folder("INBOX")
    text = folder.read(folder.messages()[0].uid).decode()
    assert "ends in 7 days" in text
    assert "Tuesday 31 March 2026 at 12:00 UTC" in text
    assert "https://mail.provider.test/account/" in text
    assert "upgrade" in text
    assert "30 April 2026" in text  # kept until the grace period is over
    assert "Auto-Submitted: auto-generated" in text


def test_a_job_that_missed_reminders_sends_only_the_most_urgent_one(
    app: Flask, session: Session, trial: Mailbox
):
    clock.set_now(EXPIRES - timedelta(days=2))
    run_job(app, session)
    assert inbox_subjects() == ["Your free trial ends in 2 days"]
    rows = session.execute(
        select(TrialReminder.days_before, TrialReminder.delivered).order_by(
            TrialReminder.days_before
        )
    ).all()
    assert [tuple(row) for row in rows] == [(3, True), (7, False)]
    run_job(app, session)
    assert len(inbox_subjects()) == 1


def test_a_reminder_that_could_not_be_stored_is_tried_again(
    app: Flask, session: Session, trial: Mailbox, monkeypatch: pytest.MonkeyPatch
):
    from provider.mailstore import Folder

    def broken(self: Folder, message: bytes) -> None:
        raise OSError("disk full")

    clock.set_now(EXPIRES - timedelta(days=7))
    with monkeypatch.context() as patch:
        patch.setattr(Folder, "deliver", broken)
        summary = run_job(app, session)
    assert summary["reminded"] == [] and len(summary["failed"]) == 1
    assert session.scalar(select(TrialReminder.id)) is None
    assert mailbox(session).used_bytes == 0  # the reserved bytes were given back
    run_job(app, session)
    assert inbox_subjects() == ["Your free trial ends in 7 days"]


def test_reminders_also_go_to_the_contact_through_the_queue_and_the_relay(
    app: Flask, session: Session, trial: Mailbox
):
    from aiosmtpd.controller import Controller

    from provider.protocols.outbound.runner import QueueRunner

    received: list[tuple[str, list[str], bytes]] = []

    class Sink:
        async def handle_DATA(self, server, smtp_session, envelope) -> str:
            received.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
            return "250 OK"

    with socket.socket() as probe:  # aiosmtpd's Controller cannot report a port-0 binding
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = Controller(Sink(), hostname="127.0.0.1", port=port)
    relay.start()
    runner = QueueRunner(app)
    try:
        app.config["OUTBOUND_RELAY"] = f"127.0.0.1:{port}"
        clock.set_now(EXPIRES - timedelta(days=7))
        run_job(app, session)
        assert received == []  # queued, not sent from the job: the queue retries it
        runner.run_until_idle()
    finally:
        runner.stop()
        relay.stop()
    assert len(received) == 1
    sender, recipients, content = received[0]
    assert sender == "<>"  # the null sender: a notice never bounces back
    assert recipients == ["Customer+mail@elsewhere.test"]
    assert b"Your free trial ends in 7 days" in content


def test_the_contact_copy_is_queued_with_the_null_sender_and_no_mailbox(
    app: Flask, session: Session, trial: Mailbox, monkeypatch: pytest.MonkeyPatch
):
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the trial job must not talk SMTP itself")

    monkeypatch.setattr(smtplib, "SMTP", no_network)
    clock.set_now(EXPIRES - timedelta(days=7))
    assert run_job(app, session)["failed"] == []
    assert inbox_subjects() == ["Your free trial ends in 7 days"]
    [queued] = session.scalars(select(OutboundMessage)).all()
    assert (queued.sender, queued.mailbox_id) == ("", None)
    assert [r.address for r in queued.recipients] == ["Customer+mail@elsewhere.test"]


def test_day_31_imap_and_pop3_are_refused_as_expired_while_smtp_still_delivers(
    app: Flask, session: Session, trial: Mailbox, servers: dict
):
    client = imap_login(servers)  # works during the trial
    client.logout()

    clock.set_now(START + timedelta(days=31))
    summary = run_job(app, session)
    assert summary["expired"] == [ADDRESS]
    expired = mailbox(session)
    assert expired is not None and expired.status == "expired"

    with pytest.raises(imaplib.IMAP4.error, match=r"CONTACTADMIN.*trial.*expired"):
        imap_login(servers)
    pop3 = poplib.POP3(*servers["pop3"], timeout=10)
    pop3.user(ADDRESS)
    with pytest.raises(poplib.error_proto, match=r"SYS/PERM.*trial.*expired"):
        pop3.pass_(MAILBOX_PASSWORD)
    pop3.quit()

    smtp_deliver(servers, "Still arriving")
    assert "Still arriving" in inbox_subjects()
    events = session.scalars(select(AuditEvent.action).where(AuditEvent.target == ADDRESS))
    assert "trial.expire" in list(events)


def test_an_open_imap_session_ends_when_the_trial_expires(
    app: Flask, session: Session, trial: Mailbox, servers: dict
):
    app.config["ACCOUNT_RECHECK_SECONDS"] = 0  # recheck on every command
    client = imap_login(servers)
    client.select("INBOX")
    assert client.noop()[0] == "OK"
    clock.set_now(START + timedelta(days=31))
    run_job(app, session)
    with pytest.raises(imaplib.IMAP4.abort):
        client.noop()
    client.shutdown()


def test_plan_paid_restores_access_at_once_with_all_mail_there(
    app: Flask, session: Session, trial: Mailbox, servers: dict, runner: FlaskCliRunner
):
    clock.set_now(EXPIRES - timedelta(days=7))
    run_job(app, session)
    clock.set_now(START + timedelta(days=31))
    run_job(app, session)
    smtp_deliver(servers, "Sent while expired")
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(servers)

    result = runner.invoke(args=["mailbox", "set", ADDRESS, "--plan", "paid"])
    assert result.exit_code == 0, result.output
    converted = mailbox(session)
    assert converted is not None
    assert (converted.plan, converted.status, converted.trial_expires_at) == (
        "paid",
        "active",
        None,
    )

    client = imap_login(servers)
    status, data = client.select("INBOX", readonly=True)
    assert status == "OK" and int(data[0]) == 2  # the reminder and the mail
    _, found = client.search(None, 'SUBJECT "Sent while expired"')
    assert found[0].split()
    client.logout()
    pop3 = poplib.POP3(*servers["pop3"], timeout=10)
    pop3.user(ADDRESS)
    pop3.pass_(MAILBOX_PASSWORD)
    assert pop3.stat()[0] == 2
    pop3.quit()

    # The lifecycle is over: long after the grace period, nothing happens to it.
    clock.set_now(START + timedelta(days=400))
    summary = run_job(app, session)
    assert summary == {"reminded": [], "expired": [], "deleted": [], "failed": []}
    assert mailbox(session) is not None
    trial_row = session.scalar(select(Trial))
    assert trial_row is not None and trial_row.outcome == "converted"


def test_converting_before_the_end_stops_the_reminders(
    app: Flask, session: Session, trial: Mailbox, runner: FlaskCliRunner
):
    assert runner.invoke(args=["mailbox", "set", ADDRESS, "--plan", "paid"]).exit_code == 0
    for days in (7, 3, 1):
        clock.set_now(EXPIRES - timedelta(days=days))
        run_job(app, session)
    assert inbox_subjects() == []


def test_an_unconverted_trial_is_gone_after_the_grace_period(
    app: Flask, session: Session, trial: Mailbox, servers: dict
):
    smtp_deliver(servers, "Some mail")
    backups.run_backups(session, [ADDRESS])
    session.commit()
    backup_root = backups.store_for(ADDRESS).root
    maildir = mail_store().path_for(ADDRESS)
    assert any(backup_root.iterdir()) and maildir.is_dir()

    clock.set_now(EXPIRES + timedelta(days=29, hours=23))
    run_job(app, session)
    assert mailbox(session).status == "expired"
    smtp_deliver(servers, "Last day of grace")  # still received
    assert maildir.is_dir() and backup_root.is_dir()

    clock.set_now(EXPIRES + timedelta(days=30))
    summary = run_job(app, session)
    assert summary["deleted"] == [ADDRESS]
    assert mailbox(session) is None
    assert not maildir.exists()
    assert not Path(backup_root).exists()
    with pytest.raises(UnknownRecipient):
        delivery.resolve(session, ADDRESS)
    trial_row = session.scalar(select(Trial))
    assert trial_row is not None
    assert (trial_row.outcome, trial_row.mailbox_id, trial_row.address) == (
        "deleted",
        None,
        ADDRESS,
    )
    actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.target == ADDRESS)))
    assert "trial.delete" in actions and "mailbox.delete" in actions
    assert run_job(app, session) == {"reminded": [], "expired": [], "deleted": [], "failed": []}


def test_grace_and_reminder_days_are_settings(app: Flask, session: Session, trial: Mailbox):
    app.config.update(TRIAL_REMINDER_DAYS="10", TRIAL_GRACE_DAYS=2)
    clock.set_now(EXPIRES - timedelta(days=7))
    run_job(app, session)
    assert inbox_subjects() == ["Your free trial ends in 7 days"]  # the 10-day one, late
    clock.set_now(EXPIRES + timedelta(days=2))
    assert run_job(app, session)["deleted"] == [ADDRESS]


def test_paid_mailboxes_are_never_touched(app: Flask, session: Session, frozen: None):
    make_mailbox(session, "paying@example.test")
    clock.set_now(START + timedelta(days=1000))
    assert run_job(app, session) == {"reminded": [], "expired": [], "deleted": [], "failed": []}
    assert mailbox(session, "paying@example.test").status == "active"
