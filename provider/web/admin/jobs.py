"""Scheduled jobs: when each runs next, and the record of recent runs (superadmins only)."""

from __future__ import annotations

from typing import Any

from flask import current_app, render_template
from sqlalchemy import select

from provider.extensions import db
from provider.models import JobRun
from provider.services import clock
from provider.web.admin import bp
from provider.web.admin.access import superadmin_required

RECENT_RUNS = 50


@bp.get("/jobs")
@superadmin_required
def jobs() -> str:
    from jobs.scheduler import JOBS, last_runs, lease_holder, next_run, stored_next_runs

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
    return render_template(
        "admin/jobs.html", rows=rows, runs=runs, holder=lease_holder(), limit=RECENT_RUNS
    )
