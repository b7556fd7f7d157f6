"""The audit log page: newest first, filters, pagination and a compact before/after diff."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from provider.services import audit, provisioning
from provider.services.audit import Actor
from provider.services.clock import frozen_at
from tests.conftest import TEST_ACTOR, make_mailbox
from tests.web.conftest import text_of

ROW = re.compile(
    r"<tr>\s*<td class=\"nowrap\">[^<]*</td>\s*<td>([^<]*)<.*?<code>([^<]+)</code>.*?"
    r'<td class="address">([^<]+)</td>',
    re.S,
)


def rows(html: str) -> list[tuple[str, str, str]]:
    """(actor, action, target) of each event row on the page."""
    return ROW.findall(html)


def test_audit_page_lists_changes_made_in_the_panel_newest_first(
    logged_in: FlaskClient, session: Session
):
    logged_in.post("/admin/domains", data={"name": "log.test"})
    logged_in.post("/admin/domains", data={"name": "later.test"})
    listed = rows(text_of(logged_in.get("/admin/audit")))
    assert listed == [
        ("admin:root@example.com", "domain.create", "later.test"),
        ("admin:root@example.com", "domain.create", "log.test"),
        ("test", "admin.create", "root@example.com"),
    ]


def test_audit_filters_by_actor_action_prefix_and_target(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "tom@example.test")
    logged_in.post(f"/admin/mailboxes/{mailbox.id}/suspend")
    by_actor = rows(text_of(logged_in.get("/admin/audit?actor=admin:root")))
    assert by_actor == [("admin:root@example.com", "mailbox.update", "tom@example.test")]
    by_action = rows(text_of(logged_in.get("/admin/audit?action=mailbox.")))
    assert [action for _, action, _ in by_action] == ["mailbox.update", "mailbox.create"]
    by_target = rows(text_of(logged_in.get("/admin/audit?target=example.test")))
    assert {target for _, _, target in by_target} == {"example.test", "tom@example.test"}
    assert "No events match these filters." in text_of(logged_in.get("/admin/audit?actor=zzz"))


def test_audit_filters_by_date_range_inclusive(logged_in: FlaskClient, session: Session):
    for day in (1, 2, 3):
        with frozen_at(datetime(2026, 3, day, 12, tzinfo=UTC)):
            audit.record(session, Actor("cli"), "domain.update", f"day{day}.test")
    session.commit()
    listed = rows(text_of(logged_in.get("/admin/audit?since=2026-03-02&until=2026-03-02")))
    assert listed == [("cli", "domain.update", "day2.test")]
    listed = rows(text_of(logged_in.get("/admin/audit?since=2026-03-02&until=2026-03-03")))
    assert [target for *_, target in listed] == ["day3.test", "day2.test"]


def test_audit_bad_date_is_reported_and_ignored(logged_in: FlaskClient):
    response = logged_in.get("/admin/audit?since=yesterday")
    assert response.status_code == 200
    html = text_of(response)
    assert 'id="since-errors"' in html
    assert len(rows(html)) == 1  # the admin.create of the logged-in admin


def test_audit_shows_only_changed_keys(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "uma@example.test", quota_gb=10)
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, quota_gb=20)
    session.commit()
    html = text_of(logged_in.get("/admin/audit?action=mailbox.update"))
    diff = re.search(r'<ul class="diff">(.*?)</ul>', html, re.S)
    assert diff
    keys = re.findall(r'<span class="diff-key">([^<]+)</span>', diff.group(1))
    assert keys == ["quota_bytes"]
    assert "<del>10 GB</del>" in diff.group(1)
    assert "<ins>20 GB</ins>" in diff.group(1)


def test_audit_of_a_created_record_lists_its_fields_folded(
    logged_in: FlaskClient, session: Session
):
    make_mailbox(session, "vera@example.test")
    html = text_of(logged_in.get("/admin/audit?action=mailbox.create"))
    folded = re.search(r"<details><summary>(\d+) fields</summary>(.*?)</details>", html, re.S)
    assert folded
    keys = re.findall(r'<span class="diff-key">([^<]+)</span>', folded.group(2))
    assert "address" in keys and "quota_bytes" in keys
    # Empty values (no aliases, no contact) are no change worth a line.
    assert "aliases" not in keys and "contact_email" not in keys
    assert "<ins>8 GB</ins>" in folded.group(2) and "<del>" not in folded.group(2)


def test_audit_paginates(logged_in: FlaskClient, session: Session):
    for number in range(60):
        audit.record(session, Actor("cli"), "domain.update", f"d{number}.test")
    session.commit()
    first = text_of(logged_in.get("/admin/audit"))
    assert len(rows(first)) == 50
    assert "Page 1 of 2" in first
    second = text_of(logged_in.get("/admin/audit?page=2"))
    assert len(rows(second)) == 11
