"""Webhooks end to end through the service: outbox, signed POSTs to a real receiver on
127.0.0.1, retries while it is down, order per object, tenant scope, claiming."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.errors import InvalidInput, NotFound
from provider.models import WebhookAttempt, WebhookDelivery, WebhookEvent
from provider.services import clock, provisioning, quota, sending, webhooks
from tests.conftest import TEST_ACTOR, make_admin, make_domain, make_mailbox, wait_until
from tests.webhooks.receiver import Receiver

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": True,
        "WEBHOOK_TIMEOUT_SECONDS": 2,
        "WEBHOOK_RETRY_BASE_SECONDS": 10,
        "WEBHOOK_RETRY_MAX_SECONDS": 600,
    }


@pytest.fixture
def frozen() -> Iterator[None]:
    clock.set_now(START)
    yield
    clock.set_now(None)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def add_endpoint(
    session: Session, receiver: Receiver, events: Any = webhooks.EVENT_TYPES, admin: Any = None
) -> int:
    made = webhooks.create_endpoint(
        session, url=receiver.url, events=events, admin=admin, actor=TEST_ACTOR
    )
    session.commit()
    receiver.secret = made.secret
    return made.endpoint.id


def pending(session: Session) -> int:
    session.rollback()
    return (
        session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.state == "pending")
        )
        or 0
    )


def drain(session: Session, *, step: timedelta = timedelta(minutes=11), rounds: int = 400) -> None:
    """Run the deliverer, moving the clock on past every backoff, until nothing is pending."""
    for _ in range(rounds):
        webhooks.deliver_due(session)
        if not pending(session):
            return
        clock.set_now(clock.now() + step)
    raise AssertionError("deliveries still pending")


# --- rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://hooks.example.net/x", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("https://user:pass@hooks.example.net/", "user name or password"),
        ("https://user@hooks.example.net/", "user name or password"),
        ("https://hooks.example.net/" + "a" * 3000, "at most 2048"),
        ("https://hooks.example.net/a\x00b", "control characters"),
        ("https://hooks.example.net/a b", "spaces"),
        ("https:///path", "host name"),
        ("https://hooks.example.net:99999/", "not a URL"),
        ("https://hooks.example.net/#frag", "fragment"),
        ("", "give the URL"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(session: Session, url: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as caught:
        webhooks.create_endpoint(
            session, url=url, events=["mailbox.created"], admin=None, actor=TEST_ACTOR
        )
    assert caught.value.field == "url"


def test_events_must_be_known_and_at_least_one(session: Session) -> None:
    url = "https://hooks.example.net/in"
    with pytest.raises(InvalidInput, match="unknown event") as caught:
        webhooks.create_endpoint(
            session, url=url, events=["mailbox.exploded"], admin=None, actor=TEST_ACTOR
        )
    assert caught.value.field == "events"
    with pytest.raises(InvalidInput, match="at least one"):
        webhooks.create_endpoint(session, url=url, events=[], admin=None, actor=TEST_ACTOR)
    made = webhooks.create_endpoint(
        session, url=url, events="quota.warning, mailbox.created", admin=None, actor=TEST_ACTOR
    )
    assert made.endpoint.events == ["mailbox.created", "quota.warning"]
    assert made.secret.startswith("whsec_") and len(made.secret) > 40


def test_signature_is_stripe_like_and_refuses_replays_and_other_secrets() -> None:
    body = b'{"id":"evt_1"}'
    header = webhooks.signature_header("whsec_a", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert webhooks.verify_signature("whsec_a", header, body, at=1_700_000_100)
    assert not webhooks.verify_signature("whsec_a", header, body, at=1_700_000_000 + 301)
    assert not webhooks.verify_signature("whsec_b", header, body, at=1_700_000_000)
    assert not webhooks.verify_signature("whsec_a", header, body + b" ", at=1_700_000_000)
    assert not webhooks.verify_signature("whsec_a", "garbage\x00", body)


# --- the outbox ------------------------------------------------------------------------------


def test_a_rolled_back_action_emits_nothing(session: Session, receiver: Receiver) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver)
    provisioning.create_mailbox(
        session, "bob@example.test", "mailbox secret phrase", 8, "imap", actor=TEST_ACTOR
    )
    session.rollback()
    assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 0
    assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    webhooks.deliver_due(session)
    assert receiver.requests == 0


def test_nothing_is_written_when_no_endpoint_wants_the_event(session: Session) -> None:
    make_mailbox(session, "bob@example.test")
    assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 0


def test_every_event_arrives_once_in_order_per_object_after_the_receiver_was_down(
    session: Session, receiver: Receiver, frozen: None
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver)
    receiver.mode = "error"  # 500 for every request at first
    alice = make_mailbox(session, "alice@example.test")
    bob = make_mailbox(session, "bob@example.test")
    provisioning.update_mailbox(session, alice, quota_gb=9, actor=TEST_ACTOR)
    session.commit()
    provisioning.update_mailbox(session, bob, status="suspended", actor=TEST_ACTOR)
    session.commit()
    provisioning.update_mailbox(session, alice, quota_gb=10, actor=TEST_ACTOR)
    session.commit()
    provisioning.delete_mailbox(session, alice, actor=TEST_ACTOR)
    session.commit()
    expected = list(
        session.execute(
            select(WebhookEvent.public_id, WebhookEvent.object_key).order_by(WebhookEvent.id)
        )
    )
    assert len(expected) == 7  # 2 created, 3 updated, 1 suspended, 1 deleted

    for _ in range(3):  # failing: only an object's first event is tried, the later ones wait
        webhooks.deliver_due(session)
        clock.set_now(clock.now() + timedelta(minutes=11))
    assert receiver.accepted == [] and receiver.requests == 3  # one try per pass while down
    firsts = {
        session.scalar(
            select(func.min(WebhookDelivery.id)).where(WebhookDelivery.object_key == key)
        )
        for key in ("mailbox:alice@example.test", "mailbox:bob@example.test")
    }
    tried = set(session.scalars(select(WebhookAttempt.delivery_id)))
    assert tried and tried <= firsts  # order per object holds

    receiver.stop()  # down harder: the port refuses connections
    webhooks.deliver_due(session)
    clock.set_now(clock.now() + timedelta(minutes=11))
    errors = session.scalars(
        select(WebhookAttempt.error).order_by(WebhookAttempt.id.desc())
    ).first()
    assert errors is not None and "refused" in errors.lower()

    receiver.mode = "ok"
    receiver.start(receiver.port)  # back
    drain(session)

    ids = [received.event_id for received in receiver.accepted]
    assert sorted(ids) == sorted(event_id for event_id, _ in expected)  # each once
    assert receiver.bad_signatures == 0
    for key in ("mailbox:alice@example.test", "mailbox:bob@example.test"):
        sent_order = [e for e, k in expected if k == key]
        arrived = [i for i in ids if i in sent_order]
        assert arrived == sent_order
    first = receiver.accepted[0]
    assert first.headers[webhooks.EVENT_HEADER] == first.event_id
    assert int(first.headers[webhooks.TIMESTAMP_HEADER]) > 0
    types = [
        r.type
        for r in receiver.accepted
        if r.data.get("mailbox", r.data).get("address") == "bob@example.test"
    ]
    assert types == ["mailbox.created", "mailbox.updated", "mailbox.suspended"]


def test_a_receiver_that_never_answers_2xx_is_given_up_after_the_retry_window(
    session: Session, receiver: Receiver, frozen: None
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    receiver.mode = "error"
    make_mailbox(session, "bob@example.test")
    moments = []
    while pending(session) and clock.now() < START + timedelta(hours=30):
        webhooks.deliver_due(session)
        moments.append(clock.now())
        clock.set_now(clock.now() + timedelta(minutes=5))
    delivery = session.scalars(select(WebhookDelivery)).one()
    assert delivery.state == "failed"
    assert START + timedelta(hours=24) <= delivery.finished_at <= START + timedelta(hours=25)
    attempts = session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)).all()
    assert len(attempts) == delivery.attempts == receiver.requests
    # Backoff: from 10 s growing to the 10-minute cap, not one try per pass.
    assert 24 * 6 <= len(attempts) < len(moments)
    assert all(a.status_code == 500 and a.error == "HTTP 500" for a in attempts)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    import random

    rng = random.Random(7)
    waits = [webhooks.backoff(n, base=10, cap=600, rng=rng) for n in range(1, 12)]
    assert 5 <= waits[0] <= 10 and 10 <= waits[1] <= 20 and 20 <= waits[2] <= 40
    assert all(300 <= wait <= 600 for wait in waits[7:])
    assert len(set(waits)) == len(waits)  # jittered
    assert webhooks.backoff(10**9, base=10, cap=600) <= 600  # a huge count does not overflow


def test_a_domain_admins_endpoint_gets_only_its_domains_events(
    session: Session, receiver: Receiver
) -> None:
    ours = make_domain(session, "ours.test")
    make_domain(session, "theirs.test")
    tenant = make_admin(session, "tenant@ours.test", superadmin=False, domains=[ours])
    add_endpoint(session, receiver, admin=tenant)
    other = Receiver().start()
    try:
        superadmin = make_admin(session, "root@example.test")
        made = webhooks.create_endpoint(
            session, url=other.url, events=["mailbox.created"], admin=superadmin, actor=TEST_ACTOR
        )
        session.commit()
        other.secret = made.secret
        make_mailbox(session, "a@ours.test")
        make_mailbox(session, "b@theirs.test")
        drain(session)
        assert [r.data["address"] for r in receiver.accepted] == ["a@ours.test"]
        assert sorted(r.data["address"] for r in other.accepted) == ["a@ours.test", "b@theirs.test"]
    finally:
        other.stop()


def test_redirects_are_not_followed_and_big_answers_are_read_capped(
    session: Session, receiver: Receiver, frozen: None
) -> None:
    elsewhere = Receiver().start()
    try:
        make_domain(session, "example.test")
        add_endpoint(session, receiver, ["mailbox.created"])
        receiver.mode, receiver.redirect_to = "redirect", elsewhere.url
        make_mailbox(session, "bob@example.test")
        webhooks.deliver_due(session)
        attempt = session.scalars(select(WebhookAttempt)).one()
        assert attempt.status_code == 302
        assert attempt.error == f"redirect to {elsewhere.url} not followed"
        assert elsewhere.requests == 0
        receiver.mode = "big"
        clock.set_now(clock.now() + timedelta(minutes=1))
        webhooks.deliver_due(session)
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.state == "delivered"
        last = session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id.desc())).first()
        assert last is not None and last.status_code == 200
        assert last.response_excerpt == "x" * 500
    finally:
        elsewhere.stop()


def test_private_addresses_are_refused_unless_the_setting_allows_them(
    app: Any, session: Session, receiver: Receiver
) -> None:
    app.config["WEBHOOK_ALLOW_PRIVATE_TARGETS"] = False
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    make_mailbox(session, "bob@example.test")
    webhooks.deliver_due(session)
    attempt = session.scalars(select(WebhookAttempt)).one()
    assert "127.0.0.1, a private or local address" in (attempt.error or "")
    assert receiver.requests == 0


def test_quota_sending_and_trial_events_are_emitted(session: Session, receiver: Receiver) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver)
    bob = make_mailbox(session, "bob@example.test", plan="trial")
    usage = quota.reserve(session, bob.id, int(bob.quota_bytes * 0.81))
    assert usage is not None
    assert quota.update_warning_level(session, bob.id, usage) == 80
    session.commit()
    sending.suspend_sending(session, bob, actor=TEST_ACTOR, reason="spam run")
    session.commit()
    provisioning.update_mailbox(session, bob, plan="paid", actor=TEST_ACTOR)
    session.commit()
    drain(session)
    by_type = {r.type: r.data for r in receiver.accepted}
    assert by_type["quota.warning"]["percent"] == 80
    assert by_type["sending.suspended"]["reason"] == "spam run"
    assert by_type["trial.converted"]["address"] == "bob@example.test"


def test_redeliver_and_test_event(session: Session, receiver: Receiver) -> None:
    make_domain(session, "example.test")
    endpoint_id = add_endpoint(session, receiver, ["mailbox.created"])
    make_mailbox(session, "bob@example.test")
    drain(session)
    delivery = session.scalars(select(WebhookDelivery)).one()
    webhooks.redeliver(session, delivery, actor=TEST_ACTOR)
    webhooks.send_test_event(session, webhooks.get_endpoint(session, endpoint_id), actor=TEST_ACTOR)
    session.commit()
    drain(session)
    assert [r.type for r in receiver.accepted] == [
        "mailbox.created",
        "mailbox.created",
        "webhook.test",
    ]
    assert receiver.accepted[0].event_id == receiver.accepted[1].event_id


# --- the action is never slowed; deliverers never double-send ---------------------------------


def test_the_action_returns_while_the_receiver_hangs(
    app: Any, session: Session, receiver: Receiver
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    receiver.mode = "hang"
    app.config["WEBHOOK_POLL_SECONDS"] = 0.05
    deliverer = webhooks.WebhookDeliverer(app)
    deliverer.start()
    try:
        make_mailbox(session, "first@example.test")
        assert receiver.hanging.wait(10)  # the deliverer is stuck in the receiver now
        started = time.monotonic()
        make_mailbox(session, "second@example.test")
        elapsed = time.monotonic() - started
        assert not receiver.release.is_set()
        assert elapsed < 1.5, elapsed  # an argon2 hash, not the receiver's timeout
    finally:
        receiver.release.set()
        deliverer.stop()


def test_concurrent_deliverers_never_send_one_delivery_twice(
    app: Any, session: Session, receiver: Receiver
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    for n in range(12):
        make_mailbox(session, f"user{n}@example.test")
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def deliverer() -> None:
        try:
            barrier.wait()
            webhooks.deliver_pending(app)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliverer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    ids = [r.event_id for r in receiver.accepted]
    assert len(ids) == 12 == len(set(ids)) == receiver.requests
    assert pending(session) == 0


def test_claim_is_exclusive(session: Session) -> None:
    make_domain(session, "example.test")
    webhooks.create_endpoint(
        session,
        url="https://hooks.example.net/",
        events=["mailbox.created"],
        admin=None,
        actor=TEST_ACTOR,
    )
    session.commit()
    make_mailbox(session, "bob@example.test")
    delivery_id = session.scalars(select(WebhookDelivery.id)).one()
    moment = clock.now()
    assert webhooks.claim(session, delivery_id, "one", moment, 60)
    assert not webhooks.claim(session, delivery_id, "two", moment, 60)
    # A claim that ran out (its deliverer died) can be taken.
    assert webhooks.claim(session, delivery_id, "two", moment + timedelta(seconds=61), 60)


def test_an_endpoint_that_fails_is_rested_for_the_rest_of_the_pass(
    session: Session, receiver: Receiver, frozen: None
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    receiver.mode = "error"
    for n in range(5):
        make_mailbox(session, f"user{n}@example.test")
    report = webhooks.deliver_due(session)
    # Five objects, each first in its line: one try, then the endpoint rests until next pass.
    assert receiver.requests == 1 and report.retrying == 1


def test_a_hanging_receiver_holds_one_deliverer_thread_not_every_endpoint(
    app: Any, session: Session, receiver: Receiver
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    healthy = Receiver().start()
    try:
        healthy.secret = webhooks.create_endpoint(
            session, url=healthy.url, events=["mailbox.deleted"], admin=None, actor=TEST_ACTOR
        ).secret
        session.commit()
        receiver.mode = "hang"
        app.config.update(WEBHOOK_POLL_SECONDS=0.05, WEBHOOK_CONCURRENCY=2)
        deliverer = webhooks.WebhookDeliverer(app)
        deliverer.start()
        try:
            bob = make_mailbox(session, "bob@example.test")
            assert receiver.hanging.wait(10)
            provisioning.delete_mailbox(session, bob, actor=TEST_ACTOR)
            session.commit()
            assert wait_until(lambda: len(healthy.accepted) == 1)
            assert not receiver.release.is_set() and not deliverer.died()
        finally:
            receiver.release.set()
            deliverer.stop()
    finally:
        healthy.stop()


def test_finished_deliveries_are_pruned_after_the_keep_days(
    session: Session, receiver: Receiver, frozen: None
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    make_mailbox(session, "old@example.test")
    drain(session)
    receiver.mode = "error"
    clock.set_now(START + timedelta(days=10))
    make_mailbox(session, "waiting@example.test")
    webhooks.deliver_due(session)
    assert webhooks.prune_finished(session, 30) == 0
    clock.set_now(START + timedelta(days=31))
    assert webhooks.prune_finished(session, 30) == 1
    left = session.scalars(select(WebhookDelivery)).all()
    assert [d.object_key for d in left] == ["mailbox:waiting@example.test"]  # pending stays
    assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 1
    assert session.scalar(select(func.count()).select_from(WebhookAttempt)) == 1


def test_an_answer_with_nul_and_control_bytes_is_stored_readably(
    session: Session, receiver: Receiver
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    receiver.mode = "nul"
    make_mailbox(session, "bob@example.test")
    webhooks.deliver_due(session)
    attempt = session.scalars(select(WebhookAttempt)).one()
    assert attempt.status_code == 500 and attempt.response_excerpt == "bad\ufffdbody\ufffd!"
    assert session.scalars(select(WebhookDelivery.state)).one() == "pending"


def test_an_endpoint_deleted_while_its_post_waits_leaves_nothing_behind(
    app: Any, session: Session, receiver: Receiver
) -> None:
    make_domain(session, "example.test")
    endpoint_id = add_endpoint(session, receiver, ["mailbox.created"])
    receiver.mode = "hang"
    make_mailbox(session, "bob@example.test")
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            webhooks.deliver_pending(app)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=deliver)
    thread.start()
    assert receiver.hanging.wait(10)
    endpoint = webhooks.get_endpoint(session, endpoint_id)
    webhooks.delete_endpoint(session, endpoint, actor=TEST_ACTOR)
    session.commit()
    receiver.release.set()
    thread.join(30)
    assert errors == []
    assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    assert session.scalar(select(func.count()).select_from(WebhookAttempt)) == 0


def test_descriptions_with_control_characters_and_huge_ids_are_refused(session: Session) -> None:
    with pytest.raises(InvalidInput, match="control characters") as caught:
        webhooks.create_endpoint(
            session,
            url="https://hooks.example.net/",
            events=["mailbox.created"],
            admin=None,
            description="billing\x00",
            actor=TEST_ACTOR,
        )
    assert caught.value.field == "description"
    for huge in (2**31, 10**30, -1, 0):
        with pytest.raises(NotFound):
            webhooks.get_endpoint(session, huge)
        with pytest.raises(NotFound):
            webhooks.get_delivery(session, huge)


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout(
    session: Session, receiver: Receiver
) -> None:
    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["mailbox.created"])
    receiver.mode = "trickle"  # every read gets a byte in time; the whole never ends
    make_mailbox(session, "bob@example.test")
    started = time.monotonic()
    webhooks.deliver_due(session)
    elapsed = time.monotonic() - started
    receiver.release.set()
    assert elapsed < 4, elapsed  # WEBHOOK_TIMEOUT_SECONDS is 2
    attempt = session.scalars(select(WebhookAttempt)).one()
    assert attempt.error == "no complete answer within 2 s" and attempt.status_code is None
    assert session.scalars(select(WebhookDelivery.state)).one() == "pending"


def test_the_trial_lifecycle_announces_reminders_expiry_and_deletion_in_order(
    app: Any, session: Session, receiver: Receiver, frozen: None
) -> None:
    from jobs.trial import trial_lifecycle

    make_domain(session, "example.test")
    add_endpoint(session, receiver)
    make_mailbox(session, "trial@example.test", plan="trial")
    expires = START + timedelta(days=30)
    for moment in (
        expires - timedelta(days=7),
        expires - timedelta(days=3),
        expires + timedelta(hours=1),
        expires + timedelta(days=31),
    ):
        clock.set_now(moment)
        trial_lifecycle(app)
    drain(session)
    assert [r.type for r in receiver.accepted] == [
        "mailbox.created",
        "trial.reminder",
        "trial.reminder",
        "trial.expired",
        "mailbox.deleted",
        "trial.deleted",
    ]
    assert [r.data.get("days_before") for r in receiver.accepted[1:3]] == [7, 3]


def test_a_failed_backup_is_announced(
    session: Session, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provider.services import backups

    make_domain(session, "example.test")
    add_endpoint(session, receiver, ["backup.failed"])
    make_mailbox(session, "bob@example.test")

    def disk_full(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("provider.services.backups.take_snapshot", disk_full)
    summary = backups.run_backups(session, ["bob@example.test"])
    assert len(summary.failed) == 1
    drain(session)
    assert [r.type for r in receiver.accepted] == ["backup.failed"]
    assert "No space left on device" in receiver.accepted[0].data["error"]
