"""Sending limits: recipients per mailbox per hour and per day, the burst rule, sending stats."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from blinker import Namespace
from flask import current_app, has_app_context
from sqlalchemy import case, delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from provider.errors import InvalidInput, SendingLimited, SendingSuspended
from provider.models import Mailbox
from provider.models.mailbox import Plan
from provider.models.sending import SendingCount
from provider.services import audit, webhooks
from provider.services.audit import Actor
from provider.services.clock import now

log = logging.getLogger(__name__)

# Bounds of a per-mailbox override (recipients per hour / per day).
LIMIT_MIN = 1
LIMIT_MAX = 100_000
# What the burst rule and its audit row are recorded as.
BURST_ACTOR = Actor("sending-limits")
SUSPENDED_TEXT = "sending suspended for this mailbox; contact your provider"

_signals = Namespace()
# Sent (with the session, mailbox_id=, reason=) after the burst rule suspended a mailbox and
# that suspension committed; provider/services/sending_alerts.py tells the admins. A signal,
# not an import: the outbound queue already builds on this module (record_accepted).
sending_suspended = _signals.signal("sending-suspended")


# --- limits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The limits in force for one mailbox, and where each comes from."""

    per_hour: int
    per_day: int
    hour_overridden: bool
    day_overridden: bool
    burst_factor: int

    @property
    def burst_attempts(self) -> int:
        """Attempts (accepted + refused) within the hour window that suspend sending."""
        return self.per_hour * self.burst_factor


def _setting(name: str, default: Any) -> Any:
    return current_app.config.get(name, default) if has_app_context() else default


def _positive_setting(name: str, default: int) -> int:
    """A whole-number setting above 0; anything else is logged and the built-in default used."""
    raw = _setting(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        log.error("setting %s=%r is not a positive whole number; using %d", name, raw, default)
        return default
    return value


def plan_limits(plan: str) -> tuple[int, int]:
    """(per hour, per day) for a plan: the TRIAL_ settings for trials, the others for paid."""
    if plan == Plan.TRIAL.value:
        return (
            _positive_setting("TRIAL_SEND_LIMIT_PER_HOUR", 20),
            _positive_setting("TRIAL_SEND_LIMIT_PER_DAY", 50),
        )
    return (
        _positive_setting("SEND_LIMIT_PER_HOUR", 300),
        _positive_setting("SEND_LIMIT_PER_DAY", 1000),
    )


def limits_for(mailbox: Mailbox) -> Limits:
    """The mailbox's own override where an admin set one, else its plan's setting."""
    hour, day = plan_limits(mailbox.plan)
    return Limits(
        per_hour=mailbox.send_limit_hour or hour,
        per_day=mailbox.send_limit_day or day,
        hour_overridden=mailbox.send_limit_hour is not None,
        day_overridden=mailbox.send_limit_day is not None,
        burst_factor=_positive_setting("SEND_BURST_FACTOR", 2),
    )


# --- counting ------------------------------------------------------------------------------


def hour_of(moment: datetime) -> datetime:
    """The clock hour (UTC) a moment is counted in."""
    return moment.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Window:
    """Counts of the windows the limits are checked against, at one moment.

    The hour window is the current clock hour and the one before it, the day window the
    current hour and the 24 before it: any 60 minutes (any 24 hours) lie within one window, so no
    60 minutes ever hold more than the hourly limit (and no 24 hours more than the daily one);
    the price is that a mailbox that reached its limit may wait up to two hours (25 h).
    """

    hour_accepted: int
    hour_refused: int
    day_accepted: int


def window_start(moment: datetime) -> tuple[datetime, datetime]:
    """(first bucket of the hour window, first bucket of the day window)."""
    current = hour_of(moment)
    return current - timedelta(hours=1), current - timedelta(hours=24)


def window_counts(session: Session, mailbox_id: int, moment: datetime | None = None) -> Window:
    moment = moment or now()
    hour_start, day_start = window_start(moment)
    in_hour = SendingCount.hour >= hour_start
    row = session.execute(
        select(
            func.coalesce(func.sum(case((in_hour, SendingCount.accepted), else_=0)), 0),
            func.coalesce(func.sum(case((in_hour, SendingCount.refused), else_=0)), 0),
            func.coalesce(func.sum(SendingCount.accepted), 0),
        ).where(
            SendingCount.mailbox_id == mailbox_id,
            SendingCount.hour >= day_start,
            # A bucket "from the future" (the clock was set back) counts nowhere.
            SendingCount.hour <= hour_of(moment),
        )
    ).one()
    return Window(int(row[0]), int(row[1]), int(row[2]))


def _count(session: Session, mailbox_id: int, *, accepted: int = 0, refused: int = 0) -> None:
    """Add to the mailbox's bucket of this hour in one statement (INSERT … ON CONFLICT DO
    UPDATE): two sessions racing both count, neither fails on the primary key."""
    dialect = session.get_bind().dialect.name
    insert: Any
    if dialect == "postgresql":
        insert = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:  # pragma: no cover - the two databases the product supports
        raise RuntimeError(f"sending counts need SQLite or PostgreSQL, not {dialect}")
    statement = insert(SendingCount).values(
        mailbox_id=mailbox_id, hour=hour_of(now()), accepted=accepted, refused=refused
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[SendingCount.mailbox_id, SendingCount.hour],
            set_={
                "accepted": SendingCount.accepted + statement.excluded.accepted,
                "refused": SendingCount.refused + statement.excluded.refused,
            },
        )
    )


