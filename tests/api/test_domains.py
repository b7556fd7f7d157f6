"""/api/v1/domains through the real server: the same records as `provider domain … --json`,
signup flag, postmaster, DKIM keys, DNS records and delete, each through the services."""

from __future__ import annotations

import json

from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Domain
from tests.api.conftest import ApiClient
from tests.conftest import make_domain, make_mailbox


def test_create_get_and_list_match_the_cli_records(
    api: ApiClient, runner: FlaskCliRunner, session: Session
) -> None:
    created = api.post("/api/v1/domains", json={"name": "Example.TEST", "signup_enabled": True})
    assert created.status_code == 201, created.text
    make_mailbox(session, "alice@example.test")
    cli = json.loads(runner.invoke(args=["domain", "list", "--json"]).output)
    listed = api.get("/api/v1/domains").json()
    assert listed["items"] == cli
    assert listed["total"] == 1 and listed["pages"] == 1
    assert api.get("/api/v1/domains/example.test").json() == cli[0]
    assert cli[0]["name"] == "example.test" and cli[0]["signup_enabled"] is True
    assert cli[0]["mailboxes"] == 1


def test_a_domain_that_exists_is_409(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    response = api.post("/api/v1/domains", json={"name": "example.test"})
    assert response.status_code == 409
    assert response.json()["errors"] == {"name": ["domain example.test already exists"]}


def test_list_filters_and_pages(api: ApiClient, session: Session) -> None:
    for name in ("a.test", "b.test", "c.example", "d.test"):
        make_domain(session, name, signup_enabled=name != "b.test")
    page = api.get("/api/v1/domains?search=.test&per_page=2&page=2").json()
    assert [d["name"] for d in page["items"]] == ["d.test"]
    assert (page["total"], page["pages"], page["page"], page["per_page"]) == (3, 2, 2, 2)
    closed = api.get("/api/v1/domains?signup_enabled=false").json()
    assert [d["name"] for d in closed["items"]] == ["b.test"]


def test_update_signup_and_postmaster(api: ApiClient, session: Session) -> None:
    make_mailbox(session, "boss@example.test")
    response = api.patch(
        "/api/v1/domains/example.test",
        json={"signup_enabled": True, "postmaster": ["boss@example.test"]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["signup_enabled"] is True
    assert response.json()["postmaster"] == ["boss@example.test"]
    outside = api.patch("/api/v1/domains/example.test", json={"postmaster": ["x@elsewhere.org"]})
    assert outside.status_code == 422 and list(outside.json()["errors"]) == ["postmaster"]
    cleared = api.patch("/api/v1/domains/example.test", json={"postmaster": None})
    assert cleared.json()["postmaster"] == []
    # Asking for the state it is in changes (and audits) nothing.
    events = len(
        session.scalars(select(AuditEvent).where(AuditEvent.action == "domain.update")).all()
    )
    api.patch("/api/v1/domains/example.test", json={"signup_enabled": True})
    again = session.scalars(select(AuditEvent).where(AuditEvent.action == "domain.update")).all()
    assert len(again) == events


def test_dkim_keys_rotate_retire_and_dns_records(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    (first,) = api.get("/api/v1/domains/example.test/dkim").json()
    assert first["state"] == "active"
    rotated = api.post("/api/v1/domains/example.test/dkim/rotate")
    assert rotated.status_code == 201, rotated.text
    keys = {k["selector"]: k["state"] for k in api.get("/api/v1/domains/example.test/dkim").json()}
    assert keys == {rotated.json()["selector"]: "active", first["selector"]: "published"}
    refused = api.post(f"/api/v1/domains/example.test/dkim/{rotated.json()['selector']}/retire")
    assert refused.status_code == 422 and "rotate" in refused.json()["detail"]
    retired = api.post(f"/api/v1/domains/example.test/dkim/{first['selector']}/retire")
    assert retired.status_code == 200 and retired.json()["retired_at"]
    unknown = api.post("/api/v1/domains/example.test/dkim/nope/retire")
    assert unknown.status_code == 404
    dns = api.get("/api/v1/domains/example.test/dns").json()
    assert {"MX", "TXT"} <= {record["type"] for record in dns}
    assert any(rotated.json()["selector"] in record["name"] for record in dns)


def test_delete_refuses_a_domain_with_mailboxes_then_deletes(
    api: ApiClient, session: Session
) -> None:
    make_mailbox(session, "alice@example.test")
    busy = api.delete("/api/v1/domains/example.test")
    assert busy.status_code == 409 and "mailbox" in busy.json()["detail"]
    api.delete("/api/v1/mailboxes/alice@example.test")
    gone = api.delete("/api/v1/domains/example.test")
    assert gone.status_code == 204 and gone.content == b""
    assert session.scalar(select(Domain)) is None
    assert api.get("/api/v1/domains/example.test").status_code == 404
    assert api.delete("/api/v1/domains/example.test").status_code == 404
