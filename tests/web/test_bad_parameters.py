"""Bad input on every route (NUL, huge integers, impossible dates) is a 4xx with our page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import wtforms
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.routing import Rule

from provider.models import Mailbox, WebhookDelivery
from provider.services import webhooks
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, login, make_admin, make_mailbox
from tests.web.timemachine_helpers import deliver, mail, snapshot

HUGE = "99999999999999999999999"
BAD_VALUES = [
    "\x00",
    "me@example.org\x00",
    HUGE,
    "-" + HUGE,
    "0001-01-01",
    "9999-12-31",
    "10000-01-01",
]
BAD_PATH_VALUES = [HUGE, "\x00", "a\x00b", str(2**63), str(2**31)]
# Our pages all come from templates/base.html; Werkzeug's own error page has none of this.
OUR_PAGE = 'class="skip-link"'
WEB_SOURCES = Path(__file__).resolve().parents[2] / "provider" / "web"


def _all_subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def parameter_names() -> list[str]:
    """Every query or form parameter a view reads: the fields of every form, and the names
    read with request.args/request.form in provider/web (so a new one is walked too)."""
    names = {"page", "next", "emailaddress", "q", "sort", "order", "domain", "folder"}
    for form_class in _all_subclasses(wtforms.Form):
        if form_class.__module__.startswith("provider."):
            for klass in form_class.__mro__:
                names.update(
                    name
                    for name, value in vars(klass).items()
                    if isinstance(value, wtforms.fields.core.UnboundField)
                )
    pattern = re.compile(r"request\.(?:args|form|values)\.get(?:list)?\(\s*\"([^\"]+)\"")
    for source in WEB_SOURCES.rglob("*.py"):
        names.update(pattern.findall(source.read_text()))
    return sorted(names)


@pytest.fixture
def world(app: Flask, session: Session) -> dict[str, Any]:
    """Real records for every kind of id in a URL: a domain, a mailbox with a snapshot and an
    alias, and an admin; the superadmin logs in as root@example.com."""
    make_admin(session)
    endpoint = webhooks.create_endpoint(
        session,
        url="https://hooks.example.net/in",
        events=["mailbox.created"],
        admin=None,
        actor=TEST_ACTOR,
    ).endpoint
    session.commit()
    mailbox: Mailbox = make_mailbox(session, "alice@example.test", quota_gb=8)
    deliver(session, mailbox, [mail("Hello")])
    snapshot_id = snapshot(session, mailbox)
    other = make_admin(session, "other@example.test", superadmin=False, domains=[mailbox.domain])
    return {
        "mailbox_id": mailbox.id,
        "domain_id": mailbox.domain_id,
        "admin_id": other.id,
        "alias_id": 1,
        "identity_id": 1,
        "queue_id": "0123456789ABCDEF",
        "snapshot_id": snapshot_id,
        "uid": 1,
        "filename": "css/app.css",
        "index": 0,  # a rule of the Sieve rule editor
        "name": "quota-recount",  # a scheduled job (Run now)
        "request_id": 1,  # an upgrade request
        "endpoint_id": endpoint.id,  # a webhook endpoint
        "webhook_id": endpoint.id,  # the same, as /api/v1/webhooks/<webhook_id> names it
        "delivery_id": session.scalars(select(WebhookDelivery.id)).first(),
        "token_id": 1,  # an API token
        "address": "alice@example.test",  # /api/v1/mailboxes/<address>, /aliases/<address>
        "selector": "s1",  # a DKIM key (/api/v1/domains/<name>/dkim/<selector>/retire)
        "identity": "me@example.test",  # /api/v1/mailboxes/<address>/identities/<identity>
    }


def _clients(app: Flask) -> dict[str, FlaskClient]:
    superadmin = app.test_client()
    assert login(superadmin).status_code == 302
    owner = app.test_client()
    response = owner.post(
        "/account/login", data={"email": "alice@example.test", "password": MAILBOX_PASSWORD}
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    return {"anonymous": app.test_client(), "superadmin": superadmin, "owner": owner}


def _path(rule: Rule, values: dict[str, str]) -> str:
    path = rule.rule
    for name in rule.arguments:
        path = re.sub(rf"<(?:[^:<>]+:)?{name}>", quote(str(values[name]), safe=""), path)
    return path


def _check(response: Any, what: str) -> None:
    body = response.get_data(as_text=True)
    response.close()  # a file response (static) holds its file open until closed
    assert response.status_code < 500, f"{what}: {response.status_code}\n{body[:500]}"
    if response.status_code >= 400:
        if response.mimetype == "application/xml":  # autoconfig/autodiscover: XML errors
            assert body.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<error>'), what
            return
        if response.mimetype == "application/problem+json":  # /api/v1: RFC 9457 problems
            assert response.get_json()["status"] == response.status_code, what
            return
        assert OUR_PAGE in body, f"{what}: {response.status_code} without our page\n{body[:500]}"


def _rules(app: Flask) -> list[Rule]:
    # Deleting routes last: the records they remove are the ids the other routes use.
    return sorted(app.url_map.iter_rules(), key=lambda rule: ("delete" in rule.rule, rule.rule))


def _methods(rule: Rule) -> list[str]:
    return sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})


def test_every_route_answers_bad_parameters_with_a_4xx_page(
    app: Flask, world: dict[str, Any]
) -> None:
    """NUL, huge and negative integers and impossible dates in the path, the query string and
    the form of every route, anonymously, as a superadmin and as a mailbox owner: never a 500,
    never Werkzeug's bare error page."""
    clients = _clients(app)
    names = parameter_names()
    assert {"email", "contact_email", "since", "until", "actor", "page"} <= set(names)
    for rule in _rules(app):
        for method in _methods(rule):
            for who, client in clients.items():
                if who != "anonymous" and rule.endpoint.endswith("logout"):
                    continue  # would end the session the other requests need
                send = client.get if method == "GET" else client.post
                for bad in BAD_PATH_VALUES:
                    for name in rule.arguments:
                        path = _path(rule, {**world, name: bad})
                        _check(send(path), f"{who} {method} {path}")
                path = _path(rule, world)
                for bad in BAD_VALUES:
                    query = {name: bad for name in names}
                    _check(send(path, query_string=query), f"{who} {method} {path}?…={bad!r}")
                    if method == "POST":
                        _check(send(path, data=query), f"{who} {method} {path} form {bad!r}")


