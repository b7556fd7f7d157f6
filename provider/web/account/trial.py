"""The owner's view of a trial: days left, expiry and grace end, and upgrade requests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Mailbox, MailboxStatus, Plan
from provider.services import audit, trials
from provider.services.audit import Actor
from provider.services.clock import now

UPGRADE_REQUESTED = "trial.upgrade_requested"
DAY_SECONDS = 86400


@dataclass(frozen=True)
class TrialState:
    """What the overview tells a trial's owner; `days_left` counts a started day as a day."""

    expires_at: datetime
    days_left: int
    expired: bool
    grace_ends_at: datetime
    upgrade_requested_at: datetime | None


def _period_start(session: Session, mailbox: Mailbox) -> datetime:
    """Since when an upgrade request counts: this trial period of this very mailbox (an address
    deleted and signed up again must not inherit the old mailbox's request)."""
    start = mailbox.created_at
    trial = trials.current_trial(session, mailbox)
    if trial is not None and trial.started_at > start:
        start = trial.started_at
    return start


def upgrade_requested_at(session: Session, mailbox: Mailbox) -> datetime | None:
    """When the owner last asked for an upgrade in the current trial period (None: never)."""
    if mailbox.plan != Plan.TRIAL.value:
        return None
    return session.scalar(
        select(AuditEvent.occurred_at)
        .where(
            AuditEvent.action == UPGRADE_REQUESTED,
            AuditEvent.target == mailbox.address,
            AuditEvent.occurred_at >= _period_start(session, mailbox),
        )
        .order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
        .limit(1)
    )


def trial_state(session: Session, mailbox: Mailbox) -> TrialState | None:
    """None for a paid mailbox (or a trial without an end date)."""
    if mailbox.plan != Plan.TRIAL.value or mailbox.trial_expires_at is None:
        return None
    moment = now()
    expires = mailbox.trial_expires_at
    remaining = (expires - moment).total_seconds()
    # IMAP and POP3 refuse a trial by its date even before the lifecycle job marks it expired.
    expired = mailbox.status == MailboxStatus.EXPIRED.value or remaining <= 0
    return TrialState(
        expires_at=expires,
        days_left=0 if expired else math.ceil(remaining / DAY_SECONDS),
        expired=expired,
        grace_ends_at=expires + trials.grace_period(),
        upgrade_requested_at=upgrade_requested_at(session, mailbox),
    )


def request_upgrade(session: Session, mailbox: Mailbox, actor: Actor) -> bool:
    """Record the owner's wish to keep the mailbox (an admin converts it; nothing changes here).
    False when it is not a trial or was already requested in this trial period."""
    if mailbox.plan != Plan.TRIAL.value or upgrade_requested_at(session, mailbox) is not None:
        return False
    audit.record(
        session,
        actor,
        UPGRADE_REQUESTED,
        mailbox.address,
        domain=mailbox.domain.name,
        after={
            "status": mailbox.status,
            "trial_expires_at": (
                mailbox.trial_expires_at.isoformat() if mailbox.trial_expires_at else None
            ),
            "contact_email": mailbox.contact_email,
        },
    )
    return True
