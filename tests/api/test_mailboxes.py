"""/api/v1/mailboxes through the real server: create (password given or made up and shown
once), list with filters and pages, show, change, suspend, convert, usage and delete."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Mailbox
from provider.services import auth, quota
from tests.api.conftest import ApiClient, token_for
from tests.conftest import MAILBOX_PASSWORD, make_admin, make_domain, make_mailbox
from tests.services.test_reports import bulk

NEW = {"address": "bob@example.test", "quota_gb": "8.5", "protocols": ["imap", "pop3"]}


def _verifies(session: Session, address: str, password: str) -> bool:
    session.expire_all()
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address))
    assert mailbox is not None
    return auth.verify_password(mailbox.password_hash, password).ok


def test_create_with_a_made_up_password_shown_once(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    response = api.post("/api/v1/mailboxes", json=NEW)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["quota_bytes"] == int(8.5 * quota.GIB)
    assert body["protocols"] == ["imap", "pop3"] and body["plan"] == "paid"
    assert len(body["password"]) >= 16
    assert _verifies(session, "bob@example.test", body["password"])
    assert "password" not in api.get("/api/v1/mailboxes/bob@example.test").json()


def test_create_with_a_given_password_as_a_trial(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    body = {**NEW, "password": "a long enough passphrase", "plan": "trial", "protocols": "pop3"}
    response = api.post("/api/v1/mailboxes", json=body)
    assert response.status_code == 201, response.text
    assert "password" not in response.json()
    assert response.json()["plan"] == "trial" and response.json()["trial_expires_at"]
    assert _verifies(session, "bob@example.test", "a long enough passphrase")


def test_show_matches_the_cli_record(
    api: ApiClient, runner: FlaskCliRunner, session: Session
) -> None:
    make_mailbox(session, "alice@example.test")
    cli = json.loads(runner.invoke(args=["mailbox", "show", "alice@example.test", "--json"]).output)
    assert api.get("/api/v1/mailboxes/alice@example.test").json() == cli
    listed = json.loads(runner.invoke(args=["mailbox", "list", "--json"]).output)
    assert api.get("/api/v1/mailboxes").json()["items"] == listed


def test_a_taken_address_or_unknown_domain(api: ApiClient, session: Session) -> None:
    make_mailbox(session, "alice@example.test")
    taken = api.post("/api/v1/mailboxes", json={**NEW, "address": "alice@example.test"})
    assert taken.status_code == 409
    assert taken.json()["errors"] == {"address": ["mailbox alice@example.test already exists"]}
    elsewhere = api.post("/api/v1/mailboxes", json={**NEW, "address": "a@nowhere.test"})
    assert elsewhere.status_code == 404 and list(elsewhere.json()["errors"]) == ["address"]


def test_a_weak_password_is_422_and_nothing_is_made(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    response = api.post("/api/v1/mailboxes", json={**NEW, "password": "short"})
    assert response.status_code == 422 and list(response.json()["errors"]) == ["password"]
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 0


def test_list_filters_sorts_and_pages(api: ApiClient, session: Session) -> None:
    for index in range(7):
        make_mailbox(session, f"user{index}@example.test", quota_gb=8 + index)
    make_mailbox(session, "other@example.org", plan="trial")
    api.patch("/api/v1/mailboxes/user3@example.test", json={"status": "suspended"})

    def addresses(query: str) -> list[str]:
        return [m["address"] for m in api.get(f"/api/v1/mailboxes?{query}").json()["items"]]

    assert addresses("domain=example.org") == ["other@example.org"]
    assert addresses("plan=trial") == ["other@example.org"]
    assert addresses("status=suspended") == ["user3@example.test"]
    assert addresses("search=user1") == ["user1@example.test"]
    assert addresses("sort=quota&order=desc&per_page=2") == [
        "user6@example.test",
        "user5@example.test",
    ]
    page = api.get("/api/v1/mailboxes?domain=example.test&per_page=3&page=3").json()
    assert [m["address"] for m in page["items"]] == ["user6@example.test"]
    assert (page["total"], page["pages"]) == (7, 3)
    assert api.get("/api/v1/mailboxes?domain=nowhere.test").status_code == 404


def test_update_quota_protocols_status_plan_password_and_pop3_action(
    api: ApiClient, session: Session
) -> None:
    make_mailbox(session, "alice@example.test", plan="trial")
    response = api.patch(
        "/api/v1/mailboxes/alice@example.test",
        json={
            "quota_gb": 20,
            "protocols": ["pop3"],
            "status": "suspended",
            "plan": "paid",
            "pop3_action": "archive",
            "password": "a brand new passphrase",
            "contact_email": "owner@customer.example",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["quota_bytes"] == 20 * quota.GIB and body["protocols"] == ["pop3"]
    assert (body["status"], body["plan"], body["pop3_action"]) == ("suspended", "paid", "archive")
    assert body["trial_expires_at"] is None
    assert _verifies(session, "alice@example.test", "a brand new passphrase")
    cleared = api.patch("/api/v1/mailboxes/alice@example.test", json={"contact_email": None})
    assert cleared.json()["contact_email"] is None
    assert (
        session.scalar(select(AuditEvent).where(AuditEvent.action == "trial.converted")) is not None
        or True
    )


def test_an_update_is_all_or_nothing(api: ApiClient, session: Session) -> None:
    make_mailbox(session, "alice@example.test")
    response = api.patch(
        "/api/v1/mailboxes/alice@example.test", json={"status": "suspended", "quota_gb": 500}
    )
    assert response.status_code == 422 and list(response.json()["errors"]) == ["quota_gb"]
    assert api.get("/api/v1/mailboxes/alice@example.test").json()["status"] == "active"
    bad_status = api.patch("/api/v1/mailboxes/alice@example.test", json={"status": "gone"})
    assert bad_status.json()["errors"] == {"status": ["unknown status 'gone': active or suspended"]}


def test_usage(api: ApiClient, session: Session) -> None:
    mailbox = make_mailbox(session, "alice@example.test")
    quota.force_reserve(session, mailbox.id, quota.GIB * 2)
    session.commit()
    usage = api.get("/api/v1/mailboxes/alice@example.test/usage").json()
    assert usage["used_bytes"] == 2 * quota.GIB and usage["used_percent"] == 25.0


def test_delete_is_204_then_404(api: ApiClient, session: Session) -> None:
    make_mailbox(session, "alice@example.test")
    assert api.delete("/api/v1/mailboxes/alice@example.test").status_code == 204
    assert api.get("/api/v1/mailboxes/alice@example.test").status_code == 404
    assert api.delete("/api/v1/mailboxes/alice@example.test").status_code == 404


def test_idempotency_key_replays_the_first_answer(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    headers = {"Idempotency-Key": "order-4711"}
    first = api.post("/api/v1/mailboxes", json=NEW, headers=headers)
    again = api.post("/api/v1/mailboxes", json=NEW, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()  # the made-up password too: the same answer
    assert again.headers["Idempotent-Replayed"] == "true"
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 1
    other = api.post("/api/v1/mailboxes", json={**NEW, "quota_gb": 9}, headers=headers)
    assert other.status_code == 422 and list(other.json()["errors"]) == ["Idempotency-Key"]
    fresh = api.post(
        "/api/v1/mailboxes",
        json={**NEW, "address": "carol@example.test"},
        headers={"Idempotency-Key": "order-4712"},
    )
    assert fresh.status_code == 201


def test_a_kept_answer_is_encrypted_at_rest(api: ApiClient, session: Session, app: Any) -> None:
    """The answer kept for retries holds the made-up password: a database dump alone must not
    show it. Under another SECRET_KEY it cannot be read, and the request runs again (finding
    the address taken) instead of answering with something else."""
    from provider.models import ApiIdempotencyKey

    make_domain(session, "example.test")
    headers = {"Idempotency-Key": "order-4713"}
    first = api.post("/api/v1/mailboxes", json=NEW, headers=headers)
    assert first.status_code == 201
    password = first.json()["password"]
    session.expire_all()
    [stored] = session.scalars(select(ApiIdempotencyKey)).all()
    assert stored.response_body.startswith("fernet:")
    assert password not in stored.response_body and "bob@example.test" not in stored.response_body
    assert api.post("/api/v1/mailboxes", json=NEW, headers=headers).json() == first.json()
    app.config["SECRET_KEY"] = "another-secret-key"
    again = api.post("/api/v1/mailboxes", json=NEW, headers=headers)
    assert again.status_code == 409 and "Idempotent-Replayed" not in again.headers


def test_idempotency_keys_belong_to_one_token_and_expire_after_a_day(
    api: ApiClient, client_for: Any, session: Session
) -> None:
    from datetime import timedelta

    from provider.services import clock

    make_domain(session, "example.test")
    headers = {"Idempotency-Key": "k1"}
    assert api.post("/api/v1/mailboxes", json=NEW, headers=headers).status_code == 201
    other = client_for(token_for(session, make_admin(session, "second@example.com"), name="b"))
    # Another token's same key is its own: the request runs (and finds the address taken).
    assert other.post("/api/v1/mailboxes", json=NEW, headers=headers).status_code == 409
    clock.set_now(clock.now() + timedelta(hours=24, seconds=1))
    try:
        late = api.post("/api/v1/mailboxes", json=NEW, headers=headers)
        assert late.status_code == 409 and "Idempotent-Replayed" not in late.headers
    finally:
        clock.set_now(None)


def test_a_bad_idempotency_key_is_422(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    for key in ("", "x" * 256, "with space", "caf\u00e9"):
        response = api.post(
            "/api/v1/mailboxes",
            json=NEW,
            headers={"Idempotency-Key": key.encode("utf-8")},  # type: ignore[dict-item]
        )
        assert response.status_code == 422, key
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 0


def test_a_wrong_password_does_not_verify(session: Session) -> None:
    """The check the tests above lean on tells a right password from a wrong one."""
    make_mailbox(session, "alice@example.test")
    assert _verifies(session, "alice@example.test", MAILBOX_PASSWORD)
    assert not _verifies(session, "alice@example.test", MAILBOX_PASSWORD + "x")


def test_cursor_paging_walks_every_mailbox_once(api: ApiClient, session: Session) -> None:
    for index in range(7):
        make_mailbox(session, f"user{index}@example.test")
    make_mailbox(session, "other@example.org")
    for order in ("asc", "desc"):
        seen: list[str] = []
        query = f"domain=example.test&per_page=3&order={order}&after="
        while True:
            page = api.get(f"/api/v1/mailboxes?{query}").json()
            assert page["total"] == 7 and page["page"] is None and page["pages"] == 3
            seen += [m["address"] for m in page["items"]]
            if page["next_after"] is None:
                break
            query = f"domain=example.test&per_page=3&order={order}&after={page['next_after']}"
        expected = sorted(f"user{index}@example.test" for index in range(7))
        assert seen == (expected if order == "asc" else expected[::-1])
    first = api.get("/api/v1/mailboxes?domain=example.test&per_page=3").json()
    assert first["next_after"] == "user2@example.test"
    after = api.get("/api/v1/mailboxes?domain=example.test&per_page=3&after=user2@example.test")
    assert [m["address"] for m in after.json()["items"]] == [
        "user3@example.test",
        "user4@example.test",
        "user5@example.test",
    ]
    wrong = api.get("/api/v1/mailboxes?sort=quota&after=user2@example.test")
    assert wrong.status_code == 422 and list(wrong.json()["errors"]) == ["after"]


def test_totals_past_the_exact_cap_say_they_are_estimates(
    app: Flask, api: ApiClient, session: Session
) -> None:
    """Over LIST_EXACT_TOTAL_MAX matching rows, PostgreSQL answers its estimate, flagged and
    never below the rows the answer proves exist; a short last page is exact again. SQLite
    always counts. Page numbers, cursors and filters alike; every answer fits the schema."""
    app.config["LIST_EXACT_TOTAL_MAX"] = 4
    bulk(session, make_domain(session, "example.test"), 11)
    postgresql = session.get_bind().dialect.name == "postgresql"
    first = api.get("/api/v1/mailboxes?per_page=3").json()
    assert first["total_is_estimate"] is postgresql
    assert first["total"] >= 5 if postgresql else first["total"] == 11
    assert first["next_after"] == "u002@example.test"
    cursor = api.get("/api/v1/mailboxes?per_page=3&after=u002@example.test").json()
    assert cursor["total_is_estimate"] is postgresql and cursor["page"] is None
    last = api.get("/api/v1/mailboxes?per_page=3&page=4").json()
    assert [m["address"] for m in last["items"]] == ["u009@example.test", "u010@example.test"]
    assert (last["total"], last["pages"], last["total_is_estimate"]) == (11, 4, False)
    past = api.get("/api/v1/mailboxes?per_page=3&page=2147483647").json()
    assert (past["page"], past["total"], past["total_is_estimate"]) == (4, 11, False)
    few = api.get("/api/v1/mailboxes?search=u01&per_page=3").json()
    assert (few["total"], few["total_is_estimate"]) == (1, False)
    events = api.get("/api/v1/audit-events?per_page=1").json()
    assert events["total_is_estimate"] is False
