"""Sending mail: identities, the outbound queue, DKIM keys and per-mailbox sending counts."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.models.domain import Domain
    from provider.models.mailbox import Mailbox


class Identity(db.Model):  # type: ignore[name-defined,misc]
    """An extra address an IMAP mailbox may send as (its own address and the aliases that
    deliver to it are identities without a row). The address is in a domain managed by the
    same admin; it need not receive mail here."""

    __tablename__ = "identities"
    __table_args__ = (
        CheckConstraint("address = lower(address)", name="address_lowercase"),
        UniqueConstraint("mailbox_id", "address", name="mailbox_address"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True
    )
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320), index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # The admin allows the address; the owner may switch its use off and on in /account.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)

    mailbox: Mapped[Mailbox] = relationship()
    domain: Mapped[Domain] = relationship()

    @validates("address")
    def _lowercase_address(self, _key: str, value: str) -> str:
        return value.lower()

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "display_name": self.display_name,
            "enabled": self.enabled,
            "mailbox": self.mailbox.address if self.mailbox else None,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }

    def __repr__(self) -> str:
        return f"<Identity {self.address} of mailbox {self.mailbox_id}>"


class RecipientState(enum.StrEnum):
    """Where one recipient of a queued message stands."""

    QUEUED = "queued"  # waiting for its first attempt
    DEFERRED = "deferred"  # an attempt failed temporarily; next_attempt_at says when again
    SENDING = "sending"  # an attempt is running (claimed by a queue runner)
    DELIVERED = "delivered"  # 250 from the far side, or stored in a local mailbox
    BOUNCED = "bounced"  # refused for good (5xx) or given up after OUTBOUND_MAX_DAYS
    DELETED = "deleted"  # removed from the queue by an admin


FINAL_STATES = (RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.DELETED)


class OutboundMessage(db.Model):  # type: ignore[name-defined,misc]
    """A message accepted for sending: its bytes are in DATA_DIR/queue/<queue_id>.eml (written
    and fsynced before the row is committed, and the row committed before the 250 reply)."""

    __tablename__ = "outbound_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[str] = mapped_column(String(32), unique=True)
    # Envelope sender (MAIL FROM); "" is the null sender (notices, DSNs: never bounced).
    sender: Mapped[str] = mapped_column(String(320), default="")
    # The authenticated mailbox that submitted it: DSNs go to its INBOX, never to `sender`
    # blindly. NULL for mail the system itself sends (and once the mailbox is deleted).
    mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="SET NULL"), index=True
    )
    size: Mapped[int] = mapped_column(BigInteger)
    # RFC 3461 ENVID and RET, when the client gave them.
    envid: Mapped[str | None] = mapped_column(String(100))
    ret: Mapped[str | None] = mapped_column(String(8))
    subject: Mapped[str] = mapped_column(String(200), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now, index=True)

    recipients: Mapped[list[OutboundRecipient]] = relationship(
        back_populates="message",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="OutboundRecipient.id",
    )

    def __repr__(self) -> str:
        return f"<OutboundMessage {self.queue_id} from <{self.sender}>>"


class OutboundRecipient(db.Model):  # type: ignore[name-defined,misc]
    """One recipient of a queued message, with its own state and retry schedule."""

    __tablename__ = "outbound_recipients"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'deferred', 'sending', 'delivered', 'bounced', 'deleted')",
            name="state_known",
        ),
        Index("ix_outbound_recipients_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("outbound_messages.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320))
    # The recipient's domain, lower-case (grouping by destination).
    domain: Mapped[str] = mapped_column(String(253), index=True)
    state: Mapped[str] = mapped_column(String(16), default=RecipientState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The last reply or error, e.g. "451 4.7.1 try later (mx.example.net)".
    last_reply: Mapped[str | None] = mapped_column(Text)
    # RFC 3461 NOTIFY and ORCPT, when the client gave them.
    notify: Mapped[str | None] = mapped_column(String(40))
    orcpt: Mapped[str | None] = mapped_column(String(400))
    delay_notified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The process holding an attempt (state 'sending'), so a dead one's claim can be undone.
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    message: Mapped[OutboundMessage] = relationship(back_populates="recipients")

    def __repr__(self) -> str:
        return f"<OutboundRecipient {self.address} {self.state}>"


class DkimKey(db.Model):  # type: ignore[name-defined,misc]
    """A domain's DKIM key pair. One key per domain signs (`active`); a rotated-out key stays
    (published, not signing) until an admin retires it, so mail in transit still verifies."""

    __tablename__ = "dkim_keys"
    __table_args__ = (
        UniqueConstraint("domain_id", "selector", name="domain_selector"),
        CheckConstraint("algorithm IN ('rsa', 'ed25519')", name="algorithm_known"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    selector: Mapped[str] = mapped_column(String(63))
    algorithm: Mapped[str] = mapped_column(String(16), default="rsa")
    private_key_pem: Mapped[str] = mapped_column(Text)
    # The base64 public key, as it goes into the p= tag of the DNS record.
    public_key: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    domain: Mapped[Domain] = relationship()

    def __repr__(self) -> str:
        return f"<DkimKey {self.selector} of domain {self.domain_id}>"


class SendingCount(db.Model):  # type: ignore[name-defined,misc]
    """Recipients a mailbox submitted in one clock hour (UTC): `accepted` counts toward its
    limits and stats, `refused` counts what the limits turned away (the burst rule)."""

    __tablename__ = "sending_counts"

    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    accepted: Mapped[int] = mapped_column(default=0, server_default="0")
    refused: Mapped[int] = mapped_column(default=0, server_default="0")

    def __repr__(self) -> str:
        return f"<SendingCount mailbox {self.mailbox_id} {self.hour}: {self.accepted}>"
