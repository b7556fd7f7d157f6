"""Verify a mailbox's backups by reading the data: every object against its hash, every manifest."""

from __future__ import annotations

from dataclasses import dataclass, field

from provider.backup.manifest import DamagedManifest, Manifest
from provider.backup.store import BackupStore, DamagedObject, MissingObject


@dataclass
class ObjectProblem:
    digest: str
    problem: str  # "damaged" or "missing"
    detail: str
    path: str
    snapshots: list[str] = field(default_factory=list)  # the snapshots that refer to it


@dataclass
class VerifyResult:
    snapshots: dict[str, str] = field(default_factory=dict)  # id → manifest SHA-256
    damaged_manifests: dict[str, str] = field(default_factory=dict)  # id → what is wrong
    objects_checked: int = 0
    problems: list[ObjectProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.damaged_manifests

    def bad_snapshots(self) -> set[str]:
        bad = set(self.damaged_manifests)
        for problem in self.problems:
            bad.update(problem.snapshots)
        return bad


def verify_store(store: BackupStore, *, quarantine: bool = True) -> VerifyResult:
    """Re-read everything (RELIABILITY B1). Damaged objects are moved to damaged/ (with
    `quarantine`), so the next snapshot stores those messages again if the mailbox still has
    them — under the same name, which makes the older snapshots whole again."""
    result = VerifyResult()
    users: dict[str, list[str]] = {}
    for snapshot_id in store.snapshot_ids():
        try:
            manifest, digest = Manifest.decode(store.read_manifest_bytes(snapshot_id))
        except (DamagedManifest, OSError) as error:
            result.damaged_manifests[snapshot_id] = str(error)
            continue
        if manifest.snapshot_id != snapshot_id:
            result.damaged_manifests[snapshot_id] = "manifest names another snapshot"
            continue
        result.snapshots[snapshot_id] = digest
        for object_digest in manifest.digests():
            users.setdefault(object_digest, []).append(snapshot_id)
    present = store.digests()
    for digest in sorted(present | set(users)):
        path = store.object_path(digest)
        try:
            store.get(digest)
        except MissingObject as error:
            result.problems.append(
                ObjectProblem(digest, "missing", str(error), str(path), users.get(digest, []))
            )
            continue
        except DamagedObject as error:
            if quarantine:
                path = store.quarantine(digest)
            result.problems.append(
                ObjectProblem(digest, "damaged", str(error), str(path), users.get(digest, []))
            )
        result.objects_checked += 1
    return result
