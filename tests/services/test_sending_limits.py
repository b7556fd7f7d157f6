"""Sending limits: counting, the hour and day windows, overrides, racing sessions, the burst
rule (suspended exactly once, audited, the admins alerted) and the stats."""

from __future__ import annotations

import json
import os
import select as select_module
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from provider.errors import InvalidInput, SendingLimited, SendingSuspended
from provider.extensions import db
from provider.models import AuditEvent, Mailbox, OutboundMessage, SendingCount
from provider.services import outbound, sending
from provider.services.clock import frozen_at
from tests.conftest import TEST_ACTOR, make_admin, make_domain, make_mailbox

T0 = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        SEND_LIMIT_PER_HOUR=3,
        SEND_LIMIT_PER_DAY=5,
        TRIAL_SEND_LIMIT_PER_HOUR=2,
        TRIAL_SEND_LIMIT_PER_DAY=4,
        SEND_BURST_FACTOR=2,
    )
    return app_config


@pytest.fixture
def mailbox(session) -> Mailbox:
    return make_mailbox(session, "alice@example.test")


def events(session, action: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def send(session, mailbox: Mailbox, recipients: int = 1) -> None:
    sending.record_accepted(session, mailbox.id, recipients)
    session.commit()


def refusal(session, mailbox: Mailbox, pending: int = 0) -> Exception | None:
    try:
        sending.check_recipient(session, mailbox, pending)
    except (SendingLimited, SendingSuspended) as exc:
        return exc
    return None


# --- counting --------------------------------------------------------------------------------


def test_counts_go_into_one_row_per_clock_hour(session, mailbox):
    with frozen_at(T0):
        send(session, mailbox, 2)
        send(session, mailbox, 3)
    with frozen_at(T0 + timedelta(minutes=29, seconds=59)):
        send(session, mailbox, 1)
    with frozen_at(T0 + timedelta(minutes=30)):
        send(session, mailbox, 4)
    rows = session.execute(
        select(SendingCount.hour, SendingCount.accepted).order_by(SendingCount.hour)
    ).all()
    assert rows == [
        (datetime(2026, 12, 6, 10, tzinfo=UTC), 6),
        (datetime(2026, 12, 6, 11, tzinfo=UTC), 4),
    ]


def test_a_count_commits_with_the_queued_message_or_not_at_all(app, session, mailbox):
    with frozen_at(T0):
        outbound.enqueue(
            session,
            sender=mailbox.address,
            recipients=["a@remote.test", "b@remote.test"],
            content=b"From: alice@example.test\r\n\r\nHi\r\n",
            mailbox_id=mailbox.id,
        )
        session.rollback()  # nothing pending: the count was committed with the message
        assert sending.window_counts(session, mailbox.id).hour_accepted == 2


def test_a_message_that_fails_to_queue_counts_nothing(app, session, mailbox, monkeypatch):
    def broken(*_args: Any) -> None:
        raise RuntimeError("disk went away after the count")

    monkeypatch.setattr(outbound, "on_commit", broken)  # runs after record_accepted
    with frozen_at(T0), pytest.raises(RuntimeError):
        outbound.enqueue(
            session,
            sender=mailbox.address,
            recipients=["a@remote.test"],
            content=b"From: alice@example.test\r\n\r\nHi\r\n",
            mailbox_id=mailbox.id,
        )
    assert sending.window_counts(session, mailbox.id, T0).hour_accepted == 0
    assert session.scalar(select(func.count()).select_from(SendingCount)) == 0


# --- limits and windows ----------------------------------------------------------------------


def test_the_recipient_past_the_hourly_limit_gets_451_with_a_clear_text(session, mailbox):
    with frozen_at(T0):
        send(session, mailbox, 2)
        assert refusal(session, mailbox) is None  # the 3rd
        exc = refusal(session, mailbox, pending=1)  # the 4th, one already in this message
    assert isinstance(exc, SendingLimited)
    assert exc.smtp_reply == "451 4.7.1"
    assert exc.message == (
        "sending limit reached: 3 recipients per hour for this mailbox; try again later"
    )


def test_hour_window_is_this_clock_hour_and_the_one_before(session, mailbox):
    with frozen_at(T0):  # 10:30
        send(session, mailbox, 3)
    with frozen_at(datetime(2026, 12, 6, 11, 59, 59, tzinfo=UTC)):
        assert isinstance(refusal(session, mailbox), SendingLimited)
    with frozen_at(datetime(2026, 12, 6, 12, 0, tzinfo=UTC)):
        assert refusal(session, mailbox) is None


def test_day_window_is_this_hour_and_the_24_before(session, app, mailbox):
    app.config["SEND_LIMIT_PER_HOUR"] = 100
    for hours in (0, 5, 10, 15, 20):
        with frozen_at(T0 + timedelta(hours=hours)):
            send(session, mailbox, 1)
    with frozen_at(T0 + timedelta(hours=24)):  # 10:30 the next day: 10:00 still counts
        exc = refusal(session, mailbox)
    assert isinstance(exc, SendingLimited)
    assert "5 recipients per day" in exc.message
    with frozen_at(datetime(2026, 12, 7, 11, 0, tzinfo=UTC)):
        assert refusal(session, mailbox) is None


def test_a_clock_set_back_does_not_count_future_buckets(session, mailbox):
    with frozen_at(T0 + timedelta(hours=3)):
        send(session, mailbox, 3)
    with frozen_at(T0):
        assert refusal(session, mailbox) is None


def test_trial_mailboxes_have_the_trial_limits(session):
    trial = make_mailbox(session, "trial@example.test", plan="trial", contact_email="t@home.test")
    limits = sending.limits_for(trial)
    assert (limits.per_hour, limits.per_day) == (2, 4)
    with frozen_at(T0):
        send(session, trial, 2)
        assert "2 recipients per hour" in str(refusal(session, trial))


def test_a_mailbox_override_wins_and_default_clears_it(session, mailbox):
    assert sending.set_limits(session, mailbox, actor=TEST_ACTOR, per_hour="10", per_day="20")
    session.commit()
    limits = sending.limits_for(mailbox)
    assert (limits.per_hour, limits.per_day, limits.hour_overridden) == (10, 20, True)
    with frozen_at(T0):
        send(session, mailbox, 9)
        assert refusal(session, mailbox) is None
        assert "10 recipients per hour" in str(refusal(session, mailbox, pending=1))
    [event] = events(session, "mailbox.sending_limits")
    assert event.before == {"send_limit_hour": None, "send_limit_day": None}
    assert event.after == {"send_limit_hour": 10, "send_limit_day": 20}
    assert event.domain == "example.test"
    assert sending.set_limits(session, mailbox, actor=TEST_ACTOR, per_hour="default")
    session.commit()
    assert (mailbox.send_limit_hour, mailbox.send_limit_day) == (None, 20)
    # The same values again: no change, no audit row.
    assert not sending.set_limits(session, mailbox, actor=TEST_ACTOR, per_day="20")
    assert len(events(session, "mailbox.sending_limits")) == 2


@pytest.mark.parametrize(
    "value",
    ["0", "-1", "100001", "1e3", "abc", " ", "3.5", "\uff11\uff12", "9" * 400, "12\x00", "+5"],
)
def test_bad_limits_are_refused_and_change_nothing(session, mailbox, value):
    if not value.strip():
        # Blank means "default" (a form's empty field), like the word itself.
        assert sending.parse_limit(value, "send limit per hour", "send_limit_hour") is None
        return
    with pytest.raises(InvalidInput) as raised:
        sending.set_limits(session, mailbox, actor=TEST_ACTOR, per_hour="7", per_day=value)
    assert raised.value.field == "send_limit_day"
    assert raised.value.message == (
        "send limit per day must be a whole number from 1 to 100000, "
        "or 'default' for the plan's setting"
    )
    session.rollback()
    assert (mailbox.send_limit_hour, mailbox.send_limit_day) == (None, None)


def test_limit_bounds_are_accepted(session, mailbox):
    sending.set_limits(session, mailbox, actor=TEST_ACTOR, per_hour="1", per_day="100000")
    assert (mailbox.send_limit_hour, mailbox.send_limit_day) == (1, 100000)


# --- racing sessions -------------------------------------------------------------------------


def race(app: Flask, threads: int, work: Callable[[], None]) -> list[BaseException]:
    """Run `work` in `threads` threads at once, each with its own app context and session."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run() -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=10)
                work()
            except BaseException as exc:  # collected and asserted on by the test
                errors.append(exc)
            finally:
                db.session.remove()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    return errors


def test_racing_sessions_lose_no_count_and_raise_nothing(app, session, mailbox):
    mailbox_id = mailbox.id

    def work() -> None:
        for _ in range(20):
            sending.record_accepted(db.session, mailbox_id, 2)
            db.session.commit()

    with frozen_at(T0):
        assert race(app, 4, work) == []
        session.expire_all()
        assert sending.window_counts(session, mailbox_id).hour_accepted == 4 * 20 * 2
    assert session.scalar(select(func.count()).select_from(SendingCount)) == 1


def test_racing_refusals_suspend_exactly_once_and_alert_once(app, session, mailbox):
    make_admin(session)
    mailbox.send_limit_hour = 2
    session.commit()
    mailbox_id = mailbox.id
    outcomes: list[str] = []

    def work() -> None:
        for _ in range(5):
            box = db.session.get(Mailbox, mailbox_id)
            try:
                sending.check_recipient(db.session, box, 0)
                outcomes.append("ok")
            except SendingLimited:
                outcomes.append("limited")
            except SendingSuspended:
                outcomes.append("suspended")

    with frozen_at(T0):
        send(session, mailbox, 2)
        assert race(app, 4, work) == []
    assert outcomes.count("ok") == 0
    assert "suspended" in outcomes
    session.expire_all()
    assert len(events(session, "mailbox.sending_suspend")) == 1
    assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 1
    assert db.session.get(Mailbox, mailbox_id).sending_suspended_at == T0


# --- the burst rule --------------------------------------------------------------------------


def test_a_burst_suspends_sending_once_audits_and_alerts_the_right_admins(session, mailbox):
    other = make_domain(session, "other.test")
    make_admin(session, "root@example.com")  # superadmin
    make_admin(session, "boss@example.test", superadmin=False, domains=[mailbox.domain])
    make_admin(session, "elsewhere@other.test", superadmin=False, domains=[other])
    gone = make_admin(session, "gone@example.com")
    gone.active = False
    session.commit()
    with frozen_at(T0):
        send(session, mailbox, 3)
        # 3 sent + refused attempts: the 6th attempt (2 x 3 per hour) suspends.
        assert isinstance(refusal(session, mailbox), SendingLimited)
        assert isinstance(refusal(session, mailbox), SendingLimited)
        exc = refusal(session, mailbox)
        assert isinstance(exc, SendingSuspended)
        assert exc.smtp_reply == "550 5.7.1"
        # Later attempts: refused at once, nothing more recorded.
        assert isinstance(refusal(session, mailbox), SendingSuspended)
    session.expire_all()
    assert mailbox.sending_suspended_at == T0
    assert mailbox.sending_suspended_reason == (
        "burst: 6 recipients tried within an hour, 2 times the limit of 3 per hour"
    )
    [event] = events(session, "mailbox.sending_suspend")
    assert (event.actor, event.target, event.domain) == (
        "sending-limits",
        "alice@example.test",
        "example.test",
    )
    assert event.after["attempts"] == 6
    [alert] = session.scalars(select(OutboundMessage))
    assert (alert.sender, alert.mailbox_id) == ("", None)
    assert sorted(r.address for r in alert.recipients) == [
        "boss@example.test",
        "root@example.com",
    ]
    parsed = message_from_bytes(outbound.read_spool(alert.queue_id))
    assert parsed["Subject"] == "Sending suspended for alice@example.test"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["To"] == "undisclosed-recipients:;"  # nobody sees the others' addresses
    body = parsed.get_payload(decode=True).decode()
    assert "burst: 6 recipients" in body
    assert f"/admin/mailboxes/{mailbox.id}" in body
    # The alert is system mail: it counts against no mailbox.
    assert sending.window_counts(session, mailbox.id, T0).hour_accepted == 3


def test_refusals_at_the_day_limit_count_toward_the_burst(session, app, mailbox):
    app.config["SEND_LIMIT_PER_HOUR"] = 4
    with frozen_at(T0 - timedelta(hours=5)):
        send(session, mailbox, 4)
    with frozen_at(T0):
        send(session, mailbox, 1)  # the day's 5th
        outcomes = [type(refusal(session, mailbox)).__name__ for _ in range(7)]
    # 1 sent this hour + 7 refused = 8 attempts = 2 x 4 per hour.
    assert outcomes == ["SendingLimited"] * 6 + ["SendingSuspended"]


def test_a_failing_alert_leaves_the_suspension_in_place(session, mailbox, monkeypatch):
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("queue unavailable")

    monkeypatch.setattr(outbound, "enqueue", broken)
    make_admin(session)
    with frozen_at(T0):
        send(session, mailbox, 3)
        outcomes = [type(refusal(session, mailbox)).__name__ for _ in range(3)]
    assert outcomes[-1] == "SendingSuspended"
    session.expire_all()
    assert mailbox.sending_suspended_at is not None
    assert len(events(session, "mailbox.sending_suspend")) == 1


def test_resume_lets_it_send_again_without_suspending_at_the_next_refusal(session, mailbox):
    with frozen_at(T0):
        send(session, mailbox, 3)
        while not isinstance(refusal(session, mailbox), SendingSuspended):
            pass
        assert sending.resume_sending(session, mailbox, actor=TEST_ACTOR)
        session.commit()
        assert mailbox.sending_suspended_at is None
        assert isinstance(refusal(session, mailbox), SendingLimited)  # still at its limit
    with frozen_at(T0 + timedelta(hours=2)):
        assert refusal(session, mailbox) is None
    [event] = events(session, "mailbox.sending_resume")
    assert event.before["reason"].startswith("burst:")
    assert not sending.resume_sending(session, mailbox, actor=TEST_ACTOR)  # not suspended


def test_an_admin_may_suspend_sending_and_the_first_reason_stays(session, mailbox):
    with frozen_at(T0):
        assert sending.suspend_sending(session, mailbox, actor=TEST_ACTOR)
        assert not sending.suspend_sending(session, mailbox, actor=TEST_ACTOR, reason="again")
        session.commit()
        assert isinstance(refusal(session, mailbox), SendingSuspended)
    assert mailbox.sending_suspended_reason == "stopped by test"
    assert len(events(session, "mailbox.sending_suspend")) == 1
    # An admin's stop alerts nobody: the admin knows.
    assert session.scalar(select(OutboundMessage)) is None


def test_suspended_mailboxes_are_listed_within_scope(session, mailbox):
    bob = make_mailbox(session, "bob@other.test")
    with frozen_at(T0):
        sending.suspend_sending(session, mailbox, actor=TEST_ACTOR)
    with frozen_at(T0 + timedelta(minutes=5)):
        sending.suspend_sending(session, bob, actor=TEST_ACTOR)
    session.commit()
    assert [m.address for m in sending.suspended_mailboxes(session)] == [
        "bob@other.test",
        "alice@example.test",
    ]
    assert [m.address for m in sending.suspended_mailboxes(session, {mailbox.domain_id})] == [
        "alice@example.test"
    ]


# --- stats -----------------------------------------------------------------------------------


def test_sent_today_and_the_last_seven_days(session, mailbox):
    with frozen_at(datetime(2026, 11, 29, 23, 59, tzinfo=UTC)):
        send(session, mailbox, 50)  # 8 days before: outside
    with frozen_at(datetime(2026, 11, 30, 0, 0, tzinfo=UTC)):
        send(session, mailbox, 1)
    with frozen_at(datetime(2026, 12, 5, 23, 10, tzinfo=UTC)):
        send(session, mailbox, 2)
    with frozen_at(datetime(2026, 12, 6, 0, 5, tzinfo=UTC)):
        send(session, mailbox, 1)
        assert isinstance(refusal(session, mailbox), SendingLimited)  # 3 this hour and the last
    with frozen_at(T0):
        send(session, mailbox, 1)
        days = sending.daily_counts(session, mailbox.id)
        assert sending.sent_today(session, mailbox.id) == 2
        overview = sending.overview(session, mailbox).to_dict()
    assert [(d.day, d.accepted, d.refused) for d in days] == [
        (date(2026, 11, 30), 1, 0),
        (date(2026, 12, 1), 0, 0),
        (date(2026, 12, 2), 0, 0),
        (date(2026, 12, 3), 0, 0),
        (date(2026, 12, 4), 0, 0),
        (date(2026, 12, 5), 2, 0),
        (date(2026, 12, 6), 2, 1),
    ]
    assert overview["sent_today"] == 2
    assert overview["limit_per_hour"] == 3
    assert overview["limit_per_hour_source"] == "plan"
    assert overview["last_7_days"][-1] == {"day": "2026-12-06", "sent": 2, "refused": 1}
    assert overview["suspended"] is False


@pytest.mark.parametrize("raw", ["many", "", None, "-5", "0"])
def test_a_broken_limit_setting_falls_back_to_a_positive_limit(app, session, raw):
    app.config["SEND_LIMIT_PER_HOUR"] = raw
    limits = sending.limits_for(make_mailbox(session, "bob@example.test"))
    assert limits.per_hour == 300


def test_an_admin_address_that_is_not_ascii_still_gets_the_alert(session, mailbox):
    make_admin(session, "jörg@bücher.example", superadmin=True)
    with frozen_at(T0):
        send(session, mailbox, 3)
        outcomes = [type(refusal(session, mailbox)).__name__ for _ in range(3)]
    assert outcomes[-1] == "SendingSuspended"
    [alert] = session.scalars(select(OutboundMessage))
    assert [r.address for r in alert.recipients] == ["jörg@bücher.example"]
    assert outbound.read_spool(alert.queue_id).isascii()


# --- kill -9 in the middle of a suspension ---------------------------------------------------

SUSPENDING_CHILD = """
import json, sys, threading
from provider import create_app
from provider.extensions import db
from provider.models import Mailbox
from provider.services import audit, sending

def hang(*_args, **_kwargs):
    # The conditional UPDATE ran, nothing is committed: say so, then wait for the kill.
    print("inside", flush=True)
    threading.Event().wait()

app = create_app(json.loads(sys.argv[1]))
with app.app_context():
    audit.record = hang
    sending.check_recipient(db.session, db.session.get(Mailbox, int(sys.argv[2])), 0)
"""


def read_line(process: subprocess.Popen[bytes], timeout: float = 60.0) -> bytes:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select_module.select([process.stdout], [], [], 0.5)
        if ready:
            return process.stdout.readline()
        if process.poll() is not None:
            break
    return b""


def test_kill_9_during_the_suspension_leaves_it_undone_and_the_next_try_suspends_once(
    app_config, session, mailbox
):
    make_admin(session)
    send(session, mailbox, 3)
    assert isinstance(refusal(session, mailbox), SendingLimited)
    assert isinstance(refusal(session, mailbox), SendingLimited)  # 5 attempts: the next suspends
    mailbox_id = mailbox.id
    session.close()
    with subprocess.Popen(
        [sys.executable, "-c", SUSPENDING_CHILD, json.dumps(app_config), str(mailbox_id)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) as child:
        try:
            assert read_line(child) == b"inside\n"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    session.expire_all()
    box = session.get(Mailbox, mailbox_id)
    assert box.sending_suspended_at is None  # the killed transaction left nothing
    assert events(session, "mailbox.sending_suspend") == []
    assert sending.window_counts(session, box.id).hour_refused == 2
    assert isinstance(refusal(session, box), SendingSuspended)
    session.expire_all()
    assert box.sending_suspended_at is not None
    assert len(events(session, "mailbox.sending_suspend")) == 1
    assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 1
