"""Mailboxes: an address with a password, a quota and a protocol policy."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.models.alias import Alias
    from provider.models.domain import Domain


class Protocol(enum.StrEnum):
    """Mail access protocols a mailbox may be allowed."""

    IMAP = "imap"
    POP3 = "pop3"


class Pop3Action(enum.StrEnum):
    """What the server does with a message a POP3 client downloaded (RETR) and kept, applied
    when the session ends with QUIT."""

    KEEP = "keep"  # stays put, the client decides; marked read when the mailbox has IMAP too
    SEEN = "seen"  # mark it read, so IMAP clients of the same mailbox see it as read
    ARCHIVE = "archive"  # move it to the Archive folder (out of POP3's view, kept for IMAP)


class MailboxStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    EXPIRED = "expired"


class Plan(enum.StrEnum):
    TRIAL = "trial"
    PAID = "paid"


class Mailbox(db.Model):  # type: ignore[name-defined,misc]
    """One customer mailbox. The invariants that need no settings are enforced by the database."""

    __tablename__ = "mailboxes"
    __table_args__ = (
        # Addresses are kept lower-case, which makes the unique index case-insensitive.
        CheckConstraint("address = lower(address)", name="address_lowercase"),
        CheckConstraint("quota_bytes > 0", name="quota_positive"),
        CheckConstraint("used_bytes >= 0", name="used_not_negative"),
        CheckConstraint("imap_enabled OR pop3_enabled", name="has_protocol"),
        CheckConstraint("status IN ('active', 'suspended', 'expired')", name="status_known"),
        CheckConstraint("plan IN ('trial', 'paid')", name="plan_known"),
        CheckConstraint("pop3_action IN ('keep', 'seen', 'archive')", name="pop3_action_known"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(
        ForeignKey("domains.id", ondelete="RESTRICT"), index=True
    )
    local_part: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    quota_bytes: Mapped[int] = mapped_column(BigInteger, index=True)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    imap_enabled: Mapped[bool] = mapped_column(default=True)
    pop3_enabled: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(16), default=MailboxStatus.ACTIVE.value, index=True)
    plan: Mapped[str] = mapped_column(String(16), default=Plan.PAID.value, index=True)
    contact_email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now, onupdate=now)
    trial_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Highest usage threshold (percent) already announced to the customer; 0 = none. Lowered
    # again when usage falls back below it, so the next crossing warns again.
    quota_warned_percent: Mapped[int] = mapped_column(default=0, server_default="0")
    pop3_action: Mapped[str] = mapped_column(
        String(16), default=Pop3Action.KEEP.value, server_default=Pop3Action.KEEP.value
    )
    # Raised to end every /account session of the mailbox: at logout and at a status change
    # (so reactivating a suspended mailbox does not bring its old cookies back).
    session_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    # Sending limits (recipients per hour / per day); NULL = the setting for its plan.
    send_limit_hour: Mapped[int | None] = mapped_column()
    send_limit_day: Mapped[int | None] = mapped_column()
    # Set when the burst rule (or an admin) stopped this mailbox from sending; NULL = may send.
    sending_suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sending_suspended_reason: Mapped[str | None] = mapped_column(String(255))

    domain: Mapped[Domain] = relationship(back_populates="mailboxes")
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="mailbox", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def protocols(self) -> list[str]:
        """The allowed protocols, in a stable order (imap before pop3)."""
        return protocols_of(self.imap_enabled, self.pop3_enabled)

    @protocols.setter
    def protocols(self, value: set[str] | list[str]) -> None:
        chosen = {Protocol(name).value for name in value}
        if not chosen:
            raise ValueError("a mailbox needs at least one protocol")
        self.imap_enabled = Protocol.IMAP.value in chosen
        self.pop3_enabled = Protocol.POP3.value in chosen

    @validates("address")
    def _lowercase_address(self, _key: str, value: str) -> str:
        return value.lower()

    def protocol_allowed(self, protocol: str) -> bool:
        return protocol in self.protocols

    @property
    def usage_ratio(self) -> float:
        return min(self.used_bytes / self.quota_bytes, 1.0) if self.quota_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything an admin may see about the mailbox (never the password hash)."""
        return summary_record(
            address=self.address,
            domain=self.domain.name if self.domain else None,
            quota_bytes=self.quota_bytes,
            used_bytes=self.used_bytes,
            imap_enabled=self.imap_enabled,
            pop3_enabled=self.pop3_enabled,
            status=self.status,
            plan=self.plan,
            contact_email=self.contact_email,
            pop3_action=self.pop3_action,
            created_at=self.created_at,
            trial_expires_at=self.trial_expires_at,
            aliases=[alias.address for alias in self.aliases],
        )

    def __repr__(self) -> str:
        return f"<Mailbox {self.address}>"


def protocols_of(imap_enabled: bool, pop3_enabled: bool) -> list[str]:
    """The protocols two flags allow, in a stable order (imap before pop3)."""
    allowed = []
    if imap_enabled:
        allowed.append(Protocol.IMAP.value)
    if pop3_enabled:
        allowed.append(Protocol.POP3.value)
    return allowed


def summary_record(
    *,
    address: str,
    domain: str | None,
    quota_bytes: int,
    used_bytes: int,
    imap_enabled: bool,
    pop3_enabled: bool,
    status: str,
    plan: str,
    contact_email: str | None,
    pop3_action: str,
    created_at: datetime | None,
    trial_expires_at: datetime | None,
    aliases: list[str],
) -> dict[str, Any]:
    """A mailbox's record (Mailbox.to_dict), from its values: also from plain rows
    (services/reports.mailbox_summaries)."""
    return {
        "address": address,
        "domain": domain,
        "quota_bytes": quota_bytes,
        "used_bytes": used_bytes,
        "protocols": protocols_of(imap_enabled, pop3_enabled),
        "status": status,
        "plan": plan,
        "contact_email": contact_email,
        "pop3_action": pop3_action,
        "created_at": created_at.isoformat() if created_at else None,
        "trial_expires_at": trial_expires_at.isoformat() if trial_expires_at else None,
        "aliases": sorted(aliases),
    }
