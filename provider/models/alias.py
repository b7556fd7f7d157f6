"""Aliases: extra addresses that deliver to a mailbox and that it may send as."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.models.domain import Domain
    from provider.models.mailbox import Mailbox


class Alias(db.Model):  # type: ignore[name-defined,misc]
    """An address in a hosted domain delivering to one mailbox."""

    __tablename__ = "aliases"
    __table_args__ = (CheckConstraint("address = lower(address)", name="address_lowercase"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    domain_id: Mapped[int] = mapped_column(
        ForeignKey("domains.id", ondelete="RESTRICT"), index=True
    )
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)

    domain: Mapped[Domain] = relationship(back_populates="aliases")
    mailbox: Mapped[Mailbox] = relationship(back_populates="aliases")

    @validates("address")
    def _lowercase_address(self, _key: str, value: str) -> str:
        return value.lower()

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "mailbox": self.mailbox.address}

    def __repr__(self) -> str:
        return f"<Alias {self.address}>"
