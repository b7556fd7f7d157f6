"""Audit queries: newest first, filters, and the domain-admin scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from provider.services import audit
from provider.services.clock import frozen_at
from tests.conftest import TEST_ACTOR, make_mailbox


def test_events_are_filtered_and_newest_first(session):
    start = datetime(2026, 3, 1, tzinfo=UTC)
    with frozen_at(start):
        make_mailbox(session, "a@one.test")
    with frozen_at(start + timedelta(days=1)):
        make_mailbox(session, "b@two.test")
        audit.record(
            session,
            audit.Actor("admin:x@example.com"),
            "mailbox.update",
            "b@two.test",
            domain="two.test",
        )
        session.commit()

    everything = session.scalars(audit.query_events()).all()
    assert [e.occurred_at for e in everything] == sorted(
        (e.occurred_at for e in everything), reverse=True
    )
    assert {e.target for e in session.scalars(audit.query_events(action="mailbox."))} == {
        "a@one.test",
        "b@two.test",
    }
    assert [e.action for e in session.scalars(audit.query_events(actor="admin:x"))] == [
        "mailbox.update"
    ]
    assert {e.domain for e in session.scalars(audit.query_events(domains={"one.test"}))} == {
        "one.test"
    }
    assert {
        e.target for e in session.scalars(audit.query_events(until=start + timedelta(hours=1)))
    } == {"one.test", "a@one.test"}
    assert session.scalars(audit.query_events(target="%")).all() == []


def test_record_keeps_actor_and_address(session):
    event = audit.record(session, TEST_ACTOR, "x.y", "t", before={"a": 1}, after={"a": 2})
    session.commit()
    assert (event.actor, event.remote_addr, event.before, event.after) == (
        "test",
        "127.0.0.1",
        {"a": 1},
        {"a": 2},
    )
