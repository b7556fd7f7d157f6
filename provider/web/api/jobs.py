"""/api/v1/jobs: the scheduled jobs, their runs, and "run now" (superadmin tokens, as in the
panel)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from marshmallow import Schema, fields
from sqlalchemy import select

from provider.errors import NotFound
from provider.extensions import db
from provider.models import JobRun
from provider.services import records, reports
from provider.web.api.core import (
    BODY_PROBLEMS,
    PageArgs,
    PageSchema,
    actor,
    page_of,
    problems,
    require_superadmin,
    resource,
)

bp = resource("jobs", "Scheduled jobs and their runs (superadmin tokens only)")


class JobRunSchema(Schema):
    job = fields.String(required=True)
    started_by = fields.String(
        required=True,
        metadata={"description": "scheduler, command, admin (the panel) or api (a token)"},
    )
    actor = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Who asked for the run, as the audit names them: "
            "`token:NAME (admin e-mail)`, `admin:e-mail`, `cli`; null for the scheduler's"
        },
    )
    as_of = fields.String(required=True)
    started_at = fields.String(required=True)
    finished_at = fields.String(required=True, allow_none=True)
    outcome = fields.String(required=True, allow_none=True)
    summary = fields.Raw(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)


class JobSchema(Schema):
    name = fields.String(required=True)
    cron = fields.String(required=True, allow_none=True)
    next_run = fields.String(required=True, allow_none=True)
    last_run = fields.Nested(JobRunSchema, required=True, allow_none=True)
    description = fields.String(required=True)


class JobRunPageSchema(PageSchema):
    items = fields.List(fields.Nested(JobRunSchema), required=True)


def _job(name: str) -> Any:
    from jobs.scheduler import get_job

    job = get_job(name)
    if job is None:
        raise NotFound(f"no job called {name[:40]!r}", "name")
    return job


@bp.get("")
@bp.response(200, JobSchema(many=True))
@problems(bp)
def list_jobs() -> list[dict[str, Any]]:
    """Every scheduled job: cron (UTC), next run, last run."""
    require_superadmin()
    return records.job_records(current_app._get_current_object())  # type: ignore[attr-defined]


@bp.get("/<string:name>/runs")
@bp.arguments(PageArgs, location="query")
@bp.response(200, JobRunPageSchema)
@problems(bp, 404, 422)
def job_runs(args: dict[str, Any], name: str) -> dict[str, Any]:
    """A job's recorded runs, newest first."""
    require_superadmin()
    job = _job(name)
    query = (
        select(JobRun)
        .where(JobRun.job == job.name)
        .order_by(JobRun.started_at.desc(), JobRun.id.desc())
    )
    page = reports.paginate(db.session, query, args["page"], args["per_page"])
    return page_of(page, [run.to_dict() for run in page.items])


@bp.post("/<string:name>/run")
@bp.response(200, JobRunSchema)
@problems(bp, 404, *BODY_PROBLEMS)
def run_job(name: str) -> dict[str, Any]:
    """Run the job once now, exactly as `provider jobs run NAME` does (recorded, audited)."""
    from jobs.scheduler import run_now

    require_superadmin()
    job = _job(name)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    run, _ = run_now(app, job, "api", actor())
    return run.to_dict()  # type: ignore[no-any-return]
