"""Scheduler wiring: registers every job in JOBS on an APScheduler BackgroundScheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from flask import Flask


@dataclass(frozen=True)
class Job:
    """A named job, its body (takes the app) and when it runs (a cron expression, UTC)."""

    name: str
    run: Callable[[Flask], object]
    cron: str
    description: str


# Later parts (backups, trials, quota recount) add their jobs here.
JOBS: list[Job] = []


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
