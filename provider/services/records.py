"""Resource records shared by the CLI's --json output and /api/v1: one shape, one function."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import Domain, Mailbox
from provider.services import dns_records, sending
from provider.services.clock import now


def domain_record(session: Session, domain: Domain) -> dict[str, Any]:
    """A domain with how many mailboxes it holds (`domain list|add|set --json`, the API)."""
    record = domain.to_dict()
    record["mailboxes"] = session.scalar(select(func.count()).where(Mailbox.domain_id == domain.id))
    return record


def mailbox_record(session: Session, mailbox: Mailbox) -> dict[str, Any]:
    """What `mailbox show` and `mailbox set` print: the mailbox and its sending."""
    return {**mailbox.to_dict(), "sending": sending.overview(session, mailbox).to_dict()}


def mailbox_summary(mailbox: Mailbox) -> dict[str, Any]:
    """A mailbox in a list (`mailbox list --json`, the API's list): no sending figures."""
    return mailbox.to_dict()


def job_records(app: Flask) -> list[dict[str, Any]]:
    """The scheduled jobs: cron (UTC), next run and last run (`jobs list --json`, the API)."""
    # Imported here: the scheduler wiring imports the services.
    from jobs.scheduler import JOBS, last_runs, next_run, stored_next_runs

    stored = stored_next_runs(app)
    latest = last_runs([job.name for job in JOBS])
    found = []
    for job in JOBS:
        cron = job.cron(app)
        upcoming = stored.get(job.name) if cron else None
        upcoming = upcoming or next_run(cron, now())
        last = latest.get(job.name)
        found.append(
            {
                "name": job.name,
                "cron": cron,
                "next_run": upcoming.isoformat() if upcoming else None,
                "last_run": last.to_dict() if last else None,
                "description": job.description,
            }
        )
    return found


def dns_record(record: dns_records.Record) -> dict[str, Any]:
    """One DNS record to publish, with its zone-file line (`domain dns --json`, the API)."""
    return {**asdict(record), "zone_line": record.zone_line}
