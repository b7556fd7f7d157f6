"""Webhooks: endpoints admins register, the events of the outbox, deliveries and attempts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.models.admin import AdminUser


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


class WebhookEndpoint(db.Model):  # type: ignore[name-defined,misc]
    """A URL that receives the chosen events: all domains' for a superadmin's endpoint (or one
    made from the CLI without an admin), only its admin's domains' for a domain admin's."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    # None: made by the operator (CLI) for the whole installation.
    admin_id: Mapped[int | None] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    # Kept as is, not hashed: every delivery is signed with it (HMAC needs the key itself).
    secret: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    secret_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    admin: Mapped[AdminUser | None] = relationship()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "admin": self.admin.email if self.admin else None,
            "description": self.description,
            "active": self.active,
            "created_at": _iso(self.created_at),
            "secret_rotated_at": _iso(self.secret_rotated_at),
        }

    def __repr__(self) -> str:
        return f"<WebhookEndpoint {self.id} {self.url!r}>"


class WebhookEvent(db.Model):  # type: ignore[name-defined,misc]
    """Something that happened, written in the transaction of the change that caused it."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    # What receivers see as the event's id ("evt_…"): not the row number, so counts of other
    # tenants' events cannot be read from it.
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    # The domain the event belongs to (plain text, like audit events: it outlives the domain);
    # None for an installation-wide event.
    domain: Mapped[str | None] = mapped_column(String(253), index=True)
    # "mailbox:alice@example.com": deliveries for one object reach an endpoint in order.
    object_key: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    def payload(self) -> dict[str, Any]:
        """The JSON body POSTed to receivers."""
        return {
            "id": self.public_id,
            "type": self.type,
            "created_at": _iso(self.created_at),
            "data": self.data,
        }


class WebhookDelivery(db.Model):  # type: ignore[name-defined,misc]
    """One event on its way to one endpoint: pending (due at next_attempt_at), delivered
    (a 2xx answer) or failed (no 2xx before give_up_at)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state_known"),
        # The "earlier delivery for this object still pending?" lookup of every claim.
        Index("ix_webhook_deliveries_order", "endpoint_id", "object_key", "state", "id"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    object_key: Mapped[str] = mapped_column(String(400))
    state: Mapped[str] = mapped_column(String(12), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    give_up_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A deliverer holds a delivery until this time (one conditional UPDATE takes it), so two
    # deliverers never post it twice; a deliverer that died lets go when it passes.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(String(500))

    endpoint: Mapped[WebhookEndpoint] = relationship()
    event: Mapped[WebhookEvent] = relationship()
    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.id", passive_deletes=True
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint_id": self.endpoint_id,
            "url": self.endpoint.url,
            "event": self.event.public_id,
            "type": self.event.type,
            "object": self.object_key,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": _iso(self.created_at),
            "next_attempt_at": _iso(self.next_attempt_at)
            if self.state == DeliveryState.PENDING.value
            else None,
            "finished_at": _iso(self.finished_at),
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


class WebhookAttempt(db.Model):  # type: ignore[name-defined,misc]
    """One POST of a delivery: when, how long, the HTTP status or what went wrong."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int] = mapped_column()
    status_code: Mapped[int | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(String(500))
    # The first bytes of the receiver's answer (read capped), for the panel.
    response_excerpt: Mapped[str | None] = mapped_column(String(500))

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": _iso(self.started_at),
            "duration_ms": self.duration_ms,
            "status_code": self.status_code,
            "error": self.error,
            "response_excerpt": self.response_excerpt,
        }
