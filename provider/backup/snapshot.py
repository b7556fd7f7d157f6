"""Take one snapshot of one mailbox: read only the messages the store has not seen yet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from provider.backup.manifest import (
    Manifest,
    ManifestFolder,
    ManifestMessage,
    key_headers,
    new_snapshot_id,
)
from provider.backup.store import BackupStore, sha256
from provider.mailstore import FolderNotFound, Maildir, MessageNotFound

Progress = Callable[[int], None]


@dataclass(frozen=True)
class SnapshotResult:
    manifest: Manifest
    manifest_sha256: str
    new_objects: int  # messages whose content was read from the mail store this time
    new_bytes: int  # their size before compression
    vanished: int  # listed at the start, expunged before they could be read


def take_snapshot(
    store: BackupStore,
    maildir: Maildir,
    address: str,
    moment: datetime,
    previous: Manifest | None,
    progress: Progress | None = None,
) -> SnapshotResult:
    """Snapshot every folder of `maildir` into `store` (the caller holds the store's lock).

    Incremental: a message whose Maildir basename (never changed by flag changes) is in the
    previous manifest with the same size, and whose object is in the store, is not opened.
    Consistent under deliveries and flag changes (RELIABILITY B5): each folder is listed once
    and each listed message recorded once, with the flags it had when listed; reads follow
    renames (new/ → cur/, flag changes), and a message expunged meanwhile is left out.
    """
    known = {m.basename: m for m in previous.messages} if previous else {}
    have = store.digests()
    manifest = Manifest(new_snapshot_id(moment), address, moment)
    new_objects = new_bytes = vanished = 0
    for info in maildir.folders():
        try:
            folder = maildir.folder(info.name)
            listing = folder.snapshot()
        except FolderNotFound:
            continue  # deleted while we were going through the others
        assert listing.messages is not None
        manifest.folders.append(
            ManifestFolder(info.name, info.special_use, listing.uidvalidity, listing.uidnext)
        )
        for message in listing.messages:
            seen = known.get(message.basename)
            if seen is not None and seen.size == message.size and seen.sha256 in have:
                digest = seen.sha256
                headers = {
                    "message_id": seen.message_id,
                    "sender": seen.sender,
                    "subject": seen.subject,
                    "date": seen.date,
                }
            else:
                try:
                    data = folder.read(message.uid)
                except MessageNotFound:
                    vanished += 1
                    continue
                digest = sha256(data)
                if digest not in have:
                    store.put(data, digest)
                    have.add(digest)
                    new_objects += 1
                    new_bytes += len(data)
                headers = key_headers(data)
            manifest.messages.append(
                ManifestMessage(
                    folder=info.name,
                    uid=message.uid,
                    basename=message.basename,
                    flags=tuple(sorted(message.flags)),
                    keywords=tuple(sorted(message.keywords)),
                    internal_date=message.internal_date,
                    zone_minutes=message.zone_minutes,
                    size=message.size,
                    **headers,
                    sha256=digest,
                )
            )
            if progress is not None:
                progress(1)
    data, digest = manifest.encode()
    store.write_manifest(manifest.snapshot_id, data)
    return SnapshotResult(manifest, digest, new_objects, new_bytes, vanished)
