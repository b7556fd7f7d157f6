"""Sieve delivery state: vacation replies sent and the IDs the duplicate test tracks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from provider.extensions import db
from provider.models.types import UTCDateTime


class VacationResponse(db.Model):  # type: ignore[name-defined,misc]
    """The last vacation reply of a mailbox to one sender for one handle (RFC 5230 §4.2): no
    other reply to that sender for that handle before `expires_at`."""

    __tablename__ = "vacation_responses"

    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    # sha256 hex of the handle: handles are script text of any length.
    handle: Mapped[str] = mapped_column(String(64), primary_key=True)
    sender: Mapped[str] = mapped_column(String(320), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    def __repr__(self) -> str:
        return f"<VacationResponse mailbox {self.mailbox_id} to {self.sender}>"


class SieveDuplicate(db.Model):  # type: ignore[name-defined,misc]
    """A unique ID the Sieve `duplicate` test (RFC 7352) tracks for one mailbox: a later
    message with the same ID under the same handle is a duplicate until `expires_at`."""

    __tablename__ = "sieve_duplicates"

    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    # sha256 hex of handle NUL value: both are script or header text of any length.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    def __repr__(self) -> str:
        return f"<SieveDuplicate mailbox {self.mailbox_id} {self.key[:12]}>"
