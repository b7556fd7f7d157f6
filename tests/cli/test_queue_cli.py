"""`provider queue list|show|retry|delete` over messages queued with outbound.enqueue."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from sqlalchemy import select

from provider.models import AuditEvent, OutboundRecipient
from provider.services import outbound
from provider.services.clock import now
from tests.conftest import make_mailbox

MESSAGE = b"From: alice@example.test\r\nSubject: Quarterly report\r\n\r\nHello\r\n"


def invoke(runner, *args):
    return runner.invoke(args=list(args))


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


@pytest.fixture
def queued(session):
    """Two messages: one with a deferred recipient an hour off, one freshly queued."""
    alice = make_mailbox(session, "alice@example.test")
    first = outbound.enqueue(
        session,
        sender="alice@example.test",
        recipients=["bob@remote.test", "carol@remote.test"],
        content=MESSAGE,
        mailbox_id=alice.id,
    )
    deferred = first.recipients[0]
    deferred.state = "deferred"
    deferred.attempts = 3
    deferred.last_reply = "451 4.7.1 greylisted (mx.remote.test)"
    deferred.next_attempt_at = now() + timedelta(hours=1)
    first.recipients[1].state = "delivered"
    session.commit()
    second = outbound.enqueue(
        session, sender="", recipients=["dave@other.test"], content=MESSAGE, mailbox_id=None
    )
    return first.queue_id, second.queue_id


def audit_actions(session) -> list[tuple[str, str]]:
    session.expire_all()
    rows = session.execute(
        select(AuditEvent.action, AuditEvent.target)
        .where(AuditEvent.action.like("queue.%"))
        .order_by(AuditEvent.id)
    ).all()
    return [tuple(row) for row in rows]


def test_list_shows_open_messages_oldest_first(runner, queued):
    first, second = queued
    result = invoke(runner, "queue", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(first) and lines[1].startswith(second)
    assert (
        "<alice@example.test> -> bob@remote.test (deferred), carol@remote.test (delivered)"
        in (lines[0])
    )
    assert "<> -> dave@other.test (queued)" in lines[1]
    records = json.loads(invoke(runner, "queue", "list", "--json").output)
    assert [r["queue_id"] for r in records] == [first, second]
    assert records[0]["recipients"][0]["last_reply"] == "451 4.7.1 greylisted (mx.remote.test)"


def test_list_search_matches_sender_or_recipient(runner, queued):
    first, second = queued
    by_recipient = invoke(runner, "queue", "list", "--search", "DAVE@")
    assert by_recipient.output.split()[0] == second
    by_sender = json.loads(invoke(runner, "queue", "list", "--search", "alice", "--json").output)
    assert [r["queue_id"] for r in by_sender] == [first]
    nothing = invoke(runner, "queue", "list", "--search", "%")
    assert nothing.exit_code == 0 and nothing.output == "no queued messages matching '%'\n"


def test_show_lists_recipients_with_state_attempts_and_last_reply(runner, queued):
    first, _ = queued
    result = invoke(runner, "queue", "show", first.lower())
    assert result.exit_code == 0, result.output
    assert f"queue id:  {first}" in result.output
    assert "subject:   Quarterly report" in result.output
    bob = next(line for line in result.output.splitlines() if "bob@remote.test" in line)
    assert "deferred  attempts 3" in bob and "451 4.7.1 greylisted" in bob
    carol = next(line for line in result.output.splitlines() if "carol@remote.test" in line)
    assert "delivered" in carol and "next -" in carol
    record = json.loads(invoke(runner, "queue", "show", first, "--json").output)
    assert record["recipients"][0]["attempts"] == 3


def test_retry_one_makes_deferred_due_now_and_is_audited(runner, session, queued):
    first, _ = queued
    result = invoke(runner, "queue", "retry", first)
    assert result.exit_code == 0, result.output
    assert result.output == "1 recipient(s) due now\n"
    session.expire_all()
    bob = session.scalar(
        select(OutboundRecipient).where(OutboundRecipient.address == "bob@remote.test")
    )
    assert bob.next_attempt_at <= now()
    assert audit_actions(session) == [("queue.retry", first)]


def test_retry_all(runner, session, queued):
    result = invoke(runner, "queue", "retry", "--all")
    assert result.output == "2 recipient(s) due now\n"
    assert audit_actions(session) == [("queue.retry", "all")]


def test_retry_needs_exactly_one_target(runner, queued):
    assert_one_line_error(invoke(runner, "queue", "retry"), "either a QUEUE_ID or --all")
    assert_one_line_error(
        invoke(runner, "queue", "retry", queued[0], "--all"), "either a QUEUE_ID or --all"
    )


def test_delete_marks_recipients_deleted_and_removes_the_spool(runner, session, queued):
    first, second = queued
    assert os.path.exists(outbound.spool_path(first))
    result = invoke(runner, "queue", "delete", first)
    assert result.exit_code == 0, result.output
    assert result.output == f"deleted 1 recipient(s) of {first}\n"
    assert not os.path.exists(outbound.spool_path(first))
    session.expire_all()
    states = dict(session.execute(select(OutboundRecipient.address, OutboundRecipient.state)).all())
    assert states == {
        "bob@remote.test": "deleted",
        "carol@remote.test": "delivered",
        "dave@other.test": "queued",
    }
    assert invoke(runner, "queue", "list").output.split()[0] == second
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "queue.delete"))
    assert event.domain == "example.test"
    assert event.before["addresses"] == ["bob@remote.test"]
    # Deleting it again: nothing left to deliver.
    assert_one_line_error(invoke(runner, "queue", "delete", first), "nothing left to deliver")


@pytest.mark.parametrize("command", ["show", "retry", "delete"])
@pytest.mark.parametrize("queue_id", ["0123456789ABCDEF", "not-an-id", "x" * 5000, "'; DROP"])
def test_unknown_ids_are_one_line_errors(runner, session, queued, command, queue_id):
    result = invoke(runner, "queue", command, queue_id)
    assert_one_line_error(result, "no queued message")
    assert len(result.output) < 200
    assert audit_actions(session) == []


def test_empty_queue(runner, session):
    assert invoke(runner, "queue", "list").output == "no queued messages\n"
    assert json.loads(invoke(runner, "queue", "list", "--json").output) == []
