"""Retention: drop snapshots 15 days or more older than the newest good one, then orphan objects."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from provider.backup.manifest import DamagedManifest, Manifest, snapshot_time
from provider.backup.store import BackupStore


@dataclass
class RetentionResult:
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    objects_removed: int = 0
    # Why unreferenced objects were left alone this time (a manifest that cannot be read).
    objects_kept_because: str | None = None


def expired(snapshot_ids: Iterable[str], good: set[str], days: int) -> list[str]:
    """Snapshots to drop. Age is measured from the newest *good* snapshot, not from now
    (RELIABILITY B2): when backups keep failing, the last good one is never aged out."""
    ids = sorted(snapshot_ids)
    good_times = [snapshot_time(i) for i in ids if i in good]
    if not good_times:
        return []
    newest = max(good_times)
    limit = timedelta(days=days)
    return [i for i in ids if newest - snapshot_time(i) >= limit]


def apply_retention(store: BackupStore, good: set[str], days: int) -> RetentionResult:
    """Drop expired manifests, then remove the objects no remaining manifest refers to
    (the caller holds the store's exclusive lock, so no snapshot is being written)."""
    result = RetentionResult()
    ids = store.snapshot_ids()
    result.dropped = expired(ids, good, days)
    for snapshot_id in result.dropped:
        store.remove_manifest(snapshot_id)
    result.kept = [i for i in ids if i not in set(result.dropped)]
    referenced: set[str] = set()
    for snapshot_id in result.kept:
        try:
            manifest, _ = Manifest.decode(store.read_manifest_bytes(snapshot_id))
        except (DamagedManifest, OSError) as error:
            # Without this manifest we cannot know what it needs: removing nothing is safe.
            result.objects_kept_because = f"snapshot {snapshot_id}: {error}"
            return result
        referenced |= manifest.digests()
    for digest in store.digests() - referenced:
        store.remove(digest)
        result.objects_removed += 1
    return result
