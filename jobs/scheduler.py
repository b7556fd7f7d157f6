"""The scheduler: every job in JOBS on cron times from settings, run by one process at a time.

Exactly one scheduler per installation runs jobs: it holds a lease in the database
(`scheduler_lease`) and renews it; another `provider serve` waits as a standby and takes over
once the lease has expired. The holder runs APScheduler with its jobs kept in the database
(SQLAlchemyJobStore), so a run missed while no scheduler was up is run once at start
(coalesced, within JOB_MISFIRE_GRACE_SECONDS). Every run, scheduled or from
`provider jobs run`, is recorded in `job_runs` (start, end, outcome, summary).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from flask import Flask
from sqlalchemy import case, create_engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from provider.extensions import db
from provider.models import JobRun, RunOutcome, SchedulerLease
from provider.services import audit, clock
from provider.services.audit import Actor

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
JOBSTORE_TABLE = "apscheduler_jobs"


@dataclass(frozen=True)
class Job:
    """A named job, its body (takes the app, returns a summary) and the setting with its cron."""

    name: str
    run: Callable[[Flask], object]
    cron_setting: str
    description: str

    def cron(self, app: Flask) -> str | None:
        """The job's cron expression (minute hour day month weekday, UTC); None: not scheduled."""
        return str(app.config.get(self.cron_setting) or "").strip() or None


def _registry() -> list[Job]:
    from jobs.backup import backup, backup_verify
    from jobs.outbound import outbound_cleanup
    from jobs.quota import quota_recount
    from jobs.sieve import sieve_vacation_window
    from jobs.stats import record_daily_stats
    from jobs.trial import trial_lifecycle

    return [
        Job(
            "backup",
            backup,
            "JOB_BACKUP_CRON",
            "Snapshot every IMAP mailbox, then drop snapshots past the retention",
        ),
        Job(
            "backup-verify",
            backup_verify,
            "JOB_BACKUP_VERIFY_CRON",
            "Re-read every backup object and manifest; name what is damaged or missing",
        ),
        Job(
            "quota-recount",
            quota_recount,
            "JOB_QUOTA_RECOUNT_CRON",
            "Recount mailbox usage from disk, repair drift, clean old tmp/ files",
        ),
        Job(
            "trial-lifecycle",
            trial_lifecycle,
            "JOB_TRIAL_LIFECYCLE_CRON",
            "Trial reminders, expiry, and deletion after the grace period",
        ),
        Job(
            "outbound-cleanup",
            outbound_cleanup,
            "JOB_OUTBOUND_CLEANUP_CRON",
            "Delete finished queue messages past OUTBOUND_KEEP_DAYS and old sending counts",
        ),
        Job(
            "sieve-vacation-window",
            sieve_vacation_window,
            "JOB_SIEVE_VACATION_WINDOW_CRON",
            "Switch rule-editor away replies on/off as their first and last days pass",
        ),
        Job(
            "daily-stats",
            record_daily_stats,
            "JOB_DAILY_STATS_CRON",
            "Record today's mailboxes, trials and storage for the dashboard's charts",
        ),
    ]


# Every scheduled job, by name; `provider jobs run NAME` runs exactly these functions.
JOBS: list[Job] = _registry()


def get_job(name: str) -> Job | None:
    return next((job for job in JOBS if job.name == name), None)


def trigger_for(cron: str) -> CronTrigger:
    """A UTC cron trigger; ValueError with a readable message when the expression is wrong."""
    return CronTrigger.from_crontab(cron, timezone="UTC")


def next_run(cron: str | None, after: datetime) -> datetime | None:
    """When a job with this cron runs next after `after` (None when it is not scheduled)."""
    if cron is None:
        return None
    fire: datetime | None = trigger_for(cron).get_next_fire_time(None, after)
    return fire


# --- runs -------------------------------------------------------------------------------------


def run_recorded(
    app: Flask, job: Job, started_by: str, actor: Actor | None = None
) -> tuple[JobRun, object]:
    """Run `job` once as of the clock's now, recording it in job_runs (with who asked, for a
    run by hand); its summary, or the exception's one-line text in the record when it fails
    (the failure is not raised)."""
    with app.app_context():
        record = JobRun(
            job=job.name,
            started_by=started_by,
            actor=actor.name if actor else None,
            as_of=clock.now(),
            started_at=datetime.now(UTC),
            outcome=RunOutcome.RUNNING.value,
        )
        db.session.add(record)
        db.session.commit()
        run_id = record.id
        db.session.remove()
    summary: object = None
    error: str | None = None
    try:
        summary = job.run(app)
    except Exception as exc:
        log.exception("job %s failed", job.name)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        error = _failure_in(summary)
    with app.app_context():
        record = db.session.get(JobRun, run_id)
        assert record is not None
        record.finished_at = datetime.now(UTC)
        record.outcome = RunOutcome.FAILED.value if error else RunOutcome.OK.value
        record.summary = summary if isinstance(summary, dict) else None
        record.error = error
        db.session.commit()
        db.session.refresh(record)
        db.session.expunge(record)
        db.session.remove()
    return record, summary


