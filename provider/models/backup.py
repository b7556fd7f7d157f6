"""Backup snapshots index and restore history (the snapshots themselves live on disk)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now


class SnapshotStatus(enum.StrEnum):
    """Listed only once the manifest is complete on disk; verify may mark it damaged."""

    COMPLETE = "complete"
    DAMAGED = "damaged"


class BackupSnapshot(db.Model):  # type: ignore[name-defined,misc]
    """One complete snapshot of one mailbox: the index row of a manifest under DATA_DIR/backups."""

    __tablename__ = "backup_snapshots"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "snapshot_id"),
        CheckConstraint("status IN ('complete', 'damaged')", name="status_known"),
        CheckConstraint("messages >= 0 AND bytes >= 0", name="counts_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True
    )
    # The manifest's name on disk (UTC time of the snapshot plus a short random suffix).
    snapshot_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now, index=True)
    messages: Mapped[int] = mapped_column(default=0)
    folders: Mapped[int] = mapped_column(default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # Messages whose content had to be read (not already in the store) for this snapshot.
    new_objects: Mapped[int] = mapped_column(default=0)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=SnapshotStatus.COMPLETE.value)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot_id,
            "created_at": self.created_at.isoformat(),
            "messages": self.messages,
            "folders": self.folders,
            "bytes": self.bytes,
            "new_objects": self.new_objects,
            "status": self.status,
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
        }


class BackupRestore(db.Model):  # type: ignore[name-defined,misc]
    """One restore run: what was asked for and what it brought back, skipped or could not fit."""

    __tablename__ = "backup_restores"

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True
    )
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now, index=True)
    snapshot_id: Mapped[str] = mapped_column(String(64))
    # "mailbox", "folder" or "messages"; the folder, UIDs and --into target say the rest.
    scope: Mapped[str] = mapped_column(String(16))
    folder: Mapped[str | None] = mapped_column(String(1024))
    uids: Mapped[list[int] | None] = mapped_column(JSON)
    into_folder: Mapped[str | None] = mapped_column(String(1024))
    restored: Mapped[int] = mapped_column(default=0)
    restored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    shortfall: Mapped[int] = mapped_column(default=0)
    shortfall_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    actor: Mapped[str] = mapped_column(String(320))

    def to_dict(self) -> dict[str, Any]:
        return {
            "occurred_at": self.occurred_at.isoformat(),
            "snapshot": self.snapshot_id,
            "scope": self.scope,
            "folder": self.folder,
            "uids": self.uids,
            "into": self.into_folder,
            "restored": self.restored,
            "restored_bytes": self.restored_bytes,
            "skipped": self.skipped,
            "shortfall": self.shortfall,
            "shortfall_bytes": self.shortfall_bytes,
            "actor": self.actor,
        }