def record_accepted(session: Session, mailbox_id: int, recipients: int) -> None:
    """Count `recipients` sent by the mailbox now, in the caller's transaction (the one that
    queues the message, so a message and its count commit together)."""
    if recipients > 0:
        _count(session, mailbox_id, accepted=recipients)


# --- the rule at RCPT TO -------------------------------------------------------------------


def check_recipient(session: Session, mailbox: Mailbox, pending: int) -> None:
    """At RCPT TO: may `mailbox` add one more recipient, with `pending` already accepted in
    this transaction? Raises SendingLimited (451 4.7.1) or SendingSuspended (550 5.7.1); counts
    a refused attempt (and may suspend sending, the burst rule). Commits what it records."""
    if mailbox.sending_suspended_at is not None:
        raise SendingSuspended(SUSPENDED_TEXT)
    limits = limits_for(mailbox)
    counts = window_counts(session, mailbox.id)
    wanted = pending + 1
    if counts.hour_accepted + wanted > limits.per_hour:
        refusal = f"{limits.per_hour} recipients per hour"
    elif counts.day_accepted + wanted > limits.per_day:
        refusal = f"{limits.per_day} recipients per day"
    else:
        return  # the usual case: one SELECT, nothing written
    mailbox_id = mailbox.id
    _count(session, mailbox_id, refused=1)
    # Read again after our own write: a racing session's refusals count too.
    counts = window_counts(session, mailbox_id)
    attempts = counts.hour_accepted + counts.hour_refused + pending
    suspended_now = False
    reason = ""
    if attempts >= limits.burst_attempts:
        reason = (
            f"burst: {attempts} recipients tried within an hour, "
            f"{limits.burst_factor} times the limit of {limits.per_hour} per hour"
        )
        suspended_now = _suspend(
            session,
            mailbox,
            reason,
            actor=BURST_ACTOR,
            details={"attempts": attempts, "limit_per_hour": limits.per_hour},
        )
    session.commit()
    if suspended_now:
        _announce(session, mailbox_id, reason)
    if attempts >= limits.burst_attempts:
        raise SendingSuspended(SUSPENDED_TEXT)
    raise SendingLimited(f"sending limit reached: {refusal} for this mailbox; try again later")


def _announce(session: Session, mailbox_id: int, reason: str) -> None:
    """Tell the subscribers (the admins' alert); the suspension stands whatever they do."""
    try:
        sending_suspended.send(session, mailbox_id=mailbox_id, reason=reason)
    except Exception:
        session.rollback()
        log.exception("alerting the admins about mailbox %d failed", mailbox_id)


def _suspend(
    session: Session,
    mailbox: Mailbox,
    reason: str,
    *,
    actor: Actor,
    details: dict[str, Any] | None = None,
) -> bool:
    """Stop the mailbox's sending unless it is already stopped: one conditional UPDATE, so of
    two sessions racing exactly one wins (and writes the audit row). True for the winner."""
    moment = now()
    result = session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox.id, Mailbox.sending_suspended_at.is_(None))
        .values(sending_suspended_at=moment, sending_suspended_reason=reason[:255])
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.expire(mailbox, ["sending_suspended_at", "sending_suspended_reason"])
    audit.record(
        session,
        actor,
        "mailbox.sending_suspend",
        mailbox.address,
        domain=mailbox.domain.name,
        after={"reason": reason[:255], **(details or {})},
    )
    webhooks.emit(
        session,
        "sending.suspended",
        domain=mailbox.domain.name,
        object_key=webhooks.mailbox_key(mailbox.address),
        data={"address": mailbox.address, "reason": reason[:255], "by": actor.name},
    )
    return True