def _failure_in(summary: object) -> str | None:
    """A job that finished but says part of it failed (`"ok": false`, or `"failed": n`)."""
    if not isinstance(summary, dict):
        return None
    failed = summary.get("failed")
    if isinstance(failed, int) and failed > 0:
        return f"{failed} failed (see the summary)"
    if summary.get("ok") is False:
        return "problems found (see the summary)"
    return None


# The app the scheduled runs use: APScheduler stores jobs by reference ("module:function" and
# plain arguments), so the one app of this process is found here.
_APP: Flask | None = None


def _run_scheduled(name: str) -> None:
    job = get_job(name)
    if _APP is None or job is None:
        log.warning("scheduled job %s has nothing to run", name)
        return
    run_recorded(_APP, job, "scheduler")


# --- the lease --------------------------------------------------------------------------------


def try_lease(holder: str, seconds: float, moment: datetime | None = None) -> bool:
    """Take or renew the installation's scheduler lease for `holder`; False while someone else
    holds an unexpired one. One conditional UPDATE, so two processes never both win."""
    moment = moment or datetime.now(UTC)
    expires = moment + timedelta(seconds=seconds)
    session = db.session
    # A renewal keeps `since`; a new holder starts it afresh.
    since = case(
        (SchedulerLease.holder == holder, func.coalesce(SchedulerLease.since, moment)),
        else_=moment,
    )
    taken = session.execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == LEASE_NAME)
        .where((SchedulerLease.holder == holder) | (SchedulerLease.expires_at < moment))
        .values(holder=holder, expires_at=expires, since=since)
    ).rowcount
    if taken == 0 and session.get(SchedulerLease, LEASE_NAME) is None:
        try:
            session.execute(
                insert(SchedulerLease).values(
                    name=LEASE_NAME, holder=holder, expires_at=expires, since=moment
                )
            )
            taken = 1
        except IntegrityError:  # another process inserted it first
            session.rollback()
            return False
    session.commit()
    return bool(taken)


def release_lease(holder: str) -> None:
    db.session.execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == LEASE_NAME, SchedulerLease.holder == holder)
        .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
    )
    db.session.commit()


def lease_holder() -> str | None:
    lease = db.session.get(SchedulerLease, LEASE_NAME)
    if lease is None or lease.expires_at < datetime.now(UTC):
        return None
    return lease.holder


@dataclass(frozen=True)
class LeaseInfo:
    """The scheduler lease in words' terms: which process on which host, since when."""

    holder: str
    host: str
    pid: int | None
    since: datetime | None
    expires_at: datetime


def lease_info() -> LeaseInfo | None:
    """Who runs the jobs now (None when no scheduler holds an unexpired lease). The holder is
    "host:pid:random" as SingleScheduler names itself."""
    lease = db.session.get(SchedulerLease, LEASE_NAME)
    if lease is None or lease.expires_at < datetime.now(UTC):
        return None
    host, _, rest = lease.holder.rpartition(":")[0].rpartition(":")
    host, pid_text = (host, rest) if host else (lease.holder, "")
    return LeaseInfo(
        holder=lease.holder,
        host=host,
        pid=int(pid_text) if pid_text.isdigit() else None,
        since=lease.since,
        expires_at=lease.expires_at,
    )


def run_now(app: Flask, job: Job, started_by: str, actor: Actor) -> tuple[JobRun, object]:
    """Run a job once on request (`provider jobs run`, the admin panel's "Run now"): recorded in
    job_runs like a scheduled run, and audited as `job.run` with its outcome."""
    run, summary = run_recorded(app, job, started_by, actor)
    with app.app_context():
        try:
            audit.record(
                db.session,
                actor,
                "job.run",
                job.name,
                after={
                    "run_id": run.id,
                    "as_of": run.as_of.isoformat(),
                    "outcome": run.outcome,
                    "error": run.error,
                },
            )
            db.session.commit()
        finally:
            db.session.remove()
    return run, summary


# --- the scheduler ----------------------------------------------------------------------------


