"""Scheduled jobs: when each runs next, who runs them, recent runs, and "Run now" (superadmins)."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.wrappers import Response

from provider.extensions import db
from provider.models import JobRun
from provider.services import clock
from provider.web.admin import bp
from provider.web.admin.access import actor, superadmin_required

RECENT_RUNS = 50


class RunNowForm(FlaskForm):
    """The Run now button: nothing but the CSRF token (the job is in the URL)."""


@bp.get("/jobs")
@superadmin_required
def jobs() -> str:
    from jobs.scheduler import JOBS, last_runs, lease_info, next_run, stored_next_runs

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    stored = stored_next_runs(app)
    latest = last_runs([job.name for job in JOBS])
    rows: list[dict[str, Any]] = []
    for job in JOBS:
        cron = job.cron(app)
        rows.append(
            {
                "job": job,
                "cron": cron,
                "next_run": (stored.get(job.name) if cron else None) or next_run(cron, clock.now()),
                "last": latest.get(job.name),
            }
        )
    runs = db.session.scalars(
        select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(RECENT_RUNS)
    ).all()
    lease_seconds = float(app.config["SCHEDULER_LEASE_SECONDS"])
    return render_template(
        "admin/jobs.html",
        rows=rows,
        runs=runs,
        lease=lease_info(),
        lease_seconds=int(lease_seconds),
        renew_seconds=int(lease_seconds / 3),
        run_form=RunNowForm(formdata=None),
        limit=RECENT_RUNS,
    )


@bp.post("/jobs/<name>/run")
@superadmin_required
def run_job(name: str) -> Response:
    """Run one job now, exactly as `provider jobs run NAME` does; recorded and audited."""
    from jobs.scheduler import get_job, run_now

    job = get_job(name)
    if job is None:
        abort(404)
    if not RunNowForm().validate_on_submit():
        flash("The form expired: reload the page and try again.", "error")
        return redirect(url_for("admin.jobs"))  # type: ignore[return-value]
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    run, _ = run_now(app, job, "admin", actor())
    took = (run.finished_at - run.started_at).total_seconds() if run.finished_at else 0.0
    if run.error:
        flash(f"{job.name} failed after {took:.1f} s: {run.error}", "error")
    else:
        flash(f"{job.name} ran in {took:.1f} s; its summary is under Recent runs.", "success")
    return redirect(url_for("admin.jobs", _anchor="runs"))  # type: ignore[return-value]
