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


def test_dashboard_charts_the_last_30_days_from_daily_stats(
    app, logged_in: FlaskClient, session: Session, runner
):
    """Storage, mailboxes and trials from the hourly daily-stats job (today live), deliveries
    and failed logins counted as they happen; each chart is an SVG drawn by us, with its
    numbers in a table."""
    from datetime import timedelta

    from provider.models import DailyStat
    from provider.services import auth, clock, daily_stats

    make_domain(session)
    make_mailbox(session, "a@example.test", quota_gb=10)
    today = clock.now().date()
    session.add(
        DailyStat(day=today - timedelta(days=3), mailboxes=0, trials=0, used_bytes=0, deliveries=7)
    )
    session.commit()
    result = runner.invoke(args=["jobs", "run", "daily-stats", "--json"])
    assert result.exit_code == 0, result.output
    row = session.get(DailyStat, today)
    session.refresh(row)
    assert (row.mailboxes, row.trials) == (1, 0)
    assert auth.authenticate_mailbox(session, "a@example.test", "wrong password") is None
    assert auth.authenticate_mailbox(session, "nobody@example.test", "x") is None
    daily_stats.count("deliveries", 3)

    page = text_of(logged_in.get("/admin/"))
    assert 'id="charts"' in page
    for key in ("storage", "mailboxes", "trials", "deliveries", "failed-logins"):
        assert f'aria-labelledby="chart-{key}-title" id="chart-{key}">' in page
    deliveries = re.search(r'data-key="deliveries">(.*?)</figure>', page, re.S).group(1)
    assert '<strong class="chart-latest">3</strong>' in deliveries
    assert f'<td>{(today - timedelta(days=3)).isoformat()}</td><td class="num">7</td>' in deliveries
    assert deliveries.count('<rect class="chart-bar"') == 2
    failed = re.search(r'data-key="failed-logins">(.*?)</figure>', page, re.S).group(1)
    assert '<strong class="chart-latest">2</strong>' in failed
    mailboxes = re.search(r'data-key="mailboxes">(.*?)</figure>', page, re.S).group(1)
    assert '<polyline class="chart-line"' in mailboxes or '<circle class="chart-dot"' in mailboxes
    assert "<script" not in page


def test_domain_admins_see_no_installation_charts(app, client: FlaskClient, session: Session):
    from tests.conftest import login, make_admin

    domain = make_domain(session)
    make_admin(session, "dom@example.test", superadmin=False, domains=[domain])
    assert login(client, "dom@example.test").status_code == 302
    assert 'id="charts"' not in text_of(client.get("/admin/"))
