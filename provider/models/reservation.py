"""Quota reservations in flight: the journal that lets a killed writer's bytes be settled."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now


class QuotaReservation(db.Model):  # type: ignore[name-defined,misc]
    """Bytes added to a mailbox's usage for a write that has not finished yet.

    Inserted in the same transaction as the usage increment and deleted once the message is
    on disk (or the bytes are given back). A row whose process is gone marks a mailbox whose
    usage may be wrong: services/quota.settle_interrupted recounts just those mailboxes.
    """

    __tablename__ = "quota_reservations"
    __table_args__ = (CheckConstraint("nbytes >= 0", name="nbytes_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True
    )
    nbytes: Mapped[int] = mapped_column(BigInteger)
    # Which process holds it: host name, pid, and what tells that pid's process apart from a
    # later one with the same number (boot id and start time on Linux).
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    process_start: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)

    def __repr__(self) -> str:
        return f"<QuotaReservation {self.nbytes} bytes for mailbox {self.mailbox_id}>"