# --- admin operations ------------------------------------------------------------------------


def parse_limit(value: object, name: str, field: str) -> int | None:
    """An override as given on a form or the command line: "default" (or blank) clears it
    (None), else a whole number LIMIT_MIN..LIMIT_MAX. 0 is refused, not taken as "default":
    it reads as "may not send", which is what suspending is for."""
    text = str(value).strip().lower() if value is not None else ""
    if text in ("", "default"):
        return None
    problem = (
        f"{name} must be a whole number from {LIMIT_MIN} to {LIMIT_MAX}, "
        "or 'default' for the plan's setting"
    )
    if not text.isascii() or not text.isdigit() or len(text) > 7:
        raise InvalidInput(problem, field)
    number = int(text)
    if not LIMIT_MIN <= number <= LIMIT_MAX:
        raise InvalidInput(problem, field)
    return number


def _limits_record(mailbox: Mailbox) -> dict[str, Any]:
    return {"send_limit_hour": mailbox.send_limit_hour, "send_limit_day": mailbox.send_limit_day}


def set_limits(
    session: Session,
    mailbox: Mailbox,
    *,
    actor: Actor,
    per_hour: object | None = None,
    per_day: object | None = None,
) -> bool:
    """Set or clear (value "default" or blank) the mailbox's overrides; None leaves one as it
    is. Audited as mailbox.sending_limits; True when something changed."""
    hour = (
        parse_limit(per_hour, "send limit per hour", "send_limit_hour")
        if per_hour is not None
        else mailbox.send_limit_hour
    )
    day = (
        parse_limit(per_day, "send limit per day", "send_limit_day")
        if per_day is not None
        else mailbox.send_limit_day
    )
    before = _limits_record(mailbox)
    mailbox.send_limit_hour, mailbox.send_limit_day = hour, day
    after = _limits_record(mailbox)
    if after == before:
        return False
    mailbox.updated_at = now()
    audit.record(
        session,
        actor,
        "mailbox.sending_limits",
        mailbox.address,
        domain=mailbox.domain.name,
        before=before,
        after=after,
    )
    return True


def suspend_sending(
    session: Session, mailbox: Mailbox, *, actor: Actor, reason: str | None = None
) -> bool:
    """An admin stops the mailbox's sending (it keeps receiving and logging in). False when it
    was already stopped (the first reason stays)."""
    text = (reason or "").strip() or f"stopped by {actor.name}"
    return _suspend(session, mailbox, text, actor=actor)


def resume_sending(session: Session, mailbox: Mailbox, *, actor: Actor) -> bool:
    """Let the mailbox send again. Its refused attempts of the hour window are forgotten, or
    the next refusal would suspend it again at once; what it sent still counts."""
    if mailbox.sending_suspended_at is None:
        return False
    before = {
        "suspended_at": mailbox.sending_suspended_at.isoformat(),
        "reason": mailbox.sending_suspended_reason,
    }
    hour_start, _ = window_start(now())
    session.execute(
        update(SendingCount)
        .where(SendingCount.mailbox_id == mailbox.id, SendingCount.hour >= hour_start)
        .values(refused=0)
        .execution_options(synchronize_session=False)
    )
    mailbox.sending_suspended_at = None
    mailbox.sending_suspended_reason = None
    audit.record(
        session,
        actor,
        "mailbox.sending_resume",
        mailbox.address,
        domain=mailbox.domain.name,
        before=before,
    )
    return True


# --- stats ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayCount:
    day: date
    accepted: int
    refused: int


def daily_counts(session: Session, mailbox_id: int, days: int = 7) -> list[DayCount]:
    """Recipients per UTC day for the last `days` days, today last (days without mail: 0)."""
    today = now().date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    rows = session.execute(
        select(SendingCount.hour, SendingCount.accepted, SendingCount.refused).where(
            SendingCount.mailbox_id == mailbox_id,
            SendingCount.hour >= start,
            SendingCount.hour < start + timedelta(days=days),
        )
    ).all()
    totals = {first + timedelta(days=n): [0, 0] for n in range(days)}
    for hour, accepted, refused in rows:
        total = totals[hour.date()]
        total[0] += accepted
        total[1] += refused
    return [DayCount(day, accepted, refused) for day, (accepted, refused) in totals.items()]


