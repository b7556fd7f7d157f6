"""Restore from a snapshot: add back what is missing, never delete, overwrite or duplicate."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from provider.backup.manifest import Manifest, ManifestMessage
from provider.backup.store import BackupStore, BackupStoreError, sha256
from provider.mailstore import (
    INBOX,
    SEPARATOR,
    FolderExists,
    FolderNotFound,
    IncomingMessage,
    Maildir,
    MessageNotFound,
    StorageFull,
)

BATCH = 100  # messages stored (and quota reserved) at once


class Reserved(Protocol):
    """Bytes reserved against the quota for one batch (services/quota.QuotaHold)."""

    def confirm(self) -> None:
        """The batch is on disk."""

    def cancel(self) -> None:
        """The batch was not stored: give the bytes back."""


class RestoreRequestError(ValueError):
    """The snapshot has no such folder or messages."""


@dataclass
class RestoreResult:
    restored: int = 0
    restored_bytes: int = 0
    skipped: int = 0  # same content already in the mailbox
    shortfall: int = 0  # did not fit in the quota: not restored
    shortfall_bytes: int = 0
    shortfall_messages: list[dict[str, object]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # objects missing or damaged
    folders_created: list[str] = field(default_factory=list)


def select_messages(
    manifest: Manifest, folder: str | None, uids: Iterable[int] | None
) -> list[ManifestMessage]:
    """The whole snapshot, one folder, or the given UIDs of one folder (INBOX by default)."""
    wanted_uids = sorted(set(uids)) if uids else None
    if wanted_uids is not None and folder is None:
        folder = INBOX
    if folder is not None:
        names = {f.name for f in manifest.folders}
        # Folder names are case-sensitive, except INBOX (RFC 3501 §5.1).
        match = INBOX if folder.upper() == INBOX else (folder if folder in names else None)
        if match is None:
            raise RestoreRequestError(f"snapshot {manifest.snapshot_id} has no folder {folder!r}")
        folder = match
    chosen = [m for m in manifest.messages if folder is None or m.folder == folder]
    if wanted_uids is not None:
        by_uid = {m.uid: m for m in chosen}
        unknown = [u for u in wanted_uids if u not in by_uid]
        if unknown:
            listed = ", ".join(str(u) for u in unknown[:10])
            raise RestoreRequestError(
                f"snapshot {manifest.snapshot_id} has no UID {listed} in {folder}"
            )
        chosen = [by_uid[u] for u in wanted_uids]
    return chosen


def target_folder(original: str, into: str | None) -> str:
    """The original folder, or the same path under `into` (INBOX becomes ``<into>/INBOX``)."""
    return original if into is None else f"{into}{SEPARATOR}{original}"


def mailbox_digests(maildir: Maildir, known: dict[str, ManifestMessage]) -> set[str]:
    """SHA-256 of every message in the mailbox now. Messages the backups already know (same
    basename and size) are not opened."""
    digests: set[str] = set()
    for info in maildir.folders():
        try:
            folder = maildir.folder(info.name)
            messages = folder.messages()
        except FolderNotFound:
            continue
        for message in messages:
            seen = known.get(message.basename)
            if seen is not None and seen.size == message.size:
                digests.add(seen.sha256)
                continue
            try:
                digests.add(sha256(folder.read(message.uid)))
            except MessageNotFound:
                continue
    return digests


def restore_messages(
    store: BackupStore,
    maildir: Maildir,
    selected: list[ManifestMessage],
    into: str | None,
    present: set[str],
    reserve: Callable[[int], Reserved | None],
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Recreate each selected message whose content is not in the mailbox (`present`), with its
    flags, keywords and internal date; each content at most once per target folder. Bytes are
    reserved against the quota before storing (`reserve` gives None when they do not fit), and
    the reservation is confirmed once the batch is on disk; what does not fit is counted, not
    dropped."""
    result = RestoreResult()
    by_target: dict[str, list[ManifestMessage]] = {}
    queued: set[tuple[str, str]] = set()
    for message in selected:
        target = target_folder(message.folder, into)
        if message.sha256 in present or (target, message.sha256) in queued:
            result.skipped += 1
            continue
        queued.add((target, message.sha256))
        by_target.setdefault(target, []).append(message)
    for target, messages in by_target.items():
        try:
            folder = maildir.folder(target)
        except FolderNotFound:
            try:
                folder = maildir.create_folder(target)
                result.folders_created.append(target)
            except FolderExists:
                folder = maildir.folder(target)
        for start in range(0, len(messages), BATCH):
            batch: list[tuple[ManifestMessage, bytes]] = []
            for message in messages[start : start + BATCH]:
                try:
                    batch.append((message, store.get(message.sha256)))
                except BackupStoreError as error:
                    result.unreadable.append(str(error))
            total = sum(len(data) for _, data in batch)
            reserved = reserve(total) if batch else None
            if reserved is not None:
                _store(folder.deliver_many, batch, total, reserved, result)
            else:
                for message, data in batch:  # not all of it fits: one by one, as far as it goes
                    reserved = reserve(len(data))
                    if reserved is not None:
                        _store(folder.deliver_many, [(message, data)], len(data), reserved, result)
                    else:
                        result.shortfall += 1
                        result.shortfall_bytes += len(data)
                        result.shortfall_messages.append(
                            {
                                "folder": message.folder,
                                "uid": message.uid,
                                "size": len(data),
                                "subject": message.subject,
                            }
                        )
            if progress is not None:
                progress(len(messages[start : start + BATCH]))
    return result


def _store(
    deliver_many: Callable[[list[IncomingMessage]], object],
    batch: list[tuple[ManifestMessage, bytes]],
    total: int,
    reserved: Reserved,
    result: RestoreResult,
) -> None:
    incoming = [
        IncomingMessage(
            data,
            flags=message.flags,
            keywords=message.keywords,
            internal_date=message.internal_date,
            zone_minutes=message.zone_minutes,
        )
        for message, data in batch
    ]
    try:
        deliver_many(incoming)
    except StorageFull as error:
        # The batch was stored all or nothing: what was restored before it is whole.
        reserved.cancel()
        raise StorageFull(
            f"not enough disk space; {result.restored} message(s) were restored before the "
            "disk filled up. Free some space and run the restore again: it skips what is back"
        ) from error
    except BaseException:
        reserved.cancel()
        raise
    reserved.confirm()
    result.restored += len(batch)
    result.restored_bytes += total
