"""The admin panel's jobs page: schedule, next runs and the record of runs (superadmins)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.conftest import ADMIN_EMAIL, login, make_admin, make_domain


def test_jobs_page_shows_schedule_and_recorded_runs(logged_in: FlaskClient, runner) -> None:
    assert runner.invoke(args=["jobs", "run", "quota-recount"]).exit_code == 0
    page = logged_in.get("/admin/jobs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for name in ("backup", "backup-verify", "quota-recount"):
        assert f"<code>{name}</code>" in html
    assert "<code>0 2 * * *</code>" in html  # the backup's default time
    assert "No scheduler is running" in html
    assert html.count("badge-ok") == 2  # quota-recount's last run, and its row in the list
    assert 'href="/admin/jobs" aria-current="page"' in html


def test_jobs_page_is_for_superadmins_only(client: FlaskClient, session: Session) -> None:
    make_admin(session, "dom@example.com", superadmin=False, domains=[make_domain(session)])
    assert login(client, "dom@example.com").status_code == 302
    assert client.get("/admin/jobs").status_code == 403
    assert 'href="/admin/jobs"' not in client.get("/admin/").get_data(as_text=True)


def test_run_now_runs_the_job_as_the_command_does_records_and_audits_it(
    logged_in: FlaskClient, session: Session
) -> None:
    from provider.models import AuditEvent, JobRun

    html = logged_in.get("/admin/jobs").get_data(as_text=True)
    for name in ("backup", "backup-verify", "quota-recount", "trial-lifecycle"):
        assert f'action="/admin/jobs/{name}/run"' in html
    response = logged_in.post("/admin/jobs/quota-recount/run")
    assert response.status_code == 302 and response.location.endswith("/admin/jobs#runs")
    session.expire_all()
    [run] = session.scalars(select(JobRun)).all()
    assert (run.job, run.started_by, run.outcome) == ("quota-recount", "admin", "ok")
    assert run.actor == f"admin:{ADMIN_EMAIL}"
    assert isinstance(run.summary, dict)
    [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "job.run")).all()
    assert event.actor.startswith("admin:") and event.target == "quota-recount"
    assert event.after["run_id"] == run.id and event.after["outcome"] == "ok"
    page = logged_in.get("/admin/jobs").get_data(as_text=True)
    assert "quota-recount ran in" in page
    assert f'<span class="muted small run-actor">admin:{ADMIN_EMAIL}</span>' in page
    assert logged_in.post("/admin/jobs/no-such-job/run").status_code == 404


def test_the_command_is_audited_the_same_way(runner, session: Session) -> None:
    from provider.models import AuditEvent, JobRun

    assert runner.invoke(args=["jobs", "run", "quota-recount"]).exit_code == 0
    [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "job.run")).all()
    assert event.actor == "cli" and event.target == "quota-recount"
    [run] = session.scalars(select(JobRun)).all()
    assert (run.started_by, run.actor) == ("command", "cli")


def test_run_now_is_for_superadmins_only(client: FlaskClient, session: Session) -> None:
    from provider.models import JobRun

    make_admin(session, "dom@example.com", superadmin=False, domains=[make_domain(session)])
    login(client, "dom@example.com")
    assert client.post("/admin/jobs/quota-recount/run").status_code == 403
    assert session.scalars(select(JobRun)).all() == []


@pytest.fixture
def csrf_on(app_config: dict) -> dict:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def test_run_now_needs_a_csrf_token(csrf_on: dict, client: FlaskClient, admin) -> None:
    from provider.models import JobRun
    from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
    from tests.web.timemachine_helpers import csrf_token

    token = csrf_token(client.get("/admin/login").get_data(as_text=True))
    client.post(
        "/admin/login",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token},
    )
    page = client.get("/admin/jobs").get_data(as_text=True)
    client.post("/admin/jobs/quota-recount/run")
    with client.application.app_context():
        from provider.extensions import db

        assert db.session.scalars(select(JobRun)).all() == []
        client.post("/admin/jobs/quota-recount/run", data={"csrf_token": csrf_token(page)})
        assert len(db.session.scalars(select(JobRun)).all()) == 1


def test_the_lease_line_says_which_process_holds_it_and_since_when(
    logged_in: FlaskClient, app
) -> None:
    from datetime import UTC, datetime, timedelta

    from jobs.scheduler import lease_info, try_lease

    taken = datetime.now(UTC) - timedelta(seconds=30)
    with app.app_context():
        assert try_lease("vm:28581:9ed25c0f", 600, taken)
        # A renewal by the same holder keeps the start; another holder cannot take it.
        assert try_lease("vm:28581:9ed25c0f", 600)
        assert not try_lease("other:1:x", 600)
        info = lease_info()
    assert info is not None and (info.host, info.pid) == ("vm", 28581)
    assert info.since is not None and abs((info.since - taken).total_seconds()) < 1
    html = logged_in.get("/admin/jobs").get_data(as_text=True)
    assert "runs in process <strong>28581</strong> on host <strong>vm</strong>" in html
    assert f"since {taken:%Y-%m-%d %H:%M}" in html