def sent_today(session: Session, mailbox_id: int) -> int:
    """Recipients the mailbox sent since midnight UTC."""
    return daily_counts(session, mailbox_id, days=1)[0].accepted


@dataclass(frozen=True)
class Overview:
    """Everything the admin panel and `provider mailbox show` say about a mailbox's sending."""

    limits: Limits
    window: Window
    today: int
    last_days: list[DayCount]
    suspended_at: datetime | None
    suspended_reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit_per_hour": self.limits.per_hour,
            "limit_per_day": self.limits.per_day,
            "limit_per_hour_source": "mailbox" if self.limits.hour_overridden else "plan",
            "limit_per_day_source": "mailbox" if self.limits.day_overridden else "plan",
            "sent_last_hour_window": self.window.hour_accepted,
            "sent_last_day_window": self.window.day_accepted,
            "sent_today": self.today,
            "last_7_days": [
                {"day": d.day.isoformat(), "sent": d.accepted, "refused": d.refused}
                for d in self.last_days
            ],
            "suspended": self.suspended_at is not None,
            "suspended_at": self.suspended_at.isoformat() if self.suspended_at else None,
            "suspended_reason": self.suspended_reason,
        }


def overview(session: Session, mailbox: Mailbox) -> Overview:
    last_days = daily_counts(session, mailbox.id)
    return Overview(
        limits=limits_for(mailbox),
        window=window_counts(session, mailbox.id),
        today=last_days[-1].accepted,
        last_days=last_days,
        suspended_at=mailbox.sending_suspended_at,
        suspended_reason=mailbox.sending_suspended_reason,
    )


def suspended_mailboxes(
    session: Session, domain_ids: Iterable[int] | None = None, limit: int = 200
) -> list[Mailbox]:
    """Mailboxes whose sending is stopped, newest first (within `domain_ids`, None = all)."""
    query = select(Mailbox).where(Mailbox.sending_suspended_at.is_not(None))
    if domain_ids is not None:
        query = query.where(Mailbox.domain_id.in_(sorted(domain_ids)))
    query = query.order_by(Mailbox.sending_suspended_at.desc(), Mailbox.id).limit(limit)
    return list(session.scalars(query))


# --- housekeeping --------------------------------------------------------------------------

# Days of hourly buckets kept before today: the 7-day stats read today and the 6 days before,
# the day window the 24 hours before this one; 8 full days is more than both need.
COUNTS_KEEP_DAYS = 8
PRUNE_BATCH = 1000


def prune_counts(
    session: Session, keep_days: int = COUNTS_KEEP_DAYS, *, batch: int = PRUNE_BATCH
) -> int:
    """Delete sending_counts buckets from before midnight UTC `keep_days` days ago, `batch`
    rows per transaction; buckets "in the future" (a clock set back) are left alone. Returns
    how many rows went."""
    if batch < 1:
        raise InvalidInput(f"batch must be at least 1, not {batch}", "batch")
    if keep_days < COUNTS_KEEP_DAYS:
        raise InvalidInput(
            f"sending counts must be kept at least {COUNTS_KEEP_DAYS} days (the 7-day stats "
            f"and the day window read them), not {keep_days}",
            "keep_days",
        )
    today = datetime.combine(now().date(), datetime.min.time(), tzinfo=UTC)
    cutoff = today - timedelta(days=keep_days)
    removed = 0
    while True:
        keys = session.execute(
            select(SendingCount.mailbox_id, SendingCount.hour)
            .where(SendingCount.hour < cutoff)
            .order_by(SendingCount.hour, SendingCount.mailbox_id)
            .limit(batch)
        ).all()
        if not keys:
            session.rollback()
            return removed
        result = session.execute(
            delete(SendingCount)
            .where(
                tuple_(SendingCount.mailbox_id, SendingCount.hour).in_(
                    [tuple(key) for key in keys]
                ),
                SendingCount.hour < cutoff,
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
        removed += int(result.rowcount or 0)
        if len(keys) < batch:
            return removed
