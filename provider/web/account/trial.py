"""The owner's view of a trial: days left, expiry and grace end, and upgrade requests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from provider.models import Mailbox, MailboxStatus, Plan, UpgradeRequest, UpgradeStatus
from provider.services import trials, upgrades
from provider.services.audit import Actor
from provider.services.clock import now

UPGRADE_REQUESTED = upgrades.UPGRADE_REQUESTED
DAY_SECONDS = 86400


@dataclass(frozen=True)
class TrialState:
    """What the overview tells a trial's owner; `days_left` counts a started day as a day."""

    expires_at: datetime
    days_left: int
    expired: bool
    grace_ends_at: datetime
    upgrade_requested_at: datetime | None
    declined: UpgradeRequest | None


def upgrade_requested_at(session: Session, mailbox: Mailbox) -> datetime | None:
    """When the owner asked for the upgrade still waiting for an admin (None: none waiting)."""
    request = upgrades.pending_request(session, mailbox)
    return request.requested_at if request is not None else None


def declined_request(session: Session, mailbox: Mailbox) -> UpgradeRequest | None:
    """The owner's latest request when an admin declined it (its message is shown)."""
    request = upgrades.latest_request(session, mailbox)
    if request is None or request.status != UpgradeStatus.DECLINED.value:
        return None
    return request


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
        declined=declined_request(session, mailbox),
    )


def request_upgrade(session: Session, mailbox: Mailbox, actor: Actor) -> bool:
    """Record the owner's wish to keep the mailbox and tell the admins (services/upgrades);
    False when it is not a trial or a request is already waiting."""
    return upgrades.request_upgrade(session, mailbox, actor) is not None
