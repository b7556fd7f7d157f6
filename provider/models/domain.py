"""Hosted mail domains."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.models.alias import Alias
    from provider.models.mailbox import Mailbox


class Domain(db.Model):  # type: ignore[name-defined,misc]
    """A domain whose mail this platform hosts."""

    __tablename__ = "domains"
    __table_args__ = (CheckConstraint("name = lower(name)", name="name_lowercase"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    signup_enabled: Mapped[bool] = mapped_column(default=False)
    # Where mail to postmaster@ goes when no mailbox or alias has that name: hosted addresses
    # separated by ", "; NULL = the default chain (services/delivery.postmaster_route).
    postmaster: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)

    mailboxes: Mapped[list[Mailbox]] = relationship(back_populates="domain")
    aliases: Mapped[list[Alias]] = relationship(back_populates="domain")

    @property
    def postmaster_addresses(self) -> list[str]:
        """The configured postmaster targets (empty: the default applies)."""
        return [part.strip() for part in (self.postmaster or "").split(",") if part.strip()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "signup_enabled": self.signup_enabled,
            "postmaster": self.postmaster_addresses,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }

    def __repr__(self) -> str:
        return f"<Domain {self.name}>"
