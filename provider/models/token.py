"""API tokens: a secret an admin's program sends as `Authorization: Bearer …`, stored hashed."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.models.admin import AdminUser


class ApiToken(db.Model):  # type: ignore[name-defined,misc]
    """A token acts as its admin (superadmin, or domain admin limited to their domains) with
    a scope (read, or write which includes read), until it expires or is revoked."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("scope in ('read', 'write')", name="scope_known"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    admin_id: Mapped[int] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    # The first characters of the secret (after its "pvd_" prefix), shown in lists so a
    # token can be told apart without its secret.
    prefix: Mapped[str] = mapped_column(String(16))
    # sha256 hex of the whole secret: the secret has 256 random bits, so a fast hash is as
    # safe as a slow one and keeps every API request cheap (GitHub does the same).
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8))
    # None: from anywhere; else a list of addresses or networks ("192.0.2.0/24", "::1").
    allowed_ips: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_ip: Mapped[str | None] = mapped_column(String(45))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    admin: Mapped[AdminUser] = relationship()

    def to_dict(self) -> dict[str, Any]:
        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {
            "id": self.id,
            "name": self.name,
            "admin": self.admin.email,
            "prefix": self.prefix,
            "scope": self.scope,
            "allowed_ips": list(self.allowed_ips) if self.allowed_ips else None,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at),
            "last_used_ip": self.last_used_ip,
            "revoked_at": iso(self.revoked_at),
        }

    def __repr__(self) -> str:
        return f"<ApiToken {self.id} {self.name!r} of admin {self.admin_id}>"