class SingleScheduler:
    """Runs JOBS while it holds the lease; otherwise waits as a standby and keeps trying."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = float(app.config["SCHEDULER_LEASE_SECONDS"])
        self.grace = int(float(app.config["JOB_MISFIRE_GRACE_SECONDS"]))
        self.scheduler: BackgroundScheduler | None = None
        self._store_engine: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for job in JOBS:  # a wrong cron is an error at start, not at 2 a.m.
            cron = job.cron(app)
            if cron is not None:
                try:
                    trigger_for(cron)
                except ValueError as exc:
                    raise ValueError(f"{job.cron_setting}: {exc}") from None

    @property
    def active(self) -> bool:
        """Whether this process holds the lease and runs the jobs."""
        return self.scheduler is not None

    def start(self) -> None:
        self.tick()
        self._thread = threading.Thread(target=self._keep_lease, name="scheduler", daemon=True)
        self._thread.start()

    def tick(self) -> None:
        """Renew or take the lease, and start or stop running jobs to match."""
        with self.app.app_context():
            try:
                held = try_lease(self.holder, self.lease_seconds)
            finally:
                db.session.remove()
        if held and self.scheduler is None:
            self._begin()
        elif not held and self.scheduler is not None:
            log.warning("scheduler lease lost to another process; standing by")
            self._end()

    def _keep_lease(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.tick()
            except Exception:
                log.exception("scheduler lease renewal failed")

    def _begin(self) -> None:
        global _APP
        _APP = self.app
        self._store_engine = _engine(self.app)
        scheduler = BackgroundScheduler(
            timezone="UTC",
            jobstores={
                "default": SQLAlchemyJobStore(engine=self._store_engine, tablename=JOBSTORE_TABLE)
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": self.grace},
        )
        # Paused first: the jobs already in the store keep their next run time, so a run that
        # fell due while no scheduler was up is run (once) when it resumes.
        scheduler.start(paused=True)
        wanted = {job.name: job.cron(self.app) for job in JOBS}
        for stored in scheduler.get_jobs():
            if wanted.get(stored.id) is None:
                stored.remove()
        for job in JOBS:
            cron = wanted[job.name]
            if cron is None:
                continue
            trigger = trigger_for(cron)
            stored = scheduler.get_job(job.name)
            if stored is None:
                scheduler.add_job(
                    "jobs.scheduler:_run_scheduled",
                    trigger,
                    args=[job.name],
                    id=job.name,
                    name=job.description,
                )
            elif str(stored.trigger) != str(trigger):
                scheduler.reschedule_job(job.name, trigger=trigger)
        scheduler.resume()
        self.scheduler = scheduler
        log.info("scheduler running (%s)", self.holder)

    def _end(self, wait: bool = True) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=wait)  # by default a job in progress finishes first
            self.scheduler = None
        # APScheduler's loop may look at the store once more after disposing its engine: only
        # now, with its thread gone, are the connections really closed.
        if self._store_engine is not None:
            self._store_engine.dispose()
            self._store_engine = None

    def get_jobs(self) -> list[Any]:
        return self.scheduler.get_jobs() if self.scheduler is not None else []

    def shutdown(self, wait: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._end(wait)
        with self.app.app_context():
            try:
                release_lease(self.holder)
            finally:
                db.session.remove()


def _engine(app: Flask) -> Any:
    """APScheduler's own engine on the same database (the job store disposes it at shutdown,
    so it must not be the app's)."""
    with app.app_context():
        return create_engine(db.engine.url, pool_size=2, max_overflow=2, pool_pre_ping=True)


def stored_next_runs(app: Flask) -> dict[str, datetime]:
    """Next run times as the running scheduler keeps them in the database (empty before one
    ever ran)."""
    from sqlalchemy import inspect

    with app.app_context():
        try:
            if not inspect(db.engine).has_table(JOBSTORE_TABLE):
                return {}
            store = SQLAlchemyJobStore(engine=_engine(app), tablename=JOBSTORE_TABLE)
            store.start(None, "default")  # type: ignore[arg-type]
            try:
                return {job.id: job.next_run_time for job in store.get_all_jobs()}
            finally:
                store.shutdown()
        finally:
            db.session.remove()


def last_runs(names: list[str]) -> dict[str, JobRun]:
    """Each job's latest recorded run (inside an app context)."""
    latest: dict[str, JobRun] = {}
    for name in names:
        run = db.session.scalar(
            select(JobRun).where(JobRun.job == name).order_by(JobRun.started_at.desc()).limit(1)
        )
        if run is not None:
            latest[name] = run
    return latest


def build_scheduler(app: Flask) -> SingleScheduler:
    """The scheduler for `provider serve`; the caller starts and shuts it down."""
    return SingleScheduler(app)
