"""A domain admin's token never sees or touches another tenant: generated from the app's URL
map, so every /api/v1 route (and any added later) is tried with another tenant's objects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Domain, Mailbox, WebhookDelivery, WebhookEndpoint
from provider.services import dkim, identities, outbound, provisioning, webhooks
from tests.api.conftest import ApiClient, token_for
from tests.conftest import TEST_ACTOR, make_admin, make_domain, make_mailbox

# What a path parameter is filled with: the other tenant's object of that kind (per resource
# where the same name means different things).
THEIRS = {"name": "theirs.test", "address": "victim@theirs.test", "identity": "id@theirs.test"}
# Routes only a superadmin's token may use at all: a domain admin's gets 403 whatever it asks.
SUPERADMIN_ONLY = ("/api/v1/jobs",)
THEIRS_BY_RESOURCE = {"/api/v1/aliases/": {"address": "alias@theirs.test"}}
# Routes without an object in their path, each with a request aimed at the other tenant and
# the answer it must get. A new route of that kind fails the test until it is listed here.
COLLECTION_PROBES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/v1/domains"): {"query": "search=theirs", "status": 200},
    ("POST", "/api/v1/domains"): {"json": {"name": "theirs.test"}, "status": 403},
    ("GET", "/api/v1/mailboxes"): {"query": "domain=theirs.test", "status": 404},
    (
        "POST",
        "/api/v1/mailboxes",
    ): {
        "json": {"address": "new@theirs.test", "quota_gb": 8, "protocols": "imap"},
        "status": 404,
    },
}
COLLECTION_PROBES.update(
    {
        ("GET", "/api/v1/aliases"): {"query": "search=theirs", "status": 200},
        ("POST", "/api/v1/aliases"): {
            "json": {"address": "new@theirs.test", "mailbox": "victim@theirs.test"},
            "status": 404,
        },
        ("GET", "/api/v1/audit-events"): {"query": "target=theirs", "status": 200},
        ("GET", "/api/v1/queue"): {"query": "search=victim", "status": 200},
        # Webhook endpoints have no domain: the tenant sees none of the other admin's, and
        # cannot make one in another admin's name (the owner is the token's admin).
        ("GET", "/api/v1/webhooks"): {"query": "per_page=500", "status": 200},
        ("POST", "/api/v1/webhooks"): {
            "json": {
                "url": "https://theirs.example/in",
                "events": ["mailbox.created"],
                "admin": "other@example.com",
            },
            "status": 422,
        },
        ("GET", "/api/v1/webhook-deliveries"): {"query": "state=pending", "status": 200},
        ("POST", "/api/v1/mailboxes/import"): {
            "data": "new@theirs.test,8,imap,generate\r\n",
            "headers": {"Content-Type": "text/csv"},
            "status": 422,
        },
        ("GET", "/api/v1/mailboxes/export"): {"query": "domain=theirs.test", "status": 404},
    }
)
# A valid body for routes that need one, so the answer is about the object, not the body.
WRITE_BODIES = {
    ("POST", "/api/v1/mailboxes/<string:address>/identities"): {"address": "new@theirs.test"},
    ("POST", "/api/v1/mailboxes/<string:address>/restores"): {"snapshot": "20260101T000000Z"},
}
UNGUARDED = {"/api/v1/openapi.json"}  # the schema: no data in it


def _api_routes(app: Flask) -> list[tuple[str, str, list[str]]]:
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") and rule.rule != "/api/v1":
            continue
        if rule.rule in UNGUARDED:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, rule.rule, sorted(rule.arguments)))
    return routes


@pytest.fixture
def tenants(session: Session) -> dict[str, Any]:
    mine = make_domain(session, "mine.test")
    make_mailbox(session, "me@mine.test")
    victim = make_mailbox(session, "victim@theirs.test")
    provisioning.create_alias(session, "alias@theirs.test", victim, actor=TEST_ACTOR)
    identities.add_identity(session, victim, "id@theirs.test", "Victim", actor=TEST_ACTOR)
    session.commit()
    theirs = session.scalar(select(Domain).where(Domain.name == "theirs.test"))
    assert theirs is not None
    selector = dkim.list_keys(session, theirs)[0].selector
    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[mine])
    other = make_admin(session, "other@example.com", superadmin=False, domains=[theirs])
    endpoint = webhooks.create_endpoint(
        session,
        url="https://theirs.example/in",
        events=webhooks.EVENT_TYPES,
        admin=other,
        actor=TEST_ACTOR,
    ).endpoint
    delivery = webhooks.send_test_event(session, endpoint, actor=TEST_ACTOR)
    session.commit()
    queued = outbound.enqueue(
        session,
        sender="victim@theirs.test",
        recipients=["someone@elsewhere.example"],
        content=b"Subject: hi\r\n\r\nhello\r\n",
        mailbox_id=victim.id,
    )
    return {
        "admin": tenant,
        "values": {
            "selector": selector,
            "queue_id": queued.queue_id,
            "webhook_id": str(endpoint.id),
            "delivery_id": str(delivery.id),
        },
    }


def _path(rule: str, arguments: list[str], made: dict[str, str]) -> str:
    values = {**THEIRS, **made}
    for prefix, overrides in THEIRS_BY_RESOURCE.items():
        if rule.startswith(prefix):
            values.update(overrides)
    missing = [name for name in arguments if name not in values]
    assert not missing, f"{rule}: say which other-tenant value fills {missing} in THEIRS"
    path = rule
    for name in arguments:
        for form in (f"<string:{name}>", f"<int:{name}>", f"<{name}>"):
            path = path.replace(form, values[name])
    assert "<" not in path, f"{rule}: a converter this test does not fill"
    return path


def _snapshot(session: Session) -> str:
    session.expire_all()
    victim = session.scalar(select(Mailbox).where(Mailbox.address == "victim@theirs.test"))
    theirs = session.scalar(select(Domain).where(Domain.name == "theirs.test"))
    assert victim is not None and theirs is not None
    keys = [dkim.key_record(key) for key in dkim.list_keys(session, theirs)]
    hooks = [
        {**endpoint.to_dict(), "secret": endpoint.secret}
        for endpoint in session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id))
    ]
    deliveries = [
        delivery.to_dict()
        for delivery in session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))
    ]
    mailboxes = list(session.scalars(select(Mailbox.address).order_by(Mailbox.address)))
    state = [victim.to_dict(), theirs.to_dict(), keys, victim.password_hash]
    return json.dumps([*state, hooks, deliveries, mailboxes], sort_keys=True)


@pytest.mark.parametrize("scope", ["write", "read"])
def test_every_route_hides_other_tenants(
    app: Flask, client_for: Any, session: Session, tenants: dict[str, Any], scope: str
) -> None:
    client: ApiClient = client_for(token_for(session, tenants["admin"], scope=scope))
    before = _snapshot(session)
    routes = _api_routes(app)
    assert len(routes) >= 10
    for method, rule, arguments in routes:
        if arguments:
            path = _path(rule, arguments, tenants["values"])
            body = None if method in ("GET", "DELETE") else WRITE_BODIES.get((method, rule), {})
            response = client.request(method, path, json=body)
            expected = 404 if method == "GET" or scope == "write" else 403
            if rule.startswith(SUPERADMIN_ONLY):
                expected = 403
            assert response.status_code == expected, (method, rule, response.text)
            assert "theirs.test" not in response.text or response.status_code == 404
            assert "victim" not in response.text or "does not exist" in response.text
            continue
        if rule.startswith(SUPERADMIN_ONLY):
            assert client.request(method, rule).status_code == 403, (method, rule)
            continue
        probe = COLLECTION_PROBES.get((method, rule))
        assert probe is not None, f"{method} {rule}: add an other-tenant probe"
        query = f"?{probe['query']}" if "query" in probe else ""
        response = client.request(
            method,
            rule + query,
            json=probe.get("json"),
            data=probe.get("data"),
            headers=probe.get("headers"),
        )
        expected = probe["status"] if method == "GET" or scope == "write" else 403
        assert response.status_code == expected, (method, rule, response.text)
        # A 404 may echo the address asked for; nothing else may name the other tenant's.
        assert response.status_code == 404 or "victim@theirs.test" not in response.text
        if response.status_code == 200:
            assert response.json()["total"] == 0
    assert _snapshot(session) == before
    assert session.scalar(select(AuditEvent).where(AuditEvent.actor.startswith("token:"))) is None


def test_the_tenant_still_manages_its_own_domain(
    client_for: Any, session: Session, tenants: dict[str, Any]
) -> None:
    client: ApiClient = client_for(token_for(session, tenants["admin"]))
    assert [d["name"] for d in client.get("/api/v1/domains").json()["items"]] == ["mine.test"]
    listed = client.get("/api/v1/mailboxes").json()
    assert [m["address"] for m in listed["items"]] == ["me@mine.test"]
    assert client.get("/api/v1/mailboxes/me@mine.test").status_code == 200
    made = client.post(
        "/api/v1/mailboxes", json={"address": "new@mine.test", "quota_gb": 8, "protocols": "imap"}
    )
    assert made.status_code == 201


def test_missing_and_foreign_objects_get_the_same_answer(
    client_for: Any, session: Session, tenants: dict[str, Any]
) -> None:
    """No oracle: another tenant's mailbox reads exactly like one that does not exist."""
    client: ApiClient = client_for(token_for(session, tenants["admin"]))
    foreign = client.get("/api/v1/mailboxes/victim@theirs.test").json()
    missing = client.get("/api/v1/mailboxes/nobody@theirs.test").json()
    assert foreign["detail"].replace("victim", "X") == missing["detail"].replace("nobody", "X")
    foreign_domain = client.get("/api/v1/domains/theirs.test").json()
    missing_domain = client.get("/api/v1/domains/gone.test").json()
    assert foreign_domain["detail"].replace("theirs", "X") == missing_domain["detail"].replace(
        "gone", "X"
    )
