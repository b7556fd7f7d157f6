"""The dashboard: domain count, mailboxes by plan, protocol policy and status, storage."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from provider.services import provisioning
from tests.conftest import TEST_ACTOR, make_domain, make_mailbox
from tests.web.conftest import text_of

GIB = 1024**3


def stat(html: str, section: str, key: str) -> int:
    block = re.search(rf'id="stat-{section}">(.*?)</dl>', html, re.S)
    assert block, section
    value = re.search(rf'data-key="{key}">(\d+)<', block.group(1))
    assert value, (section, key)
    return int(value.group(1))


def big_number(html: str, name: str) -> int:
    match = re.search(rf'id="stat-{name}">(\d+)<', html)
    assert match, name
    return int(match.group(1))


def test_dashboard_counts_domains_and_mailboxes_by_plan_protocols_and_status(
    logged_in: FlaskClient, session: Session
):
    make_domain(session, "empty.test")
    make_mailbox(session, "a@example.test", protocols="imap")
    make_mailbox(session, "b@example.test", protocols="pop3", plan="trial")
    make_mailbox(session, "c@example.test", protocols="both", plan="trial")
    suspended = make_mailbox(session, "d@second.test", protocols="imap,pop3")
    provisioning.update_mailbox(session, suspended, actor=TEST_ACTOR, status="suspended")
    session.commit()

    html = text_of(logged_in.get("/admin/"))
    assert big_number(html, "domains") == 3
    assert big_number(html, "mailboxes") == 4
    assert (stat(html, "plan", "paid"), stat(html, "plan", "trial")) == (2, 2)
    assert stat(html, "protocols", "imap") == 1
    assert stat(html, "protocols", "pop3") == 1
    assert stat(html, "protocols", "both") == 2
    assert stat(html, "status", "active") == 3
    assert stat(html, "status", "suspended") == 1
    assert stat(html, "status", "expired") == 0


def test_dashboard_shows_storage_allocated_and_used_in_gb_and_tb(
    logged_in: FlaskClient, session: Session
):
    for number in range(11):
        make_mailbox(session, f"user{number}@example.test", quota_gb=100)
    first = make_mailbox(session, "small@example.test", quota_gb=8)
    first.used_bytes = 3 * GIB
    session.commit()

    html = text_of(logged_in.get("/admin/"))
    storage = re.search(r'id="stat-storage">(.*?)</p>', html, re.S)
    assert storage
    # 11 x 100 GB + 8 GB = 1108 GB = 1.08 TB (1 TB = 1024 GB)
    assert "<strong>3 GB</strong> used of <strong>1.08 TB</strong>" in storage.group(1)
    assert re.search(r'<meter class="meter-wide"[^>]*value="3221225472"', html)


def test_dashboard_of_an_empty_platform_shows_zeros(logged_in: FlaskClient):
    html = text_of(logged_in.get("/admin/"))
    assert big_number(html, "domains") == 0
    assert big_number(html, "mailboxes") == 0
    assert "<strong>0 bytes</strong> used of <strong>0 bytes</strong>" in html
