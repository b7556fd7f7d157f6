"""Trials: one row per trial period of a mailbox (kept after it ends) and the reminders sent."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.models.mailbox import Mailbox


class TrialOutcome(enum.StrEnum):
    """How a trial period ended; OPEN while it runs (also while expired in its grace period)."""

    OPEN = "open"
    CONVERTED = "converted"
    DELETED = "deleted"


class Trial(db.Model):  # type: ignore[name-defined,misc]
    """A mailbox's trial period. The row outlives the mailbox (mailbox_id becomes NULL), so the
    dashboard can count converted and lapsed trials, and the address stays readable."""

    __tablename__ = "trials"
    __table_args__ = (
        CheckConstraint("outcome IN ('open', 'converted', 'deleted')", name="outcome_known"),
        # An open trial holds its normalized contact; the unique index then allows one open
        # trial per contact even when two signups race (NULLs never collide).
        CheckConstraint(
            "open_contact IS NULL OR outcome = 'open'", name="open_contact_only_while_open"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="SET NULL"), index=True
    )
    address: Mapped[str] = mapped_column(String(320), index=True)
    # Plain text like the audit trail's: the record outlives the mailbox (and its domain).
    domain: Mapped[str] = mapped_column(String(253), index=True)
    # Lower-case, +tag removed, Gmail dots dropped (services/trials.normalize_contact).
    contact_key: Mapped[str | None] = mapped_column(String(320), index=True)
    open_contact: Mapped[str | None] = mapped_column(String(320), unique=True)
    # "signup" for public signups; the admin's actor name otherwise.
    source: Mapped[str] = mapped_column(String(64), default="admin")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now, index=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    outcome: Mapped[str] = mapped_column(
        String(16), default=TrialOutcome.OPEN.value, server_default=TrialOutcome.OPEN.value
    )

    mailbox: Mapped[Mailbox | None] = relationship()
    reminders: Mapped[list[TrialReminder]] = relationship(
        back_populates="trial",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="TrialReminder.days_before.desc()",
    )

    @property
    def is_open(self) -> bool:
        return self.outcome == TrialOutcome.OPEN.value

    def end(self, outcome: TrialOutcome, moment: datetime) -> None:
        """Close the trial period (converted or deleted); frees its contact for a new trial."""
        self.outcome = outcome.value
        self.ended_at = moment
        self.open_contact = None

    def __repr__(self) -> str:
        return f"<Trial {self.address} {self.outcome}>"


class TrialReminder(db.Model):  # type: ignore[name-defined,misc]
    """One reminder (N days before expiry) of one trial; the unique key makes it once only."""

    __tablename__ = "trial_reminders"
    __table_args__ = (
        UniqueConstraint("trial_id", "days_before"),
        CheckConstraint("days_before > 0", name="days_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    days_before: Mapped[int] = mapped_column()
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    # False when a later, more urgent reminder was due at the same run and replaced this one.
    delivered: Mapped[bool] = mapped_column(default=True)

    trial: Mapped[Trial] = relationship(back_populates="reminders")


class UpgradeStatus(enum.StrEnum):
    """Where an owner's upgrade request stands: waiting for an admin, or answered."""

    PENDING = "pending"
    CONVERTED = "converted"
    DECLINED = "declined"


class UpgradeRequest(db.Model):  # type: ignore[name-defined,misc]
    """A trial owner's request to keep the mailbox as a paid one, and the admin's answer (a
    decline carries a message the owner reads in /account). Goes with the mailbox."""

    __tablename__ = "upgrade_requests"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'converted', 'declined')", name="status_known"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True
    )
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    status: Mapped[str] = mapped_column(String(16), default=UpgradeStatus.PENDING.value, index=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    answered_by: Mapped[str | None] = mapped_column(String(320))
    message: Mapped[str | None] = mapped_column(Text)

    mailbox: Mapped[Mailbox] = relationship()

    @property
    def pending(self) -> bool:
        return self.status == UpgradeStatus.PENDING.value
