"""The audit trail: every administrative change, with who, from where, and before/after."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from provider.models import AuditEvent
from provider.services.clock import now


@dataclass(frozen=True)
class Actor:
    """Who is making a change: `admin:alice@example.com`, `cli`, `signup`, `job:trial-lifecycle`."""

    name: str
    remote_addr: str | None = None


CLI_ACTOR = Actor("cli")
# The length of audit_events.actor (and job_runs.actor).
MAX_ACTOR_LENGTH = 320


def actor_name(name: str) -> str:
    """`name` cut to fit the actor columns (a 100-character token name and a 320-character
    e-mail make a longer one: PostgreSQL would refuse the write it records)."""
    return name if len(name) <= MAX_ACTOR_LENGTH else name[: MAX_ACTOR_LENGTH - 1] + "…"


def record(
    session: Session,
    actor: Actor,
    action: str,
    target: str,
    *,
    domain: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the session; it commits (or rolls back) with the change it records."""
    event = AuditEvent(
        occurred_at=now(),
        actor=actor.name,
        action=action,
        target=target,
        domain=domain,
        before=before,
        after=after,
        remote_addr=actor.remote_addr,
    )
    session.add(event)
    return event


def query_events(
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    domains: set[str] | None = None,
) -> Select[tuple[AuditEvent]]:
    """Select events newest first, filtered; `domains` limits to those domains (domain admins)."""
    query = select(AuditEvent).order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
    if actor:
        query = query.where(AuditEvent.actor.contains(actor.strip().lower(), autoescape=True))
    if action:
        query = query.where(AuditEvent.action.startswith(action.strip(), autoescape=True))
    if target:
        query = query.where(AuditEvent.target.contains(target.strip().lower(), autoescape=True))
    if since:
        query = query.where(AuditEvent.occurred_at >= since)
    if until:
        query = query.where(AuditEvent.occurred_at < until)
    if domains is not None:
        query = query.where(AuditEvent.domain.in_(sorted(domains)))
    return query
