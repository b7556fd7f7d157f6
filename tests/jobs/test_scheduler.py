"""The scheduler: one runner per installation (a database lease), runs recorded, missed runs
made up once at start, cron times from settings."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy import select, update

import jobs.scheduler as scheduling
from provider.extensions import db
from provider.models import JobRun, SchedulerLease
from provider.models.job import apscheduler_jobs
from tests.conftest import wait_until


@pytest.fixture
def calls(app, monkeypatch):
    """One test job, "probe", at 02:00 daily; the list of times it ran."""
    ran: list[datetime] = []

    def probe(app_: object) -> dict[str, int]:
        ran.append(datetime.now(UTC))
        return {"calls": len(ran)}

    job = scheduling.Job("probe", probe, "JOB_PROBE_CRON", "a test job")
    monkeypatch.setattr(scheduling, "JOBS", [job])
    app.config["JOB_PROBE_CRON"] = "0 2 * * *"
    return ran


def schedulers(app, count: int) -> list[scheduling.SingleScheduler]:
    return [scheduling.SingleScheduler(app) for _ in range(count)]


def test_only_one_scheduler_runs_and_another_takes_over_when_it_stops(app, calls):
    first, second = schedulers(app, 2)
    first.tick()
    second.tick()
    assert first.active and not second.active
    assert [job.id for job in first.get_jobs()] == ["probe"]
    first.shutdown()  # gives the lease back
    second.tick()
    assert second.active
    second.shutdown()


def test_a_dead_schedulers_lease_expires_and_is_taken_over(app, calls):
    first, second = schedulers(app, 2)
    first.tick()
    # The holder died without giving the lease back: it simply stops being renewed.
    expire_lease(app)
    second.tick()
    assert second.active
    first.tick()  # the old holder notices and stands by: never two at once
    assert not first.active
    first.shutdown()
    second.shutdown()


def test_a_run_missed_while_down_runs_once_at_start(app, calls, session):
    first = scheduling.SingleScheduler(app)
    first.tick()
    first.shutdown()
    # Down across 02:00: the stored next run is an hour ago (within the misfire grace).
    move_stored_next_run("probe", datetime.now(UTC) - timedelta(hours=1))
    assert session.scalar(select(apscheduler_jobs.c.next_run_time)) < time.time()
    second = scheduling.SingleScheduler(app)
    second.tick()
    try:
        assert wait_until(lambda: len(calls) == 1, timeout=10)
        assert wait_until(lambda: _outcomes(session) == ["ok"], timeout=10)
        [stored] = second.get_jobs()
        assert stored.next_run_time > datetime.now(UTC)  # and the next one is tomorrow
    finally:
        second.shutdown()
    assert len(calls) == 1
    run = session.scalar(select(JobRun))
    assert run.job == "probe" and run.started_by == "scheduler" and run.summary == {"calls": 1}


def expire_lease(app) -> None:
    with app.app_context():
        db.session.execute(
            update(SchedulerLease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        db.session.commit()
        db.session.remove()


def move_stored_next_run(job_id: str, moment: datetime) -> None:
    """What a scheduler that was down finds in the store: a next run in the past."""
    store = SQLAlchemyJobStore(url=db.engine.url, tablename=scheduling.JOBSTORE_TABLE)
    store.start(None, "default")  # type: ignore[arg-type]
    try:
        job = store.lookup_job(job_id)
        assert job is not None
        job.next_run_time = moment
        store.update_job(job)
    finally:
        store.shutdown()


def _outcomes(session) -> list[str]:
    session.expire_all()
    return [run.outcome for run in session.scalars(select(JobRun))]


def test_changing_the_cron_setting_reschedules_the_stored_job(app, calls):
    first = scheduling.SingleScheduler(app)
    first.tick()
    first.shutdown()
    app.config["JOB_PROBE_CRON"] = "15 4 * * *"
    second = scheduling.SingleScheduler(app)
    second.tick()
    try:
        [stored] = second.get_jobs()
        assert (stored.next_run_time.hour, stored.next_run_time.minute) == (4, 15)
    finally:
        second.shutdown()


def test_an_empty_cron_unschedules_and_a_bad_one_is_refused_at_start(app, calls):
    app.config["JOB_PROBE_CRON"] = ""
    idle = scheduling.SingleScheduler(app)
    idle.tick()
    assert idle.active and idle.get_jobs() == []
    idle.shutdown()
    app.config["JOB_PROBE_CRON"] = "61 2 * * *"
    with pytest.raises(ValueError, match="JOB_PROBE_CRON"):
        scheduling.SingleScheduler(app)


def test_a_failing_job_is_recorded_and_the_command_exits_1(app, runner, session, monkeypatch):
    def broken(app_: object) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    job = scheduling.Job("broken", broken, "JOB_BROKEN_CRON", "fails")
    monkeypatch.setattr(scheduling, "JOBS", [job])
    result = runner.invoke(args=["jobs", "run", "broken"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: broken failed: RuntimeError: disk on fire"
    run = session.scalar(select(JobRun))
    assert (run.outcome, run.started_by, run.error) == (
        "failed",
        "command",
        "RuntimeError: disk on fire",
    )
    assert run.finished_at is not None


def test_jobs_list_shows_next_and_last_run(app, runner, calls):
    assert (
        runner.invoke(args=["jobs", "run", "probe", "--now", "2030-05-01T10:00:00"]).exit_code == 0
    )
    [record] = json.loads(runner.invoke(args=["jobs", "list", "--json"]).output)
    assert record["name"] == "probe" and record["cron"] == "0 2 * * *"
    assert record["next_run"].endswith("02:00:00+00:00")
    assert record["last_run"]["outcome"] == "ok"
    assert record["last_run"]["as_of"] == "2030-05-01T10:00:00+00:00"  # the --now it ran as


def test_only_one_of_two_racing_schedulers_wins_the_lease(app):
    with app.app_context():
        won = [scheduling.try_lease(f"holder-{n}", 60) for n in range(2)]
        db.session.remove()
    assert won == [True, False]


def test_a_job_that_reports_failures_is_recorded_as_failed(app, session):
    job = scheduling.Job("partial", lambda app_: {"mailboxes": 3, "failed": 2}, "X_CRON", "")
    record, summary = scheduling.run_recorded(app, job, "scheduler")
    assert record.outcome == "failed" and record.error == "2 failed (see the summary)"
    assert record.summary == summary == {"mailboxes": 3, "failed": 2}


def test_the_issue_jobs_are_scheduled_by_default(runner):
    listed = {
        r["name"]: r["cron"]
        for r in json.loads(runner.invoke(args=["jobs", "list", "--json"]).output)
    }
    assert listed == {
        "backup": "0 2 * * *",
        "backup-verify": "0 4 * * 0",
        "quota-recount": "30 3 * * *",
        "trial-lifecycle": "0 * * * *",
        "outbound-cleanup": "15 * * * *",
        "sieve-vacation-window": "5 * * * *",
        "daily-stats": "55 * * * *",
    }
