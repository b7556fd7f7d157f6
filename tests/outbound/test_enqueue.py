"""The outbound queue's acceptance: durable before the reply, nothing left behind on failure."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from provider.errors import InvalidInput, NotFound
from provider.models import AuditEvent, OutboundMessage, OutboundRecipient
from provider.services import outbound
from provider.services.audit import CLI_ACTOR
from tests.conftest import make_mailbox

MESSAGE = b"From: a@example.test\r\nTo: b@example.net\r\nSubject: Hello\r\n\r\nHi\r\n"


@pytest.fixture
def mailbox(session):
    return make_mailbox(session, "a@example.test")


def test_enqueue_writes_the_spool_file_and_rows(app, session, mailbox):
    queued = outbound.enqueue(
        session,
        sender="a@example.test",
        recipients=["b@example.net", outbound.QueuedRecipient("C@Example.NET", notify="FAILURE")],
        content=MESSAGE,
        mailbox_id=mailbox.id,
    )
    assert outbound.read_spool(queued.queue_id) == MESSAGE
    assert not list((outbound.queue_dir() / "tmp").iterdir())
    session.expire_all()
    message = outbound.find(session, queued.queue_id.lower())
    assert message.subject == "Hello"
    assert [(r.address, r.domain, r.state, r.notify) for r in message.recipients] == [
        ("b@example.net", "example.net", "queued", None),
        ("C@Example.NET", "example.net", "queued", "FAILURE"),
    ]
    assert [m.queue_id for m in outbound.list_open(session)] == [queued.queue_id]
    assert outbound.open_count(session) == 1


def test_a_failed_commit_leaves_no_spool_file(app, session, mailbox, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(outbound.sending, "record_accepted", broken)
    with pytest.raises(RuntimeError):
        outbound.enqueue(
            session, sender="", recipients=["b@example.net"], content=MESSAGE, mailbox_id=mailbox.id
        )
    assert session.scalar(select(OutboundMessage)) is None
    assert [p for p in outbound.queue_dir().iterdir() if p.is_file()] == []


def test_no_recipient_is_refused(app, session):
    with pytest.raises(InvalidInput):
        outbound.enqueue(session, sender="", recipients=[], content=MESSAGE, mailbox_id=None)


def test_retry_and_delete_are_audited(app, session, mailbox):
    queued = outbound.enqueue(
        session, sender="", recipients=["b@example.net"], content=MESSAGE, mailbox_id=None
    )
    assert outbound.retry(session, queued.queue_id, actor=CLI_ACTOR) == 1
    assert outbound.delete(session, queued.queue_id, actor=CLI_ACTOR) == 1
    assert not os.path.exists(outbound.spool_path(queued.queue_id))
    states = session.scalars(select(OutboundRecipient.state)).all()
    assert states == ["deleted"]
    actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions[-2:] == ["queue.retry", "queue.delete"]
    assert outbound.list_open(session) == []
    with pytest.raises(InvalidInput):
        outbound.delete(session, queued.queue_id, actor=CLI_ACTOR)
    with pytest.raises(NotFound):
        outbound.retry(session, "NOSUCHID", actor=CLI_ACTOR)
