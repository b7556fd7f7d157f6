"""/api/v1/webhooks and /api/v1/webhook-deliveries through the real server: the secret shown
once (create, rotate), validation errors by field, change and pause, test events reaching a
real receiver with a valid signature, deliveries with their attempts, redelivery, read
tokens, and a domain admin's token seeing only its own endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, WebhookDelivery, WebhookEndpoint
from provider.services import webhooks
from tests.api.conftest import ApiClient, token_for
from tests.conftest import ADMIN_EMAIL, TEST_ACTOR, make_admin, make_domain, make_mailbox
from tests.webhooks.receiver import Receiver

NEW = {
    "url": "https://billing.example/hooks",
    "events": ["mailbox.created", "mailbox.deleted"],
    "description": "billing",
}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    # The receiver listens on 127.0.0.1, which endpoints may not reach by default.
    return {**app_config, "WEBHOOK_ALLOW_PRIVATE_TARGETS": True, "WEBHOOK_TIMEOUT_SECONDS": 5}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def _count(session: Session, model: Any) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model)) or 0


def _stored_secret(session: Session, endpoint_id: int) -> str:
    session.expire_all()
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    assert endpoint is not None
    return endpoint.secret


def test_create_shows_the_secret_once(api: ApiClient, session: Session) -> None:
    response = api.post("/api/v1/webhooks", json=NEW)
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["secret"].startswith(webhooks.SECRET_PREFIX)
    assert made["secret"] == _stored_secret(session, made["id"])
    assert made["events"] == ["mailbox.created", "mailbox.deleted"]
    assert (made["admin"], made["active"], made["description"]) == (
        ADMIN_EMAIL,
        True,
        "billing",
    )
    shown = api.get(f"/api/v1/webhooks/{made['id']}").json()
    assert "secret" not in shown and shown == {k: v for k, v in made.items() if k != "secret"}
    listed = api.get("/api/v1/webhooks")
    assert made["secret"] not in listed.text and listed.json()["total"] == 1
    audit = session.scalar(select(AuditEvent).where(AuditEvent.action == "webhook.create"))
    assert audit is not None and audit.actor == f"token:billing ({ADMIN_EMAIL})"
    assert made["secret"] not in str(audit.after)


def test_events_may_be_one_comma_separated_string(api: ApiClient) -> None:
    response = api.post(
        "/api/v1/webhooks", json={"url": NEW["url"], "events": "trial.expired, quota.warning"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["events"] == ["quota.warning", "trial.expired"]  # the service's order
    assert response.json()["description"] == ""


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({**NEW, "url": "ftp://billing.example/x"}, "url", "must start with http:// or https://"),
        ({**NEW, "url": "https://user:pw@billing.example/"}, "url", "may not carry a user"),
        ({**NEW, "url": "https://billing.example/#frag"}, "url", "#fragment"),
        ({**NEW, "url": "https://x.example/" + "a" * 2100}, "url", "at most 2048 characters"),
        ({**NEW, "url": "   "}, "url", "give the URL"),
        ({**NEW, "events": ["mailbox.exploded"]}, "events", "unknown event 'mailbox.exploded'"),
        ({**NEW, "events": []}, "events", "choose at least one event"),
        ({**NEW, "events": 7}, "events", "list of names or a comma-separated string"),
        ({**NEW, "events": [1, 2]}, "events", "list of names or a comma-separated string"),
        ({**NEW, "events": None}, "events", "Field may not be null."),
        ({**NEW, "description": "d" * 201}, "description", "at most 200 characters"),
        ({**NEW, "description": "a\u0007bell"}, "description", "control characters"),
        ({**NEW, "url": "https://x.example/\u0000"}, "url", "NUL"),
        ({"events": NEW["events"]}, "url", "Missing data for required field."),
        ({"url": NEW["url"]}, "events", "Missing data for required field."),
        ({**NEW, "admin": "other@example.com"}, "admin", "Unknown field."),
        ({**NEW, "active": "maybe"}, "active", "Unknown field."),
    ],
)
def test_a_bad_value_is_422_naming_its_field_and_nothing_is_made(
    api: ApiClient, session: Session, body: dict[str, Any], field: str, words: str
) -> None:
    response = api.post("/api/v1/webhooks", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert list(errors) == [field], errors
    assert words in " ".join(errors[field])
    assert _count(session, WebhookEndpoint) == 0


def test_patch_changes_url_events_description_and_pauses(api: ApiClient, session: Session) -> None:
    made = api.post("/api/v1/webhooks", json=NEW).json()
    path = f"/api/v1/webhooks/{made['id']}"
    changed = api.patch(
        path,
        json={
            "url": "https://other.example/in",
            "events": "mailbox.suspended,mailbox.created",
            "description": "  new   words ",
            "active": False,
        },
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["url"], body["events"], body["description"], body["active"]) == (
        "https://other.example/in",
        ["mailbox.created", "mailbox.suspended"],
        "new words",
        False,
    )
    assert api.get(path).json() == body
    # Every value is checked before any is set: a bad event leaves the good URL unapplied.
    refused = api.patch(path, json={"url": "https://third.example/", "events": ["nope"]})
    assert refused.status_code == 422 and list(refused.json()["errors"]) == ["events"]
    assert api.get(path).json()["url"] == "https://other.example/in"
    # Paused: the events it chose are no longer queued for it.
    make_mailbox(session, "alice@example.test")
    assert _count(session, WebhookDelivery) == 0
    assert api.patch(path, json={}).json() == body  # nothing asked, nothing changed
    assert session.scalar(select(func.count()).where(AuditEvent.action == "webhook.update")) == 1


def test_rotate_secret_shows_the_new_one_once(api: ApiClient, session: Session) -> None:
    made = api.post("/api/v1/webhooks", json=NEW).json()
    rotated = api.post(f"/api/v1/webhooks/{made['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    secret = rotated.json()["secret"]
    assert secret != made["secret"] and secret == _stored_secret(session, made["id"])
    assert rotated.json()["secret_rotated_at"] is not None
    assert "secret" not in api.get(f"/api/v1/webhooks/{made['id']}").json()


def test_delete_removes_the_endpoint_and_its_deliveries(api: ApiClient, session: Session) -> None:
    made = api.post("/api/v1/webhooks", json=NEW).json()
    assert api.post(f"/api/v1/webhooks/{made['id']}/test").status_code == 202
    assert api.delete(f"/api/v1/webhooks/{made['id']}").status_code == 204
    assert api.get(f"/api/v1/webhooks/{made['id']}").status_code == 404
    assert api.delete(f"/api/v1/webhooks/{made['id']}").status_code == 404
    assert _count(session, WebhookEndpoint) == _count(session, WebhookDelivery) == 0


def test_a_test_event_reaches_a_real_receiver_signed_with_the_secret_shown(
    app: Flask, api: ApiClient, receiver: Receiver
) -> None:
    made = api.post("/api/v1/webhooks", json={**NEW, "url": receiver.url}).json()
    receiver.secret = made["secret"]  # what the API showed is what signs
    queued = api.post(f"/api/v1/webhooks/{made['id']}/test")
    assert queued.status_code == 202, queued.text
    delivery = queued.json()
    assert (delivery["type"], delivery["state"], delivery["attempts"]) == (
        "webhook.test",
        "pending",
        0,
    )
    assert delivery["endpoint_id"] == made["id"] and delivery["attempt_log"] == []
    assert webhooks.deliver_pending(app)["delivered"] == 1
    assert [r.type for r in receiver.accepted] == ["webhook.test"]
    assert receiver.bad_signatures == 0
    assert receiver.accepted[0].event_id == delivery["event"]
    shown = api.get(f"/api/v1/webhook-deliveries/{delivery['id']}").json()
    assert (shown["state"], shown["attempts"], shown["last_status"]) == ("delivered", 1, 204)
    assert [a["status_code"] for a in shown["attempt_log"]] == [204]


def test_deliveries_page_filter_and_redeliver(
    app: Flask, api: ApiClient, receiver: Receiver
) -> None:
    made = api.post("/api/v1/webhooks", json={**NEW, "url": receiver.url}).json()
    receiver.secret = made["secret"]
    receiver.mode = "error"
    first = api.post(f"/api/v1/webhooks/{made['id']}/test").json()
    assert webhooks.deliver_pending(app)["retrying"] == 1
    failed_try = api.get(f"/api/v1/webhook-deliveries/{first['id']}").json()
    assert failed_try["state"] == "pending" and failed_try["last_error"] == "HTTP 500"
    assert failed_try["attempt_log"][0]["status_code"] == 500
    again = api.post(f"/api/v1/webhook-deliveries/{first['id']}/redeliver")
    assert again.status_code == 202, again.text
    assert again.json()["id"] > first["id"] and again.json()["event"] == first["event"]
    listed = api.get(f"/api/v1/webhooks/{made['id']}/deliveries?per_page=1").json()
    assert (listed["total"], listed["pages"]) == (2, 2)
    assert [d["id"] for d in listed["items"]] == [again.json()["id"]]  # newest first
    everything = api.get("/api/v1/webhook-deliveries?state=pending").json()
    assert everything["total"] == 2
    assert api.get("/api/v1/webhook-deliveries?state=delivered").json()["total"] == 0
    mine = api.get(f"/api/v1/webhook-deliveries?endpoint={made['id']}").json()
    assert mine["total"] == 2
    bad = api.get("/api/v1/webhook-deliveries?state=lost")
    assert (
        bad.status_code == 422
        and "pending, delivered or failed" in bad.json()["errors"]["state"][0]
    )
    huge = api.get("/api/v1/webhook-deliveries?endpoint=99999999999")
    assert huge.status_code == 422 and list(huge.json()["errors"]) == ["endpoint"]
    assert api.get("/api/v1/webhooks/99999999999").status_code == 404
    assert api.get("/api/v1/webhook-deliveries/99999999999").status_code == 404


def test_a_read_token_reads_but_never_writes(
    api: ApiClient, client_for: Any, session: Session, superadmin: Any
) -> None:
    made = api.post("/api/v1/webhooks", json=NEW).json()
    delivery = api.post(f"/api/v1/webhooks/{made['id']}/test").json()
    reader: ApiClient = client_for(token_for(session, superadmin, scope="read", name="ro"))
    assert reader.get("/api/v1/webhooks").json()["total"] == 1
    assert reader.get(f"/api/v1/webhooks/{made['id']}/deliveries").json()["total"] == 1
    secret = _stored_secret(session, made["id"])
    for method, path, body in (
        ("POST", "/api/v1/webhooks", NEW),
        ("PATCH", f"/api/v1/webhooks/{made['id']}", {"active": False}),
        ("DELETE", f"/api/v1/webhooks/{made['id']}", None),
        ("POST", f"/api/v1/webhooks/{made['id']}/rotate-secret", None),
        ("POST", f"/api/v1/webhooks/{made['id']}/test", None),
        ("POST", f"/api/v1/webhook-deliveries/{delivery['id']}/redeliver", None),
    ):
        response = reader.request(method, path, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert "scope" in response.json()["detail"]
    assert _stored_secret(session, made["id"]) == secret
    assert (_count(session, WebhookEndpoint), _count(session, WebhookDelivery)) == (1, 1)
    assert api.get(f"/api/v1/webhooks/{made['id']}").json()["active"] is True


def test_a_domain_admins_token_sees_only_its_own_endpoints(
    api: ApiClient, client_for: Any, session: Session
) -> None:
    mine, theirs = make_domain(session, "mine.test"), make_domain(session, "theirs.test")
    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[mine])
    other = make_admin(session, "other@example.com", superadmin=False, domains=[theirs])
    foreign = webhooks.create_endpoint(
        session,
        url="https://theirs.example/in",
        events="mailbox.created",
        admin=other,
        actor=TEST_ACTOR,
    ).endpoint
    operator = webhooks.create_endpoint(
        session,
        url="https://ops.example/in",
        events="mailbox.created",
        admin=None,
        actor=TEST_ACTOR,
    ).endpoint
    session.commit()
    foreign_id, operator_id = foreign.id, operator.id
    client: ApiClient = client_for(token_for(session, tenant, name="tenant-billing"))

    made = client.post("/api/v1/webhooks", json=NEW)
    assert made.status_code == 201 and made.json()["admin"] == "tenant@example.com"
    listed = client.get("/api/v1/webhooks").json()
    assert [e["id"] for e in listed["items"]] == [made.json()["id"]] and listed["total"] == 1
    for hidden in (foreign_id, operator_id):
        for method in ("GET", "PATCH", "DELETE"):
            body = {"active": False} if method == "PATCH" else None
            response = client.request(method, f"/api/v1/webhooks/{hidden}", json=body)
            assert response.status_code == 404, (method, hidden)
        for action in ("rotate-secret", "test", "deliveries"):
            method = "GET" if action == "deliveries" else "POST"
            response = client.request(method, f"/api/v1/webhooks/{hidden}/{action}")
            assert response.status_code == 404, (action, hidden)
    # No oracle: another's endpoint reads exactly like one that does not exist.
    missing = client.get("/api/v1/webhooks/999999").json()["detail"]
    assert client.get(f"/api/v1/webhooks/{foreign_id}").json()["detail"] == missing.replace(
        "999999", str(foreign_id)
    )
    # The superadmin's token sees all three.
    assert api.get("/api/v1/webhooks").json()["total"] == 3

    # The tenant's endpoint gets its domain's events only; the others' deliveries stay hidden.
    make_mailbox(session, "a@mine.test")
    make_mailbox(session, "b@theirs.test")
    seen = client.get("/api/v1/webhook-deliveries").json()
    assert [d["object"] for d in seen["items"]] == ["mailbox:a@mine.test"]
    theirs_delivery = session.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == foreign_id)
    )
    assert theirs_delivery is not None
    assert client.get(f"/api/v1/webhook-deliveries/{theirs_delivery}").status_code == 404
    assert client.post(f"/api/v1/webhook-deliveries/{theirs_delivery}/redeliver").status_code == 404
    assert client.get(f"/api/v1/webhook-deliveries?endpoint={foreign_id}").json()["total"] == 0
    # a@mine.test: the tenant's and the operator's; b@theirs.test: the other's and the operator's.
    assert _count(session, WebhookDelivery) == 4
