"""Claims of the queue runner: a live runner's claims are left alone, a dead one's (its lock
free, its file gone, a garbage id) are made due again; the DSN builder keeps hostile replies
inside their field."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.policy import default

from sqlalchemy import select, update

from provider.models import OutboundRecipient
from provider.protocols.outbound import dsn
from provider.protocols.outbound.runner import QueueRunner, claim, claimer_is_dead, reclaim_dead
from provider.services import outbound

MESSAGE = b"From: a@example.test\r\nTo: b@example.net\r\nSubject: Hi\r\n\r\nHi\r\n"


def _queue(session, count: int = 1) -> None:
    for n in range(count):
        outbound.enqueue(
            session, sender="", recipients=[f"b{n}@example.net"], content=MESSAGE, mailbox_id=None
        )


def _states(session) -> list[tuple[str, str | None]]:
    session.expire_all()
    rows = session.scalars(select(OutboundRecipient).order_by(OutboundRecipient.id))
    return [(row.state, row.claimed_by) for row in rows]


def test_a_claim_goes_to_one_runner_only(app, session):
    _queue(session, 3)
    first, second = QueueRunner(app), QueueRunner(app)
    try:
        taken = claim(session, first.id, 10, set())
        assert len(taken) == 3
        assert claim(session, second.id, 10, set()) == []
        assert {claimed for _, claimed in _states(session)} == {first.id}
    finally:
        second.stop()
        first.stop()


def test_a_live_runners_claims_stay_and_a_dead_ones_come_back(app, session):
    _queue(session, 2)
    alive, dying = QueueRunner(app), QueueRunner(app)
    try:
        assert len(claim(session, alive.id, 1, set())) == 1
        assert len(claim(session, dying.id, 1, set())) == 1
        data_dir = app.config["DATA_DIR"]
        assert not claimer_is_dead(data_dir, alive.id)
        assert not claimer_is_dead(data_dir, dying.id)
        assert reclaim_dead(session, data_dir) == 0
        dying.stop()  # as if killed: its lock is free (the kernel frees it on kill -9 too)
        assert claimer_is_dead(data_dir, dying.id)
        assert reclaim_dead(session, data_dir) == 1
        assert sorted(_states(session)) == [("queued", None), ("sending", alive.id)]
    finally:
        alive.stop()


def test_garbage_claimer_ids_are_treated_as_dead_without_touching_paths(app, session):
    _queue(session, 1)
    for garbage in ("../../../etc/passwd", "x" * 119, "runner-1-ZZZZZZZZ", ""):
        session.execute(update(OutboundRecipient).values(state="sending", claimed_by=garbage))
        session.commit()
        assert claimer_is_dead(app.config["DATA_DIR"], garbage)
        assert reclaim_dead(session, app.config["DATA_DIR"]) == 1
        assert _states(session) == [("queued", None)]


def test_sending_rows_without_a_claimer_are_made_due(app, session):
    _queue(session, 1)
    session.execute(update(OutboundRecipient).values(state="sending", claimed_by=None))
    session.commit()
    assert reclaim_dead(session, app.config["DATA_DIR"]) == 1
    assert _states(session) == [("queued", None)]


def test_a_hostile_reply_stays_inside_its_dsn_field():
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    notice = dsn.build(
        action="failed",
        failures=[
            dsn.Failure(
                "b@example.net",
                "550 5.1.1 gone\r\nBcc: victim@example.org\x00\x1b[31m" + "é" * 5000,
            )
        ],
        to_address="a@example.test",
        reporting_host="mx.example.test",
        queue_id="ABC",
        original=MESSAGE,
        arrival=moment,
        moment=moment,
    )
    parsed = email.message_from_bytes(notice, policy=default)
    assert parsed["Bcc"] is None
    _human, report, _returned = parsed.iter_parts()
    text = report.as_bytes().decode("ascii")
    assert "\nBcc:" not in text and "\x00" not in text and "\x1b" not in text
    assert max(len(line) for line in text.splitlines()) < 1000  # RFC 5322 line limit
    assert dsn.status_of("550 5.1.1 gone") == "5.1.1"
    assert dsn.status_of("421 busy") == "4.0.0"
    assert dsn.status_of("") == "4.0.0"
