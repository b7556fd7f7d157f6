"""The admin panel's jobs page: schedule, next runs and the record of runs (superadmins)."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.conftest import login, make_admin, make_domain


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
