"""/admin/queue: the open messages, one message's recipients, retry, delete, tenant scope."""

from __future__ import annotations

import os
import re
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, OutboundRecipient
from provider.services import outbound
from provider.services.clock import now
from tests.conftest import make_mailbox
from tests.web.conftest import text_of
from tests.web.timemachine_helpers import csrf_token

MESSAGE = b"From: a@mine.test\r\nSubject: Invoice 42\r\n\r\n" + b"x" * 2000 + b"\r\n"


def enqueue(session: Session, sender: str, recipients: list[str], mailbox_id: int | None) -> str:
    return outbound.enqueue(
        session, sender=sender, recipients=recipients, content=MESSAGE, mailbox_id=mailbox_id
    ).queue_id


def defer(session: Session, address: str, reply: str = "451 4.7.1 greylisted") -> None:
    recipient = session.scalar(
        select(OutboundRecipient).where(OutboundRecipient.address == address)
    )
    recipient.state = "deferred"
    recipient.attempts = 2
    recipient.last_reply = reply
    recipient.last_attempt_at = now()
    recipient.next_attempt_at = now() + timedelta(hours=2)
    session.commit()


@pytest.fixture
def queue(session: Session, tenants) -> dict[str, str]:
    """A message from each tenant's mailbox and one system message (no mailbox)."""
    mine = make_mailbox(session, "a@mine.test")
    other = make_mailbox(session, "b@other.test")
    ids = {
        "mine": enqueue(session, "a@mine.test", ["x@remote.test", "y@remote.test"], mine.id),
        "other": enqueue(session, "b@other.test", ["z@remote.test"], other.id),
        "system": enqueue(session, "", ["postmaster@remote.test"], None),
    }
    defer(session, "x@remote.test", "451 4.7.1 greylisted <script>alert(1)</script>")
    return ids


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-queue-id="([0-9A-F]+)">', html)


def audit(session: Session) -> list[tuple[str, str, str | None]]:
    session.expire_all()
    found = session.execute(
        select(AuditEvent.action, AuditEvent.target, AuditEvent.domain)
        .where(AuditEvent.action.like("queue.%"))
        .order_by(AuditEvent.id)
    ).all()
    return [tuple(row) for row in found]


def test_superadmin_sees_every_open_message(logged_in, queue):
    html = text_of(logged_in.get("/admin/queue"))
    assert rows(html) == [queue["mine"], queue["other"], queue["system"]]
    assert "x@remote.test" in html and ">deferred<" in html and ">queued<" in html
    # The far side's reply is shown as text, never as markup.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert '<td class="nowrap">2 KB</td>' in html
    assert re.search(r'id="nav-queue"[^>]*>Queue <span[^>]*>3</span>', html)


def test_search_by_sender_recipient_or_queue_id(logged_in, queue):
    assert rows(text_of(logged_in.get("/admin/queue?q=B@OTHER"))) == [queue["other"]]
    assert rows(text_of(logged_in.get("/admin/queue?q=y@remote"))) == [queue["mine"]]
    assert rows(text_of(logged_in.get(f"/admin/queue?q={queue['system'].lower()}"))) == [
        queue["system"]
    ]
    nothing = text_of(logged_in.get("/admin/queue?q=%25_%25"))
    assert rows(nothing) == [] and "No queued message matches." in nothing
    long_search = logged_in.get("/admin/queue", query_string={"q": "a" * 100_000})
    assert long_search.status_code == 200


def test_detail_shows_each_recipient(logged_in, queue):
    html = text_of(logged_in.get(f"/admin/queue/{queue['mine'].lower()}"))
    assert "Invoice 42" in html and "a@mine.test" in html
    recipients = re.findall(r'<tr data-state="(\w+)">\s*<td class="address">([^<]+)<', html)
    assert recipients == [("deferred", "x@remote.test"), ("queued", "y@remote.test")]
    assert "greylisted" in html


def test_retry_one_message(logged_in, session, queue):
    response = logged_in.post(f"/admin/queue/{queue['mine']}/retry")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/queue/{queue['mine']}"
    assert "2 recipient(s) of" in text_of(logged_in.get(response.headers["Location"]))
    session.expire_all()
    deferred = session.scalar(
        select(OutboundRecipient).where(OutboundRecipient.address == "x@remote.test")
    )
    assert deferred.next_attempt_at <= now()
    assert audit(session) == [("queue.retry", queue["mine"], "mine.test")]


def test_retry_all_deferred(logged_in, session, queue):
    response = logged_in.post("/admin/queue/retry")
    assert response.status_code == 302
    assert "4 deferred recipient(s) will be tried again now." in text_of(
        logged_in.get("/admin/queue")
    )
    assert audit(session) == [("queue.retry", "all", None)]


