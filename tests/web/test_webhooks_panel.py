"""Webhooks in the admin panel: endpoints, the secret shown once, errors next to fields,
deliveries with attempts, redeliver, CSRF, a domain admin limited to their own endpoints, and
a mailbox created from the panel while the receiver hangs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Domain, WebhookDelivery, WebhookEndpoint
from provider.services import webhooks
from tests.conftest import TEST_ACTOR, make_domain
from tests.web.conftest import count, errors_of, text_of
from tests.web.test_mailboxes import mailbox_form
from tests.webhooks.receiver import Receiver


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "WEBHOOK_ALLOW_PRIVATE_TARGETS": True, "WEBHOOK_TIMEOUT_SECONDS": 2}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def secret_on(response: Any) -> str:
    match = re.search(r'<code id="webhook-secret">([^<]+)</code>', text_of(response))
    assert match, text_of(response)
    return match.group(1)


def add(client: FlaskClient, url: str, events: list[str]) -> Any:
    return client.post(
        "/admin/webhooks/new", data={"url": url, "events": events, "description": "billing"}
    )


def test_add_shows_the_secret_once_and_lists_the_endpoint(
    logged_in: FlaskClient, session: Session, receiver: Receiver
) -> None:
    response = add(logged_in, receiver.url, ["mailbox.created", "quota.warning"])
    assert response.status_code == 200
    secret = secret_on(response)
    endpoint = session.scalars(select(WebhookEndpoint)).one()
    assert endpoint.secret == secret and endpoint.events == ["mailbox.created", "quota.warning"]
    page = text_of(logged_in.get("/admin/webhooks"))
    assert receiver.url in page and secret not in page
    assert secret not in text_of(logged_in.get(f"/admin/webhooks/{endpoint.id}"))
    assert session.scalars(select(AuditEvent.action)).all()[-1] == "webhook.create"


@pytest.mark.parametrize(
    ("url", "events", "field", "words"),
    [
        ("https://u:p@hooks.example.net/", ["mailbox.created"], "url", "user name or password"),
        ("ftp://hooks.example.net/", ["mailbox.created"], "url", "http:// or https://"),
        ("https://hooks.example.net/" + "a" * 5000, ["mailbox.created"], "url", "at most 2048"),
        ("https://hooks.example.net/", [], "events", "at least one"),
        ("https://hooks.example.net/", ["mailbox.exploded"], "events", "is not a valid choice"),
    ],
)
def test_bad_input_is_shown_next_to_its_field_and_nothing_is_saved(
    logged_in: FlaskClient, session: Session, url: str, events: list[str], field: str, words: str
) -> None:
    response = add(logged_in, url, events)
    assert response.status_code == 200
    assert words in errors_of(response, field)
    assert count(session, WebhookEndpoint) == 0


def test_edit_test_event_deliveries_redeliver_rotate_delete(
    app: Flask, logged_in: FlaskClient, session: Session, receiver: Receiver
) -> None:
    receiver.secret = secret_on(add(logged_in, receiver.url, ["mailbox.created"]))
    endpoint_id = session.scalars(select(WebhookEndpoint.id)).one()
    page = f"/admin/webhooks/{endpoint_id}"
    response = logged_in.post(
        page,
        data={"url": receiver.url + "?v=2", "events": ["mailbox.created", "mailbox.deleted"]},
    )
    assert response.status_code == 302
    session.expire_all()
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    assert endpoint is not None and endpoint.url.endswith("?v=2") and not endpoint.active
    logged_in.post(page, data={"url": receiver.url, "events": ["mailbox.created"], "active": "y"})

    assert logged_in.post(f"{page}/test").status_code == 302
    webhooks.deliver_pending(app)
    assert [r.type for r in receiver.accepted] == ["webhook.test"]
    html = text_of(logged_in.get(page))
    assert "webhook.test" in html and "delivered" in html and "204" in html

    delivery_id = session.scalars(select(WebhookDelivery.id)).one()
    assert logged_in.post(f"/admin/webhooks/deliveries/{delivery_id}/redeliver").status_code == 302
    webhooks.deliver_pending(app)
    assert len(receiver.accepted) == 2
    assert "webhook.test" in text_of(logged_in.get("/admin/webhooks/deliveries?state=delivered"))

    old_secret = receiver.secret
    receiver.secret = secret_on(logged_in.post(f"{page}/rotate"))
    assert receiver.secret != old_secret
    logged_in.post(f"{page}/test")
    webhooks.deliver_pending(app)
    assert len(receiver.accepted) == 3 and receiver.bad_signatures == 0

    assert logged_in.post(f"{page}/delete").status_code == 302
    assert count(session, WebhookEndpoint) == 0 and count(session, WebhookDelivery) == 0


def test_a_domain_admin_sees_and_touches_only_their_own_endpoints(
    as_domain_admin: FlaskClient, session: Session, tenants: tuple[Domain, Domain]
) -> None:
    theirs = webhooks.create_endpoint(
        session,
        url="https://other.example.net/hooks",
        events=["mailbox.created"],
        admin=None,
        actor=TEST_ACTOR,
    ).endpoint
    session.commit()
    assert "other.example.net" not in text_of(as_domain_admin.get("/admin/webhooks"))
    for path in ("", "/rotate", "/test", "/delete"):
        method = as_domain_admin.get if path == "" else as_domain_admin.post
        assert method(f"/admin/webhooks/{theirs.id}{path}").status_code == 404
    assert as_domain_admin.get("/admin/webhooks/99999999999999999999").status_code == 404
    response = add(as_domain_admin, "https://mine.example.net/hooks", ["mailbox.created"])
    assert response.status_code == 200
    mine = session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id.desc())).first()
    assert mine is not None and mine.admin is not None and mine.admin.email == "tenant@mine.test"


@pytest.fixture
def csrf_app(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def test_webhook_forms_refuse_a_post_without_csrf_token(
    csrf_app: dict[str, Any], client: FlaskClient, session: Session, admin: Any
) -> None:
    login_page = text_of(client.get("/admin/login"))
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', login_page)
    assert token
    from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

    client.post(
        "/admin/login",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token.group(1)},
    )
    response = client.post(
        "/admin/webhooks/new",
        data={"url": "https://hooks.example.net/", "events": ["mailbox.created"]},
    )
    assert response.status_code == 400
    assert count(session, WebhookEndpoint) == 0


def test_creating_a_mailbox_in_the_panel_is_not_slowed_by_a_hanging_receiver(
    app: Flask, logged_in: FlaskClient, session: Session, receiver: Receiver
) -> None:
    shop = make_domain(session, "shop.test")
    receiver.secret = secret_on(add(logged_in, receiver.url, ["mailbox.created"]))
    receiver.mode = "hang"
    app.config["WEBHOOK_POLL_SECONDS"] = 0.05
    deliverer = webhooks.WebhookDeliverer(app)
    deliverer.start()
    try:
        logged_in.post("/admin/mailboxes/new", data=mailbox_form(shop, local_part="first"))
        assert receiver.hanging.wait(10)  # the deliverer is blocked in the receiver
        started = time.monotonic()
        response = logged_in.post("/admin/mailboxes/new", data=mailbox_form(shop))
        elapsed = time.monotonic() - started
        assert response.status_code == 302
        assert not receiver.release.is_set() and elapsed < 1.5, elapsed
    finally:
        receiver.release.set()
        deliverer.stop()
