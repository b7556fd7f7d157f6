"""/api/v1 aliases, trial conversion and audit events through the real server."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent
from tests.api.conftest import ApiClient, token_for
from tests.conftest import ADMIN_EMAIL, make_admin, make_domain, make_mailbox


def test_aliases_create_list_get_delete(
    api: ApiClient, runner: FlaskCliRunner, session: Session
) -> None:
    make_mailbox(session, "alice@example.test")
    made = api.post(
        "/api/v1/aliases", json={"address": "Sales@example.test", "mailbox": "alice@example.test"}
    )
    assert made.status_code == 201, made.text
    assert made.json() == {"address": "sales@example.test", "mailbox": "alice@example.test"}
    cli = json.loads(runner.invoke(args=["alias", "list", "--json"]).output)
    assert api.get("/api/v1/aliases").json()["items"] == cli
    assert api.get("/api/v1/aliases?search=alice").json()["total"] == 1
    assert api.get("/api/v1/mailboxes/alice@example.test").json()["aliases"] == [
        "sales@example.test"
    ]
    taken = api.post(
        "/api/v1/aliases", json={"address": "alice@example.test", "mailbox": "alice@example.test"}
    )
    assert taken.status_code == 409
    assert api.get("/api/v1/aliases/sales@example.test").status_code == 200
    assert api.delete("/api/v1/aliases/sales@example.test").status_code == 204
    assert api.get("/api/v1/aliases/sales@example.test").status_code == 404


def test_a_domain_admin_cannot_alias_into_another_domain(client_for: Any, session: Session) -> None:
    mine = make_domain(session, "mine.test")
    make_mailbox(session, "me@mine.test")
    make_domain(session, "theirs.test")
    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[mine])
    client: ApiClient = client_for(token_for(session, tenant))
    response = client.post(
        "/api/v1/aliases", json={"address": "x@theirs.test", "mailbox": "me@mine.test"}
    )
    assert response.status_code == 404
    assert response.json()["errors"] == {"address": ["domain theirs.test is not hosted here"]}


def test_convert_a_trial(api: ApiClient, session: Session) -> None:
    make_mailbox(session, "trial@example.test", plan="trial")
    converted = api.post("/api/v1/mailboxes/trial@example.test/convert")
    assert converted.status_code == 200, converted.text
    assert converted.json()["plan"] == "paid" and converted.json()["trial_expires_at"] is None
    again = api.post("/api/v1/mailboxes/trial@example.test/convert")
    assert again.status_code == 422 and again.json()["errors"] == {
        "plan": ["trial@example.test is not a trial"]
    }


def test_audit_events_filtered_and_scoped(
    api: ApiClient, client_for: Any, session: Session
) -> None:
    mine = make_domain(session, "mine.test")
    make_domain(session, "theirs.test")
    api.post(
        "/api/v1/mailboxes", json={"address": "a@mine.test", "quota_gb": 8, "protocols": "imap"}
    )
    api.post(
        "/api/v1/mailboxes", json={"address": "b@theirs.test", "quota_gb": 8, "protocols": "imap"}
    )
    events = api.get("/api/v1/audit-events?action=mailbox.create&actor=token:billing").json()
    assert [e["target"] for e in events["items"]] == ["b@theirs.test", "a@mine.test"]
    assert events["items"][0]["actor"] == f"token:billing ({ADMIN_EMAIL})"
    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[mine])
    theirs = (
        client_for(token_for(session, tenant, scope="read", name="t"))
        .get("/api/v1/audit-events")
        .json()
    )
    assert {e["domain"] for e in theirs["items"]} == {"mine.test"}
    bad = api.get("/api/v1/audit-events?since=yesterday")
    assert bad.status_code == 422 and list(bad.json()["errors"]) == ["since"]


def test_identities_add_list_update_delete(
    api: ApiClient, runner: FlaskCliRunner, session: Session
) -> None:
    make_mailbox(session, "alice@example.test")
    made = api.post(
        "/api/v1/mailboxes/alice@example.test/identities",
        json={"address": "Billing@example.test", "display_name": "Billing team"},
    )
    assert made.status_code == 201, made.text
    assert made.json()["address"] == "billing@example.test" and made.json()["enabled"] is True
    listed = api.get("/api/v1/mailboxes/alice@example.test/identities").json()
    cli = runner.invoke(args=["identity", "list", "alice@example.test", "--json"])
    assert cli.exit_code == 0 and "billing@example.test" in cli.output
    assert [i["address"] for i in listed] == ["billing@example.test"]
    again = api.post(
        "/api/v1/mailboxes/alice@example.test/identities", json={"address": "billing@example.test"}
    )
    assert again.status_code == 409
    off = api.patch(
        "/api/v1/mailboxes/alice@example.test/identities/billing@example.test",
        json={"enabled": False},
    )
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert (
        api.delete(
            "/api/v1/mailboxes/alice@example.test/identities/billing@example.test"
        ).status_code
        == 204
    )
    gone = api.delete("/api/v1/mailboxes/alice@example.test/identities/billing@example.test")
    assert gone.status_code == 404


def test_a_pop3_only_mailbox_gets_no_identity(api: ApiClient, session: Session) -> None:
    make_mailbox(session, "pop@example.test", protocols="pop3")
    response = api.post(
        "/api/v1/mailboxes/pop@example.test/identities", json={"address": "x@example.test"}
    )
    assert response.status_code == 422 and list(response.json()["errors"]) == ["address"]


def test_snapshots_restore_and_history(
    api: ApiClient, runner: FlaskCliRunner, session: Session
) -> None:
    from tests.web.timemachine_helpers import deliver, expunge, folder_bodies, mail, snapshot

    mailbox = make_mailbox(session, "alice@example.test")
    uids = deliver(session, mailbox, [mail("One"), mail("Two")])
    snapshot_id = snapshot(session, mailbox)
    listed = api.get("/api/v1/mailboxes/alice@example.test/snapshots").json()
    cli = json.loads(runner.invoke(args=["backup", "list", "alice@example.test", "--json"]).output)
    assert listed == cli and listed[0]["snapshot"] == snapshot_id and listed[0]["messages"] == 2
    expunge(session, mailbox, [uids[0]])
    assert len(folder_bodies(mailbox)) == 1
    report = api.post(
        "/api/v1/mailboxes/alice@example.test/restores",
        json={"snapshot": snapshot_id, "folder": "INBOX"},
    )
    assert report.status_code == 200, report.text
    assert (report.json()["restored"], report.json()["skipped"]) == (1, 1)
    assert len(folder_bodies(mailbox)) == 2
    again = api.post(
        "/api/v1/mailboxes/alice@example.test/restores", json={"snapshot": snapshot_id}
    )
    assert again.json()["restored"] == 0  # restore never duplicates
    history = api.get("/api/v1/mailboxes/alice@example.test/restores").json()
    assert len(history) == 2 and history[0]["actor"] == f"token:billing ({ADMIN_EMAIL})"
    unknown = api.post("/api/v1/mailboxes/alice@example.test/restores", json={"snapshot": "nope"})
    assert unknown.status_code in (404, 422)
    bad_uid = api.post(
        "/api/v1/mailboxes/alice@example.test/restores",
        json={"snapshot": snapshot_id, "folder": "INBOX", "uids": [2**40]},
    )
    assert bad_uid.status_code == 422 and "uids.0" in bad_uid.json()["errors"]


def test_jobs_list_run_and_runs(
    api: ApiClient, runner: FlaskCliRunner, client_for: Any, session: Session
) -> None:
    listed = api.get("/api/v1/jobs").json()
    cli = json.loads(runner.invoke(args=["jobs", "list", "--json"]).output)
    assert listed == cli and "quota-recount" in {job["name"] for job in listed}
    ran = api.post("/api/v1/jobs/quota-recount/run")
    assert ran.status_code == 200, ran.text
    # Started through the API: recorded as such, with the token that asked (as the audit has it).
    who = f"token:billing ({ADMIN_EMAIL})"
    assert ran.json()["started_by"] == "api" and ran.json()["actor"] == who
    assert ran.json()["outcome"]
    runs = api.get("/api/v1/jobs/quota-recount/runs").json()
    assert runs["total"] == 1 and runs["items"][0]["job"] == "quota-recount"
    assert (runs["items"][0]["started_by"], runs["items"][0]["actor"]) == ("api", who)
    [job] = [job for job in api.get("/api/v1/jobs").json() if job["name"] == "quota-recount"]
    assert job["last_run"]["actor"] == who
    session.expire_all()
    [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "job.run")).all()
    assert event.actor == who
    assert api.get("/api/v1/jobs/no-such-job/runs").status_code == 404
    tenant = make_admin(
        session, "tenant@example.com", superadmin=False, domains=[make_domain(session)]
    )
    assert client_for(token_for(session, tenant, name="t")).get("/api/v1/jobs").status_code == 403


def test_queue_list_show_retry_delete(
    api: ApiClient, runner: FlaskCliRunner, session: Session
) -> None:
    from provider.services import outbound

    mailbox = make_mailbox(session, "alice@example.test")
    queued = outbound.enqueue(
        session,
        sender="alice@example.test",
        recipients=["bob@elsewhere.example", "carol@elsewhere.example"],
        content=b"Subject: Invoice\r\n\r\nhello\r\n",
        mailbox_id=mailbox.id,
    )
    listed = api.get("/api/v1/queue").json()
    cli = json.loads(runner.invoke(args=["queue", "list", "--json"]).output)
    assert listed["items"] == cli and listed["total"] == 1
    assert api.get("/api/v1/queue?search=carol").json()["total"] == 1
    assert api.get("/api/v1/queue?search=nobody").json()["total"] == 0
    shown = api.get(f"/api/v1/queue/{queued.queue_id}").json()
    assert {r["address"] for r in shown["recipients"]} == {
        "bob@elsewhere.example",
        "carol@elsewhere.example",
    }
    assert api.post(f"/api/v1/queue/{queued.queue_id}/retry").status_code == 200
    deleted = api.delete(f"/api/v1/queue/{queued.queue_id}")
    assert deleted.status_code == 200 and deleted.json() == {"recipients": 2}
    assert api.get("/api/v1/queue").json()["total"] == 0
    assert api.get("/api/v1/queue/NOTANID%00").status_code == 400
    assert api.get("/api/v1/queue/0123456789ABCDEF").status_code == 404


BAD_CURSORS = (
    "garbage",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00Z,0",
    "2026-01-01T00:00:00Z,-3",
    "2026-01-01T00:00:00,5",  # no time zone
    "2026-13-01T00:00:00Z,5",
    "2026-01-01T00:00:00Z,99999999999999999999999",
    "2026-01-01T00:00:00Z," + "9" * 90,
    "x" * 101,  # longer than any cursor
)


def walk(api: ApiClient, path: str, per_page: int) -> tuple[list[dict[str, Any]], set[int]]:
    """Every item of a list by cursor from `after=` (empty) on; and the totals it answered."""
    seen: list[dict[str, Any]] = []
    totals: set[int] = set()
    after = ""
    for _ in range(100):
        separator = "&" if "?" in path else "?"
        response = api.get(f"{path}{separator}per_page={per_page}&after={after}")
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["page"] is None
        totals.add(page["total"])
        seen += page["items"]
        if page["next_after"] is None:
            return seen, totals
        after = page["next_after"]
    raise AssertionError("the cursor walk never ended")


def test_audit_events_by_cursor_walk_every_event_once_newest_first(
    api: ApiClient, client_for: Any, session: Session
) -> None:
    from datetime import UTC, datetime

    from provider.services import audit
    from provider.services.audit import Actor

    mine = make_domain(session, "mine.test")
    tied = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    for number in range(9):
        domain = "mine.test" if number % 2 else "theirs.test"
        event = audit.record(session, Actor("cli"), "x.test", f"t{number}", domain=domain)
        # Five events in the same microsecond: the id breaks the tie, none is lost.
        event.occurred_at = tied if number < 5 else datetime(2026, 3, 2, number, tzinfo=UTC)
    session.commit()
    by_page = api.get("/api/v1/audit-events?action=x.&per_page=100").json()["items"]
    assert [e["target"] for e in by_page] == ["t8", "t7", "t6", "t5", "t4", "t3", "t2", "t1", "t0"]
    for per_page in (1, 2, 4):
        seen, totals = walk(api, "/api/v1/audit-events?action=x.", per_page)
        assert seen == by_page and totals == {9}
    first = api.get("/api/v1/audit-events?action=x.&per_page=4").json()
    assert first["next_after"] is not None and first["total_is_estimate"] is False
    resumed = api.get(f"/api/v1/audit-events?action=x.&per_page=4&after={first['next_after']}")
    assert [e["target"] for e in resumed.json()["items"]] == ["t4", "t3", "t2", "t1"]
    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[mine])
    theirs, _ = walk(
        client_for(token_for(session, tenant, scope="read", name="t")),
        "/api/v1/audit-events?action=x.",
        2,
    )
    assert [e["target"] for e in theirs] == ["t7", "t5", "t3", "t1"]
    for bad in BAD_CURSORS:
        response = api.get("/api/v1/audit-events", params={"after": bad})
        assert response.status_code == 422, bad
        assert list(response.json()["errors"]) == ["after"]
    # A NUL anywhere in the URL is refused before any parameter is read, as on every route.
    assert (
        api.get("/api/v1/audit-events", params={"after": "2026-01-01T00:00:00Z,5\x00"}).status_code
        == 400
    )


def test_the_queue_pages_in_sql_by_number_and_by_cursor(
    api: ApiClient, client_for: Any, session: Session
) -> None:
    from datetime import UTC, datetime

    from provider.models import OutboundMessage
    from provider.services import outbound

    alice = make_mailbox(session, "alice@mine.test")
    bob = make_mailbox(session, "bob@theirs.test")
    ids = []
    for number in range(7):
        sender = alice if number % 3 else bob
        queued = outbound.enqueue(
            session,
            sender=sender.address,
            recipients=[f"r{number}@elsewhere.example"],
            content=b"Subject: x\r\n\r\nhello\r\n",
            mailbox_id=sender.id,
        )
        ids.append(queued.queue_id)
    # Three queued in the same microsecond: the id orders them.
    for queue_id in ids[2:5]:
        message = session.scalars(
            select(OutboundMessage).where(OutboundMessage.queue_id == queue_id)
        ).one()
        message.created_at = datetime(2026, 3, 1, tzinfo=UTC)
    session.commit()
    oldest_first = [m.queue_id for m in outbound.list_visible(session, domain_ids=None)]
    assert sorted(oldest_first) == sorted(ids)
    page = api.get("/api/v1/queue?per_page=3&page=2").json()
    assert [m["queue_id"] for m in page["items"]] == oldest_first[3:6]
    assert (page["total"], page["pages"], page["total_is_estimate"]) == (7, 3, False)
    assert page["next_after"] is not None
    last = api.get("/api/v1/queue?per_page=3&page=99").json()
    assert [m["queue_id"] for m in last["items"]] == oldest_first[6:]
    assert last["page"] == 3 and last["next_after"] is None
    for per_page in (1, 2, 3):
        seen, totals = walk(api, "/api/v1/queue", per_page)
        assert [m["queue_id"] for m in seen] == oldest_first and totals == {7}
    searched, _ = walk(api, "/api/v1/queue?search=r1@", 1)
    assert [m["queue_id"] for m in searched] == [ids[1]]
    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[alice.domain])
    tenants, totals = walk(
        client_for(token_for(session, tenant, scope="read", name="t")), "/api/v1/queue", 2
    )
    assert [m["sender"] for m in tenants] == ["alice@mine.test"] * 4 and totals == {4}
    for bad in BAD_CURSORS:
        response = api.get("/api/v1/queue", params={"after": bad})
        assert response.status_code == 422, bad
        assert list(response.json()["errors"]) == ["after"]
    # A NUL anywhere in the URL is refused before any parameter is read, as on every route.
    assert (
        api.get("/api/v1/queue", params={"after": "2026-01-01T00:00:00Z,5\x00"}).status_code == 400
    )


def test_a_long_token_name_and_admin_address_still_fit_the_audit_and_job_run_records(
    api_server: str, client_for: Any, session: Session
) -> None:
    """`token:NAME (e-mail)` can pass the 320 characters of the actor columns (a 100-character
    name, a long address): cut to fit, so PostgreSQL does not refuse the write it records."""
    email = "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".test"
    admin = make_admin(session, email)
    client = client_for(token_for(session, admin, name="n" * 100))
    ran = client.post("/api/v1/jobs/quota-recount/run")
    assert ran.status_code == 200, ran.text
    actor = ran.json()["actor"]
    assert len(actor) == 320 and actor.startswith("token:" + "n" * 100 + " (a")
    assert actor.endswith("…")
    session.expire_all()
    [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "job.run")).all()
    assert event.actor == actor