def test_delete_asks_first_then_removes_recipients_and_spool(logged_in, session, queue):
    queue_id = queue["mine"]
    confirm = logged_in.get(f"/admin/queue/{queue_id}/delete/confirm")
    assert confirm.status_code == 200 and "no bounce is sent" in text_of(confirm)
    assert logged_in.get(f"/admin/queue/{queue_id}/delete").status_code == 405
    response = logged_in.post(f"/admin/queue/{queue_id}/delete")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/queue"
    html = text_of(logged_in.get("/admin/queue"))
    assert f"Message {queue_id} deleted for 2 recipient(s)" in html
    assert queue_id not in rows(html)
    assert not os.path.exists(outbound.spool_path(queue_id))
    session.expire_all()
    states = session.scalars(
        select(OutboundRecipient.state).where(OutboundRecipient.address.like("%@remote.test"))
    ).all()
    assert sorted(states) == ["deleted", "deleted", "queued", "queued"]
    assert audit(session) == [("queue.delete", queue_id, "mine.test")]
    again = logged_in.post(f"/admin/queue/{queue_id}/delete")
    assert again.status_code == 200 and "nothing left to deliver" in text_of(again)


@pytest.mark.parametrize(
    "queue_id", ["0123456789ABCDEF", "nope", "A" * 5000, "%27%3B", "..%2F..%2Fetc"]
)
def test_unknown_ids_answer_404(logged_in, queue, queue_id):
    for method, path in [
        ("get", f"/admin/queue/{queue_id}"),
        ("get", f"/admin/queue/{queue_id}/delete/confirm"),
        ("post", f"/admin/queue/{queue_id}/retry"),
        ("post", f"/admin/queue/{queue_id}/delete"),
    ]:
        assert getattr(logged_in, method)(path).status_code == 404, path


def test_domain_admin_sees_and_manages_only_their_domains_mail(as_domain_admin, session, queue):
    html = text_of(as_domain_admin.get("/admin/queue"))
    assert rows(html) == [queue["mine"]]
    assert re.search(r'id="nav-queue"[^>]*>Queue <span[^>]*>1</span>', html)
    for hidden in (queue["other"], queue["system"]):
        assert as_domain_admin.get(f"/admin/queue/{hidden}").status_code == 404
        assert as_domain_admin.post(f"/admin/queue/{hidden}/retry").status_code == 404
        assert as_domain_admin.post(f"/admin/queue/{hidden}/delete").status_code == 404
    # "Retry all" touches only their own messages.
    defer(session, "z@remote.test")
    as_domain_admin.post("/admin/queue/retry")
    session.expire_all()
    other = session.scalar(
        select(OutboundRecipient).where(OutboundRecipient.address == "z@remote.test")
    )
    assert other.next_attempt_at > now()
    assert audit(session) == [("queue.retry", "all", "mine.test")]


def test_empty_queue(logged_in):
    html = text_of(logged_in.get("/admin/queue"))
    assert "The queue is empty" in html
    assert re.search(r'id="nav-queue"[^>]*>Queue</a>', html)


def test_queue_needs_login(client):
    assert client.get("/admin/queue").status_code == 302


@pytest.fixture
def csrf_on(app_config: dict) -> dict:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def test_queue_actions_need_a_csrf_token(csrf_on, app: Flask, session, admin, queue):
    client = app.test_client()
    token = csrf_token(text_of(client.get("/admin/login")))
    client.post(
        "/admin/login",
        data={
            "email": "root@example.com",
            "password": "correct horse battery staple",
            "csrf_token": token,
        },
    )
    assert client.post(f"/admin/queue/{queue['mine']}/delete").status_code == 400
    assert client.post("/admin/queue/retry").status_code == 400
    assert audit(session) == []
    token = csrf_token(text_of(client.get(f"/admin/queue/{queue['mine']}/delete/confirm")))
    done = client.post(f"/admin/queue/{queue['mine']}/delete", data={"csrf_token": token})
    assert done.status_code == 302


def _statements_for(client, path: str) -> int:
    from sqlalchemy import event

    from provider.extensions import db

    statements: list[str] = []

    def count_statement(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(db.engine, "before_cursor_execute", count_statement)
    try:
        assert client.get(path).status_code == 200
    finally:
        event.remove(db.engine, "before_cursor_execute", count_statement)
    return len(statements)


def test_queue_page_costs_the_same_queries_for_3_or_40_messages(logged_in, session, queue):
    few = _statements_for(logged_in, "/admin/queue")
    for number in range(37):
        enqueue(session, f"s{number}@mine.test", [f"r{number}@remote.test"], None)
    many = _statements_for(logged_in, "/admin/queue")
    assert len(rows(text_of(logged_in.get("/admin/queue")))) == 40
    assert many == few, (few, many)
