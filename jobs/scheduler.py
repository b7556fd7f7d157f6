"""Scheduler wiring: registers every job in JOBS on an APScheduler BackgroundScheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from flask import Flask


@dataclass(frozen=True)
class Job:
    """A named job, its body (takes the app, returns a summary) and when it runs (cron, UTC)."""

    name: str
    run: Callable[[Flask], object]
    cron: str
    description: str


def _registry() -> list[Job]:
    from jobs.quota import quota_recount

    return [
        Job(
            "quota-recount",
            quota_recount,
            "30 3 * * *",
            "Recount mailbox usage from disk, repair drift, clean old tmp/ files",
        ),
    ]


# Every scheduled job, by name; `provider jobs run NAME` runs exactly these functions.
JOBS: list[Job] = _registry()


def get_job(name: str) -> Job | None:
    return next((job for job in JOBS if job.name == name), None)


def build_scheduler(app: Flask) -> BackgroundScheduler:
    """A scheduler with every job registered; the caller starts and shuts it down."""
    scheduler = BackgroundScheduler(timezone="UTC")
    for job in JOBS:
        scheduler.add_job(
            job.run,
            CronTrigger.from_crontab(job.cron, timezone="UTC"),
            args=[app],
            id=job.name,
            name=job.description,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
        )
    return scheduler
