"""Audit trail of administrative changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now


class AuditEvent(db.Model):  # type: ignore[name-defined,misc]
    """Who changed what, from where, and the record before and after."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now, index=True)
    actor: Mapped[str] = mapped_column(String(320), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(320), index=True)
    # Plain domain name (not a foreign key): the trail outlives the domain it talks about.
    domain: Mapped[str | None] = mapped_column(String(253), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    remote_addr: Mapped[str | None] = mapped_column(String(64))

    def to_dict(self) -> dict[str, Any]:
        return {
            "occurred_at": self.occurred_at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "domain": self.domain,
            "before": self.before,
            "after": self.after,
            "remote_addr": self.remote_addr,
        }
