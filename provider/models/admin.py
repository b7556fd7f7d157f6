"""Administrators of the platform: superadmins, and domain admins limited to chosen domains."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from flask_login import UserMixin
from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, String, Table
from sqlalchemy.orm import Mapped, mapped_column, relationship

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.models.domain import Domain

admin_domains = Table(
    "admin_domains",
    db.metadata,
    Column("admin_id", ForeignKey("admin_users.id", ondelete="CASCADE"), primary_key=True),
    Column("domain_id", ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True),
)


class AdminUser(UserMixin, db.Model):  # type: ignore[name-defined,misc]
    """Someone who logs in to /admin/."""

    __tablename__ = "admin_users"
    __table_args__ = (CheckConstraint("email = lower(email)", name="email_lowercase"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_superadmin: Mapped[bool] = mapped_column(default=False)
    active: Mapped[bool] = mapped_column(default=True)
    # Bumped on logout and password change: every session cookie minted before is void.
    session_epoch: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Two-factor login (TOTP): the secret, encrypted (services/two_factor.py); set but not
    # enabled while the admin is setting it up. The last time step accepted refuses replays.
    totp_secret: Mapped[str | None] = mapped_column(String(255))
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger())

    domains: Mapped[list[Domain]] = relationship(secondary=admin_domains)

    @property
    def is_active(self) -> bool:  # type: ignore[override]
        return self.active

    @property
    def two_factor_enabled(self) -> bool:
        return self.totp_enabled_at is not None

    def get_id(self) -> str:
        return f"{self.id}:{self.session_epoch}"

    def can_manage(self, domain_id: int) -> bool:
        """Whether this admin may see and change the given domain and what is in it."""
        return self.is_superadmin or any(domain.id == domain_id for domain in self.domains)

    def managed_domain_ids(self) -> set[int] | None:
        """The domain ids this admin is limited to, or None for a superadmin (all)."""
        return None if self.is_superadmin else {domain.id for domain in self.domains}

    def __repr__(self) -> str:
        return f"<AdminUser {self.email}>"


class AdminRecoveryCode(db.Model):  # type: ignore[name-defined,misc]
    """One of an admin's one-time recovery codes (their SHA-256; the code is shown once)."""

    __tablename__ = "admin_recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    admin_id: Mapped[int] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
