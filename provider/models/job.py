"""Scheduled jobs: the record of every run, and the lease that lets one scheduler run them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    Float,
    LargeBinary,
    String,
    Table,
    Text,
    Unicode,
)
from sqlalchemy.orm import Mapped, mapped_column

from provider.extensions import db
from provider.models.types import UTCDateTime


class RunOutcome(enum.StrEnum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"


class JobRun(db.Model):  # type: ignore[name-defined,misc]
    """One run of a scheduled job (by the scheduler or `provider jobs run`)."""

    __tablename__ = "job_runs"
    __table_args__ = (
        CheckConstraint("outcome IN ('running', 'ok', 'failed')", name="outcome_known"),
        CheckConstraint(
            "started_by IN ('scheduler', 'command', 'admin', 'api')", name="started_by_known"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(64), index=True)
    # scheduler, command (`provider jobs run`), admin (the panel's "Run now"), api (/api/v1).
    started_by: Mapped[str] = mapped_column(String(16))
    # Who asked for a run by hand, as the audit names them (`admin:alice@…`, `cli`,
    # `token:billing (alice@…)`); None for the scheduler's runs and for runs before 0020.
    actor: Mapped[str | None] = mapped_column(String(320))
    # The job's own time ("now" as the job saw it: --now moves it), and the real start and end.
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(16), default=RunOutcome.RUNNING.value)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "started_by": self.started_by,
            "actor": self.actor,
            "as_of": self.as_of.isoformat(),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "outcome": self.outcome,
            "summary": self.summary,
            "error": self.error,
        }


class SchedulerLease(db.Model):  # type: ignore[name-defined,misc]
    """Who runs the scheduled jobs of this installation, until when (renewed while alive)."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # When this holder took the lease (renewals keep it): "runs jobs since …" on /admin/jobs.
    since: Mapped[datetime | None] = mapped_column(UTCDateTime())


# APScheduler's own job store (SQLAlchemyJobStore, the same columns): declared here so that the
# migrations create it and the schema stays one thing.
apscheduler_jobs = Table(
    "apscheduler_jobs",
    db.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)
