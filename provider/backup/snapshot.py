"""Take one snapshot of one mailbox: read only the messages the store has not seen yet."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
from provider.mailstore import Folder, FolderNotFound, Maildir, MessageInfo, MessageNotFound

Progress = Callable[[int], None]
BATCH = 500  # messages read, hashed and stored (one file-system sync) at a time
READERS = 4  # threads: reading, SHA-256 and zlib release the GIL


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
    # Messages to read, with where their entry goes: read, hashed and stored in parallel batches.
    to_read: list[tuple[int, str, Folder, MessageInfo]] = []
    entries: list[ManifestMessage | None] = []
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
                headers = {
                    "message_id": seen.message_id,
                    "sender": seen.sender,
                    "subject": seen.subject,
                    "date": seen.date,
                }
                entries.append(_entry(info.name, message, headers, seen.sha256))
                if progress is not None:
                    progress(1)
            else:
                to_read.append((len(entries), info.name, folder, message))
                entries.append(None)

    def read(item: tuple[int, str, Folder, MessageInfo]) -> tuple[bytes, str] | None:
        _, _, folder, message = item
        try:
            data = folder.read(message.uid)
        except MessageNotFound:
            return None
        return data, sha256(data)

    with ThreadPoolExecutor(max_workers=READERS) as pool:
        for start in range(0, len(to_read), BATCH):
            batch = to_read[start : start + BATCH]
            results = list(pool.map(read, batch))
            fresh = [r for r in results if r is not None and r[1] not in have]
            written = store.put_many([(digest, data) for data, digest in fresh])
            new_objects += written
            new_bytes += sum(
                len(data) for data in {digest: data for data, digest in fresh}.values()
            )
            for (index, name, _, message), result in zip(batch, results, strict=True):
                if result is None:
                    vanished += 1
                    continue
                data, digest = result
                have.add(digest)
                entries[index] = _entry(name, message, key_headers(data), digest)
            if progress is not None:
                progress(len(batch))
    manifest.messages.extend(entry for entry in entries if entry is not None)
    data, digest = manifest.encode()
    store.write_manifest(manifest.snapshot_id, data)
    return SnapshotResult(manifest, digest, new_objects, new_bytes, vanished)


def _entry(
    folder: str, message: MessageInfo, headers: dict[str, str | None], digest: str
) -> ManifestMessage:
    return ManifestMessage(
        folder=folder,
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