@pytest.mark.parametrize(
    "url",
    [
        "/admin/audit?since=0001-01-01&until=9999-12-31",
        "/admin/audit?until=9999-12-31",
        "/admin/audit?actor=%00",
        "/admin/audit?since=%00",
        "/admin/mailboxes/99999999999999999999999",
        "/admin/mailboxes?page=99999999999999999999999",
        "/admin/mailboxes?domain=99999999999999999999999",
        "/admin/audit?page=99999999999999999999999",
    ],
)
def test_reported_bad_admin_urls_are_not_500(logged_in: FlaskClient, url: str) -> None:
    response = logged_in.get(url)
    assert response.status_code in {200, 400, 404}, response.get_data(as_text=True)[:300]
    assert OUR_PAGE in response.get_data(as_text=True)


def test_impossible_audit_dates_are_reported_next_to_the_filter(logged_in: FlaskClient) -> None:
    response = logged_in.get("/admin/audit?since=0001-01-01&until=9999-12-31")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "between 1970-01-01 and 9999-12-30" in body


@pytest.mark.parametrize("url", ["/admin/login", "/account/login"])
def test_nul_in_login_email_is_a_400_page(client: FlaskClient, url: str) -> None:
    response = client.post(url, data={"email": "root@example.com\x00", "password": "x" * 10})
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert OUR_PAGE in body and "contained a NUL character" in body


@pytest.mark.parametrize(
    ("url", "method", "code"),
    [
        ("/no/such/page", "get", 404),
        ("/admin/no/such/page", "get", 404),
        ("/account/no/such/page", "get", 404),
        ("/admin/logout", "get", 405),
        ("/healthz", "post", 405),
    ],
)
def test_routing_errors_render_our_page(client: FlaskClient, url: str, method: str, code: int):
    response = getattr(client, method)(url)
    assert response.status_code == code
    assert OUR_PAGE in response.get_data(as_text=True)


def test_an_unexpected_error_renders_our_500_page(app: Flask) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom-for-test")
    def boom() -> str:
        raise RuntimeError("boom")

    response = app.test_client().get("/boom-for-test")
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert OUR_PAGE in body and "boom" not in body


def test_too_large_form_is_a_413_page(app: Flask, client: FlaskClient) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = client.post("/admin/login", data={"email": "a" * 5000, "password": "x"})
    assert response.status_code == 413
    assert OUR_PAGE in response.get_data(as_text=True)


def test_errors_come_as_json_or_xml_to_clients_that_ask_for_them(app: Flask) -> None:
    """A client that prefers JSON gets RFC 9457 problem details; the mail clients' XML
    configuration files (autoconfig, autodiscover) answer errors in XML, not an HTML page."""
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom-for-json")
    def boom() -> str:
        raise RuntimeError("secret detail")

    client = app.test_client()
    response = client.get("/no/such/page", headers={"Accept": "application/json"})
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json() == {
        "type": "about:blank",
        "title": "Not found",
        "status": 404,
        "detail": "There is nothing at this address. Check the link, or go back.",
    }
    # A browser's Accept (HTML first, */* last) still gets the page.
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert OUR_PAGE in client.get("/no/such/page", headers={"Accept": browser}).text
    for url in (
        "/mail/config-v1.1.xml?emailaddress=a@unknown.test",
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a@unknown.test",
    ):
        response = client.get(url)
        assert response.status_code == 404 and response.mimetype == "application/xml"
        assert response.text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<error>')
        assert "<status>404</status>" in response.text
    response = client.post(
        "/autodiscover/autodiscover.xml", data=b"<x/>", headers={"Content-Type": "text/xml"}
    )
    assert response.status_code == 400 and response.mimetype == "application/xml"
    response = client.get("/boom-for-json", headers={"Accept": "application/json"})
    assert response.status_code == 500 and response.get_json()["status"] == 500
    assert "secret" not in response.text
