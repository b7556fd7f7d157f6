"""The outbound-cleanup job: finished queue messages pruned after OUTBOUND_KEEP_DAYS (open ones
kept whatever their age), sending_counts older than 8 days pruned, the spool swept."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from provider.errors import InvalidInput
from provider.models import (
    JobRun,
    OutboundMessage,
    OutboundRecipient,
    RecipientState,
    SieveDuplicate,
)
from provider.models.sending import SendingCount
from provider.services import clock, outbound, sending
from tests.conftest import make_mailbox

NOW = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)
CONTENT = b"From: a@example.test\r\nTo: b@example.net\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture(autouse=True)
def frozen_clock() -> object:
    clock.set_now(NOW)
    yield
    clock.set_now(None)


def queued(
    session: Session,
    finished: list[tuple[str, datetime | None]],
    *,
    created: datetime | None = None,
    spool: bool = False,
) -> str:
    """A queue message with recipients in the given (state, finished_at); its spool file only
    when `spool` (the runner removes it once every recipient is final)."""
    queue_id = outbound.new_queue_id()
    if spool:
        outbound.write_spool(queue_id, CONTENT)
    message = OutboundMessage(
        queue_id=queue_id,
        sender="a@example.test",
        size=len(CONTENT),
        created_at=created or min((f for _s, f in finished if f), default=NOW),
    )
    message.recipients = [
        OutboundRecipient(
            address=f"r{n}@example.net",
            domain="example.net",
            state=state,
            next_attempt_at=NOW,
            finished_at=when,
        )
        for n, (state, when) in enumerate(finished)
    ]
    session.add(message)
    session.commit()
    return queue_id


def queue_ids(session: Session) -> set[str]:
    session.expire_all()
    return set(session.scalars(select(OutboundMessage.queue_id)))


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


DELIVERED = RecipientState.DELIVERED.value
BOUNCED = RecipientState.BOUNCED.value
DELETED = RecipientState.DELETED.value
DEFERRED = RecipientState.DEFERRED.value
QUEUED = RecipientState.QUEUED.value


def test_finished_messages_past_the_keep_days_go_and_everything_else_stays(
    app: Flask, session: Session
) -> None:
    old_delivered = queued(session, [(DELIVERED, days_ago(31))], spool=True)
    old_mixed = queued(
        session, [(DELIVERED, days_ago(40)), (BOUNCED, days_ago(35)), (DELETED, days_ago(31))]
    )
    recent = queued(session, [(DELIVERED, days_ago(29))])
    # Old, but its last recipient finished yesterday: counted from the last one.
    last_recent = queued(session, [(DELIVERED, days_ago(90)), (BOUNCED, days_ago(1))])
    # Still open: kept whatever its age.
    open_deferred = queued(
        session, [(DELIVERED, days_ago(200)), (DEFERRED, None)], created=days_ago(300)
    )
    open_queued = queued(session, [(QUEUED, None)], created=days_ago(3000))
    sending_now = queued(session, [("sending", None)], created=days_ago(100))

    assert outbound.prune_finished(session, 30) == 2

    kept = {recent, last_recent, open_deferred, open_queued, sending_now}
    assert queue_ids(session) == kept
    assert not outbound.spool_path(old_delivered).exists()
    left = session.scalars(select(OutboundRecipient.message_id)).all()
    messages = set(session.scalars(select(OutboundMessage.id)))
    assert set(left) <= messages  # no orphaned recipient rows
    assert len(left) == 1 + 2 + 2 + 1 + 1
    assert old_mixed not in kept
    # A second run finds nothing more.
    assert outbound.prune_finished(session, 30) == 0


def test_a_final_row_without_finished_at_counts_from_the_message_date(
    app: Flask, session: Session
) -> None:
    older = queued(session, [(BOUNCED, None)], created=days_ago(31))
    newer = queued(session, [(BOUNCED, None)], created=days_ago(5))
    assert outbound.prune_finished(session, 30) == 1
    assert queue_ids(session) == {newer}
    assert older not in queue_ids(session)


def test_pruning_goes_in_batches_and_removes_leftover_spool_files(
    app: Flask, session: Session
) -> None:
    with_files = [queued(session, [(DELIVERED, days_ago(60))], spool=True) for _ in range(5)]
    without = [queued(session, [(BOUNCED, days_ago(60))]) for _ in range(2)]
    keep = queued(session, [(DEFERRED, None)], created=days_ago(60), spool=True)
    statements: list[str] = []

    from sqlalchemy import event

    engine = session.get_bind()

    def seen(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE FROM OUTBOUND_MESSAGES"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert outbound.prune_finished(session, 30, batch=2) == 7
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == 4  # 2 + 2 + 2 + 1: one transaction each
    assert queue_ids(session) == {keep}
    assert all(not outbound.spool_path(q).exists() for q in with_files + without)
    assert outbound.spool_path(keep).exists()


@pytest.mark.parametrize("days", [0, -1, float("nan"), 1e308])
def test_prune_refuses_a_nonsense_keep_days(app: Flask, session: Session, days: float) -> None:
    queued(session, [(DELIVERED, days_ago(3))])
    with pytest.raises(InvalidInput):
        outbound.prune_finished(session, days)
    assert len(queue_ids(session)) == 1


def add_count(session: Session, mailbox_id: int, hour: datetime, accepted: int) -> None:
    session.execute(
        insert(SendingCount).values(mailbox_id=mailbox_id, hour=hour, accepted=accepted)
    )
    session.commit()


def test_sending_counts_older_than_eight_days_go_and_the_stats_are_unchanged(
    app: Flask, session: Session
) -> None:
    mailbox = make_mailbox(session, "a@example.test")
    other = make_mailbox(session, "b@example.test")
    midnight = datetime(2026, 12, 6, tzinfo=UTC)
    cutoff = midnight - timedelta(days=8)
    for n in range(0, 24 * 12, 5):  # every 5 hours for 12 days back from this hour
        add_count(session, mailbox.id, NOW.replace(minute=0) - timedelta(hours=n), 1)
    add_count(session, other.id, cutoff - timedelta(hours=1), 7)
    add_count(session, other.id, cutoff, 3)  # exactly at the cutoff: kept
    add_count(session, other.id, NOW + timedelta(days=3), 2)  # "in the future": kept
    before = {m.id: sending.overview(session, m).to_dict() for m in (mailbox, other)}
    total = session.scalar(select(func.count()).select_from(SendingCount))
    expected_gone = session.scalar(
        select(func.count()).select_from(SendingCount).where(SendingCount.hour < cutoff)
    )
    assert expected_gone and expected_gone > 10

    assert sending.prune_counts(session, batch=7) == expected_gone

    session.expire_all()
    assert session.scalar(select(func.min(SendingCount.hour))) == cutoff
    left = session.scalar(select(func.count()).select_from(SendingCount))
    assert left == total - expected_gone
    after = {m.id: sending.overview(session, m).to_dict() for m in (mailbox, other)}
    assert after == before
    assert sending.prune_counts(session) == 0


def test_prune_counts_refuses_to_drop_what_the_stats_read(app: Flask, session: Session) -> None:
    with pytest.raises(InvalidInput, match="at least 8 days"):
        sending.prune_counts(session, keep_days=3)


def test_the_job_runs_from_the_cli_and_its_record_counts_each_part(
    app: Flask, session: Session, runner: FlaskCliRunner
) -> None:
    mailbox = make_mailbox(session, "a@example.test")
    gone = queued(session, [(DELIVERED, days_ago(45))])
    kept = queued(session, [(DELIVERED, days_ago(20))])
    add_count(session, mailbox.id, days_ago(20), 4)
    add_count(session, mailbox.id, days_ago(1), 5)
    # A file left by a runner killed between its last commit and the unlink (row still there),
    # and one whose row is gone (killed inside prune, between the commit and the unlink).
    leftover = queued(session, [(DELIVERED, days_ago(2))], spool=True)
    orphan = outbound.new_queue_id()
    path = outbound.write_spool(orphan, CONTENT)
    two_hours_ago = (NOW - timedelta(hours=2)).timestamp()
    os.utime(path, (two_hours_ago, two_hours_ago))
    # Sieve duplicate IDs: one whose period is over, one still tracked.
    session.add_all(
        [
            SieveDuplicate(mailbox_id=mailbox.id, key="a" * 64, expires_at=days_ago(1)),
            SieveDuplicate(
                mailbox_id=mailbox.id, key="b" * 64, expires_at=NOW + timedelta(hours=1)
            ),
        ]
    )
    session.commit()

    result = runner.invoke(
        args=["jobs", "run", "outbound-cleanup", "--now", NOW.isoformat(), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary == {
        "messages_deleted": 1,
        "sending_counts_deleted": 1,
        "spool_files_removed": 2,
        "vacation_responses_deleted": 0,
        "sieve_duplicates_deleted": 1,
        "webhook_deliveries_deleted": 0,
        "keep_days": 30,
    }
    assert queue_ids(session) == {kept, leftover}
    assert gone not in queue_ids(session)
    assert not outbound.spool_path(leftover).exists()
    assert not path.exists()
    record = session.scalars(select(JobRun).where(JobRun.job == "outbound-cleanup")).one()
    assert record.outcome == "ok"
    assert record.summary == summary


def test_the_job_is_listed_with_its_hourly_cron(app: Flask, runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["jobs", "list", "--json"])
    assert result.exit_code == 0, result.output
    jobs = {job["name"]: job for job in json.loads(result.output)}
    assert jobs["outbound-cleanup"]["cron"] == "15 * * * *"


def test_keep_days_comes_from_the_setting(app: Flask, session: Session) -> None:
    from jobs.outbound import outbound_cleanup

    app.config["OUTBOUND_KEEP_DAYS"] = 60
    kept = queued(session, [(DELIVERED, days_ago(45))])
    gone = queued(session, [(DELIVERED, days_ago(61))])
    summary = outbound_cleanup(app)
    assert summary["messages_deleted"] == 1
    assert queue_ids(session) == {kept}
    assert gone not in queue_ids(session)


def test_a_crash_after_a_batch_commit_loses_nothing_open_and_the_next_run_finishes(
    app: Flask, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between a batch's commit and its unlinks: that batch's rows are gone, its files
    stay (orphans, swept after their hour), the other batches and open messages untouched."""
    finished = [queued(session, [(DELIVERED, days_ago(60))], spool=True) for _ in range(4)]
    still_open = queued(session, [(DEFERRED, None)], created=days_ago(60), spool=True)

    class Killed(BaseException):
        pass

    def killed(_queue_id: str) -> None:
        raise Killed

    monkeypatch.setattr(outbound, "remove_spool", killed)
    with pytest.raises(Killed):
        outbound.prune_finished(session, 30, batch=2)
    monkeypatch.undo()
    session.rollback()
    assert queue_ids(session) == {*finished[2:], still_open}
    assert all(outbound.spool_path(q).exists() for q in finished)

    assert outbound.prune_finished(session, 30) == 2
    assert queue_ids(session) == {still_open}
    # The orphaned files of the first batch go with the spool sweep once they are an hour old.
    for queue_id in finished[:2]:
        stamp = (NOW - timedelta(hours=2)).timestamp()
        os.utime(outbound.spool_path(queue_id), (stamp, stamp))
    assert outbound.sweep_spool(session) == 2
    assert not any(outbound.spool_path(q).exists() for q in finished)
    assert outbound.spool_path(still_open).exists()


@pytest.mark.parametrize("batch", [0, -1])
def test_a_nonsense_batch_size_is_refused(app: Flask, session: Session, batch: int) -> None:
    with pytest.raises(InvalidInput, match="batch"):
        outbound.prune_finished(session, 30, batch=batch)
    with pytest.raises(InvalidInput, match="batch"):
        sending.prune_counts(session, batch=batch)
