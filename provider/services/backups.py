"""Time-machine backups: snapshot IMAP mailboxes, keep 15 days, restore and verify (DESIGN §4)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app, has_app_context
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from provider.backup.manifest import DamagedManifest, Manifest, ManifestMessage, snapshot_time
from provider.backup.restore import (
    RestoreRequestError,
    mailbox_digests,
    restore_messages,
    select_messages,
)
from provider.backup.retention import apply_retention as apply_store_retention
from provider.backup.snapshot import take_snapshot
from provider.backup.store import BackupStore, BackupStoreError, is_snapshot_id
from provider.backup.verify import verify_store
from provider.errors import InvalidInput, NotFound, ProviderError, RateLimited
from provider.mailstore import InvalidFolderName, Maildir, MailstoreError
from provider.mailstore import names as folder_names
from provider.models import AuditEvent, BackupRestore, BackupSnapshot, Mailbox, SnapshotStatus
from provider.services import quota, webhooks
from provider.services.audit import Actor, record
from provider.services.clock import now
from provider.services.provisioning import get_mailbox
from provider.services.storage import mail_store

DEFAULT_RETENTION_DAYS = 15
Progress = Callable[[int], None]


class NotBackedUp(InvalidInput):
    """A POP3-only mailbox: its mail leaves the server, so it has no backups."""


# --- where things are ----------------------------------------------------------------------

log = logging.getLogger(__name__)


def retention_days() -> int:
    if has_app_context():
        return int(current_app.config.get("BACKUP_RETENTION_DAYS", DEFAULT_RETENTION_DAYS))
    return DEFAULT_RETENTION_DAYS


def backups_root() -> Path:
    """DATA_DIR/backups (beside DATA_DIR/mail)."""
    return Path(current_app.config["DATA_DIR"]) / "backups"


def store_for(address: str) -> BackupStore:
    """DATA_DIR/backups/<domain>/<local>/ — the same names as the mail store's, already checked."""
    root = backups_root()
    path = mail_store().path_for(address)  # raises for anything that could leave the store
    local, domain = path.parent.name, path.parent.parent.name
    return BackupStore(root / domain / local)


def _maildir(address: str) -> Maildir:
    store = mail_store()
    return store.open(address) if store.exists(address) else store.create(address)


def _newest_manifest(store: BackupStore) -> Manifest | None:
    for snapshot_id in reversed(store.snapshot_ids()):
        try:
            manifest, _ = Manifest.decode(store.read_manifest_bytes(snapshot_id))
        except (DamagedManifest, OSError):
            continue
        return manifest
    return None


def _rows(session: Session, mailbox: Mailbox) -> dict[str, BackupSnapshot]:
    query = select(BackupSnapshot).where(BackupSnapshot.mailbox_id == mailbox.id)
    return {row.snapshot_id: row for row in session.scalars(query)}


def _row_for(mailbox: Mailbox, manifest: Manifest, digest: str, new_objects: int = 0) -> Any:
    return BackupSnapshot(
        mailbox_id=mailbox.id,
        snapshot_id=manifest.snapshot_id,
        created_at=manifest.created_at,
        messages=len(manifest.messages),
        folders=len(manifest.folders),
        bytes=manifest.total_bytes,
        new_objects=new_objects,
        manifest_sha256=digest,
        status=SnapshotStatus.COMPLETE.value,
    )


def _sync_index(session: Session, mailbox: Mailbox, store: BackupStore) -> None:
    """Index complete manifests that a crash left unlisted (written, but the row not committed)."""
    rows = _rows(session, mailbox)
    for snapshot_id in store.snapshot_ids():
        if snapshot_id in rows:
            continue
        try:
            manifest, digest = Manifest.decode(store.read_manifest_bytes(snapshot_id))
        except (DamagedManifest, OSError):
            continue  # verify names it; retention ages it out
        session.add(_row_for(mailbox, manifest, digest))


# --- snapshots ----------------------------------------------------------------------------


@dataclass
class MailboxRun:
    address: str
    snapshot: str | None = None
    messages: int = 0
    bytes: int = 0
    new_objects: int = 0
    new_bytes: int = 0
    vanished: int = 0
    seconds: float = 0.0
    error: str | None = None
    dropped: list[str] = field(default_factory=list)
    objects_removed: int = 0


@dataclass
class RunSummary:
    mailboxes: list[MailboxRun] = field(default_factory=list)
    skipped_pop3_only: int = 0

    @property
    def failed(self) -> list[MailboxRun]:
        return [m for m in self.mailboxes if m.error is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshots": sum(1 for m in self.mailboxes if m.snapshot),
            "failed": len(self.failed),
            "skipped_pop3_only": self.skipped_pop3_only,
            "messages": sum(m.messages for m in self.mailboxes),
            "bytes": sum(m.bytes for m in self.mailboxes),
            "new_objects": sum(m.new_objects for m in self.mailboxes),
            "snapshots_dropped": sum(len(m.dropped) for m in self.mailboxes),
            "objects_removed": sum(m.objects_removed for m in self.mailboxes),
            "mailboxes": [asdict(m) for m in self.mailboxes],
        }


def backup_targets(session: Session, addresses: Iterable[str] | None) -> tuple[list[Mailbox], int]:
    """The mailboxes to snapshot and how many POP3-only ones were left out. Named addresses
    must all exist and use IMAP (checked before anything is done)."""
    if addresses is None:
        everyone = list(session.scalars(select(Mailbox).order_by(Mailbox.address)))
        chosen = [m for m in everyone if m.imap_enabled]
        return chosen, len(everyone) - len(chosen)
    chosen = []
    for address in dict.fromkeys(a.strip().lower() for a in addresses):
        mailbox = get_mailbox(session, address)
        if not mailbox.imap_enabled:
            raise NotBackedUp(
                f"{mailbox.address} uses POP3 only: its mail leaves the server, so it has no "
                "backups",
                "address",
            )
        chosen.append(mailbox)
    return chosen, 0


def snapshot_mailbox(
    session: Session, mailbox: Mailbox, *, retention: bool = True, progress: Progress | None = None
) -> MailboxRun:
    """Snapshot one mailbox now (then apply retention); errors are reported, not raised."""
    run = MailboxRun(mailbox.address)
    started = time.monotonic()
    store = store_for(mailbox.address)
    try:
        with store.locked():
            store.clean_tmp()
            _sync_index(session, mailbox, store)
            session.commit()
            result = take_snapshot(
                store,
                _maildir(mailbox.address),
                mailbox.address,
                now(),
                _newest_manifest(store),
                progress,
            )
            manifest = result.manifest
            session.add(_row_for(mailbox, manifest, result.manifest_sha256, result.new_objects))
            session.commit()
            run.snapshot = manifest.snapshot_id
            run.messages, run.bytes = len(manifest.messages), manifest.total_bytes
            run.new_objects, run.new_bytes = result.new_objects, result.new_bytes
            run.vanished = result.vanished
            if retention:
                kept = _retention_locked(session, mailbox, store)
                run.dropped, run.objects_removed = kept.dropped, kept.objects_removed
    except (OSError, MailstoreError, BackupStoreError) as error:
        session.rollback()
        run.error = f"{type(error).__name__}: {error}"
        _announce_failure(session, run)
    run.seconds = round(time.monotonic() - started, 3)
    return run


def _announce_failure(session: Session, run: MailboxRun) -> None:
    """The `backup.failed` webhook event, committed on its own (the failed snapshot wrote
    nothing to go with it); a failure to write it is logged, never raised."""
    try:
        webhooks.emit(
            session,
            "backup.failed",
            domain=run.address.rpartition("@")[2],
            object_key=webhooks.mailbox_key(run.address),
            data={"address": run.address, "error": run.error},
        )
        session.commit()
    except Exception:
        session.rollback()
        log.exception("the backup.failed event of %s could not be written", run.address)


def run_backups(
    session: Session,
    addresses: Iterable[str] | None = None,
    *,
    retention: bool = True,
    progress: Callable[[Mailbox], None] | None = None,
) -> RunSummary:
    """Snapshot the named mailboxes, or every IMAP mailbox (POP3-only ones are counted and
    skipped); then retention for each. One mailbox failing does not stop the others."""
    mailboxes, skipped = backup_targets(session, addresses)
    summary = RunSummary(skipped_pop3_only=skipped)
    for mailbox in mailboxes:
        summary.mailboxes.append(snapshot_mailbox(session, mailbox, retention=retention))
        if progress is not None:
            progress(mailbox)
    return summary


# --- snapshots on demand ------------------------------------------------------------------

SNAPSHOT_TAKEN = "backup.snapshot"
DEFAULT_OWNER_SNAPSHOTS_PER_HOUR = 3


class TooManySnapshots(RateLimited):
    """An owner asked for more snapshots in an hour than BACKUP_OWNER_SNAPSHOTS_PER_HOUR."""


def owner_snapshots_per_hour() -> int:
    if has_app_context():
        value = current_app.config.get(
            "BACKUP_OWNER_SNAPSHOTS_PER_HOUR", DEFAULT_OWNER_SNAPSHOTS_PER_HOUR
        )
        return max(0, int(value))
    return DEFAULT_OWNER_SNAPSHOTS_PER_HOUR


def _owner_snapshots_since(session: Session, mailbox: Mailbox, actor: Actor) -> list[datetime]:
    since = now() - timedelta(hours=1)
    return list(
        session.scalars(
            select(AuditEvent.occurred_at)
            .where(
                AuditEvent.action == SNAPSHOT_TAKEN,
                AuditEvent.target == mailbox.address,
                AuditEvent.actor == actor.name,
                AuditEvent.occurred_at >= since,
            )
            .order_by(AuditEvent.occurred_at)
        )
    )


def owner_snapshots_left(session: Session, address: str, actor: Actor) -> int:
    """How many more snapshots the owner may ask for in the hour that ends now."""
    mailbox = get_mailbox(session, address)
    taken = len(_owner_snapshots_since(session, mailbox, actor))
    return max(0, owner_snapshots_per_hour() - taken)


def snapshot_now(
    session: Session, address: str, *, actor: Actor, rate_limited: bool = False
) -> MailboxRun:
    """Take one mailbox's snapshot now, on request (then retention), and audit it. IMAP
    mailboxes only; with `rate_limited` (the owner's button) at most
    BACKUP_OWNER_SNAPSHOTS_PER_HOUR in any hour. A failed snapshot raises with its reason."""
    mailbox = get_mailbox(session, address)
    if not mailbox.imap_enabled:
        raise NotBackedUp(
            f"{mailbox.address} uses POP3 only: its mail leaves the server, so it has no backups",
            "address",
        )
    if rate_limited:
        limit = owner_snapshots_per_hour()
        taken = _owner_snapshots_since(session, mailbox, actor)
        if len(taken) >= limit:
            again = (taken[-limit] if limit else now()) + timedelta(hours=1)
            raise TooManySnapshots(
                f"At most {limit} snapshots an hour can be taken from here; the next one can be "
                f"taken at {again:%H:%M} UTC. The nightly backup still runs as usual."
            )
    run = snapshot_mailbox(session, mailbox)
    if run.error is not None:
        raise ProviderError(f"The snapshot could not be taken: {run.error}")
    record(
        session,
        actor,
        SNAPSHOT_TAKEN,
        mailbox.address,
        domain=mailbox.address.rpartition("@")[2],
        after={"snapshot": run.snapshot, "messages": run.messages, "bytes": run.bytes},
    )
    session.commit()
    return run


# --- retention ----------------------------------------------------------------------------


@dataclass
class RetentionReport:
    dropped: list[str] = field(default_factory=list)
    objects_removed: int = 0
    objects_kept_because: str | None = None


def _retention_locked(session: Session, mailbox: Mailbox, store: BackupStore) -> RetentionReport:
    rows = _rows(session, mailbox)
    on_disk = set(store.snapshot_ids())
    good = {i for i, row in rows.items() if row.status == SnapshotStatus.COMPLETE and i in on_disk}
    result = apply_store_retention(store, good, retention_days())
    # Index rows age out by the same rule, including any whose manifest has disappeared.
    newest_good = max((snapshot_time(i) for i in good), default=None)
    dropped = set(result.dropped)
    if newest_good is not None:
        limit = timedelta(days=retention_days())
        dropped |= {i for i in rows if newest_good - snapshot_time(i) >= limit}
    if dropped:
        session.execute(
            delete(BackupSnapshot).where(
                BackupSnapshot.mailbox_id == mailbox.id, BackupSnapshot.snapshot_id.in_(dropped)
            )
        )
    session.commit()
    return RetentionReport(sorted(dropped), result.objects_removed, result.objects_kept_because)


def apply_retention(session: Session, address: str) -> RetentionReport:
    """Drop snapshots 15 days or more older than the newest good one, then orphan objects."""
    mailbox = get_mailbox(session, address)
    store = store_for(mailbox.address)
    if not store.exists():
        return RetentionReport()
    with store.locked():
        return _retention_locked(session, mailbox, store)


# --- listing and reading -------------------------------------------------------------------


def list_snapshots(session: Session, address: str) -> list[BackupSnapshot]:
    """The mailbox's complete snapshots, newest first."""
    mailbox = get_mailbox(session, address)
    query = (
        select(BackupSnapshot)
        .where(BackupSnapshot.mailbox_id == mailbox.id)
        .order_by(BackupSnapshot.created_at.desc(), BackupSnapshot.snapshot_id.desc())
    )
    return list(session.scalars(query))


@dataclass(frozen=True)
class SnapshotSummary:
    """How many snapshots a mailbox has and when the newest was taken."""

    count: int
    latest: datetime | None


def snapshot_summaries(session: Session, mailbox_ids: Iterable[int]) -> dict[int, SnapshotSummary]:
    """Snapshot counts and newest times of some mailboxes, in one query (the finder's list)."""
    ids = sorted(set(mailbox_ids))
    if not ids:
        return {}
    query = (
        select(
            BackupSnapshot.mailbox_id,
            func.count(BackupSnapshot.id),
            func.max(BackupSnapshot.created_at),
        )
        .where(BackupSnapshot.mailbox_id.in_(ids))
        .group_by(BackupSnapshot.mailbox_id)
    )
    found = {
        mailbox_id: SnapshotSummary(count, latest)
        for mailbox_id, count, latest in session.execute(query)
    }
    return {i: found.get(i, SnapshotSummary(0, None)) for i in ids}


def load_manifest(session: Session, address: str, snapshot_id: str) -> Manifest:
    """A listed snapshot's manifest (for restore, and for browsing it)."""
    mailbox = get_mailbox(session, address)
    snapshot_id = snapshot_id.strip()
    if not is_snapshot_id(snapshot_id):
        raise InvalidInput(f"{snapshot_id!r} is not a snapshot id (see backup list)", "snapshot")
    if snapshot_id not in _rows(session, mailbox):
        raise NotFound(f"{mailbox.address} has no snapshot {snapshot_id}", "snapshot")
    try:
        manifest, _ = Manifest.decode(store_for(mailbox.address).read_manifest_bytes(snapshot_id))
    except FileNotFoundError:
        raise NotFound(f"snapshot {snapshot_id} is missing from the backup store") from None
    except DamagedManifest as error:
        raise ProviderError(f"snapshot {snapshot_id} is damaged: {error}") from None
    return manifest


def read_message(session: Session, address: str, snapshot_id: str, folder: str, uid: int) -> bytes:
    """One message of a snapshot, as it was (for viewing or an .eml download)."""
    manifest = load_manifest(session, address, snapshot_id)
    try:
        [message] = select_messages(manifest, folder, [uid])
    except RestoreRequestError as error:
        raise NotFound(str(error)) from None
    try:
        return store_for(address).get(message.sha256)
    except BackupStoreError as error:
        raise ProviderError(f"message cannot be read from the backup: {error}") from None


def present_digests(session: Session, address: str, manifest: Manifest) -> set[str]:
    """SHA-256 of every message the mailbox holds now, by the rule restore skips by: a
    snapshot's message whose digest is not here is gone from the mailbox (in any folder)."""
    mailbox = get_mailbox(session, address)
    known: dict[str, ManifestMessage] = {m.basename: m for m in manifest.messages}
    store = store_for(mailbox.address)
    if store.exists():
        with store.locked(shared=True):
            newest = _newest_manifest(store)
        if newest is not None:
            known.update({m.basename: m for m in newest.messages})
    return mailbox_digests(_maildir(mailbox.address), known)


# --- restore ------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    address: str
    snapshot: str
    scope: str
    folder: str | None
    uids: list[int] | None
    into: str | None
    selected: int = 0
    restored: int = 0
    restored_bytes: int = 0
    skipped: int = 0
    shortfall: int = 0
    shortfall_bytes: int = 0
    shortfall_messages: list[dict[str, object]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    folders_created: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore(
    session: Session,
    address: str,
    snapshot_id: str,
    folder: str | None = None,
    uids: Iterable[int] | None = None,
    into: str | None = None,
    *,
    actor: Actor,
    progress: Progress | None = None,
) -> RestoreReport:
    """Bring back from a snapshot what the mailbox no longer has (DESIGN §4, RELIABILITY B3/B4):
    whole snapshot, one folder, or chosen UIDs of a folder; into the original folders or under
    `into`. A message is skipped when the same content (SHA-256) is anywhere in the mailbox;
    restored mail counts against the quota and what does not fit is reported as a shortfall."""
    mailbox = get_mailbox(session, address)
    uid_list = sorted(set(uids)) if uids else None
    if into is not None:
        try:
            into = folder_names.normalize_folder_name(into)
        except ValueError as error:
            raise InvalidInput(f"--into: {error}", "into") from None
    manifest = load_manifest(session, mailbox.address, snapshot_id)
    try:
        selected = select_messages(manifest, folder, uid_list)
    except RestoreRequestError as error:
        raise NotFound(str(error), "folder") from None
    scope = "messages" if uid_list else "folder" if folder else "mailbox"
    report = RestoreReport(
        mailbox.address,
        manifest.snapshot_id,
        scope,
        selected[0].folder if selected and folder else folder,
        uid_list,
        into,
        selected=len(selected),
    )
    mailbox_id = mailbox.id

    def reserve(nbytes: int) -> quota.QuotaHold | None:
        # Journaled until the batch is on disk, so a restore killed mid-write is settled at
        # the next start (quota.settle_interrupted) instead of leaving the usage over-counted.
        return quota.hold(session, mailbox_id, nbytes)

    store = store_for(mailbox.address)
    with store.locked(shared=True):
        maildir = _maildir(mailbox.address)
        newest = _newest_manifest(store)
        known: dict[str, ManifestMessage] = {m.basename: m for m in manifest.messages}
        if newest is not None:
            known.update({m.basename: m for m in newest.messages})
        present = mailbox_digests(maildir, known)
        try:
            result = restore_messages(store, maildir, selected, into, present, reserve, progress)
        except (InvalidFolderName, MailstoreError, OSError) as error:
            raise ProviderError(f"restore stopped: {error}") from None
    for name in ("restored", "restored_bytes", "skipped", "shortfall", "shortfall_bytes"):
        setattr(report, name, getattr(result, name))
    report.shortfall_messages = result.shortfall_messages
    report.unreadable = result.unreadable
    report.folders_created = result.folders_created
    quota.update_warning_level(session, mailbox_id)
    session.add(
        BackupRestore(
            mailbox_id=mailbox_id,
            occurred_at=now(),
            snapshot_id=report.snapshot,
            scope=scope,
            folder=report.folder,
            uids=uid_list,
            into_folder=into,
            restored=report.restored,
            restored_bytes=report.restored_bytes,
            skipped=report.skipped,
            shortfall=report.shortfall,
            shortfall_bytes=report.shortfall_bytes,
            actor=actor.name,
        )
    )
    after = {k: v for k, v in report.to_dict().items() if k != "shortfall_messages"}
    record(
        session,
        actor,
        "backup.restore",
        mailbox.address,
        domain=mailbox.address.rpartition("@")[2],
        after=after,
    )
    session.commit()
    return report


def restore_history(session: Session, address: str) -> list[BackupRestore]:
    mailbox = get_mailbox(session, address)
    query = (
        select(BackupRestore)
        .where(BackupRestore.mailbox_id == mailbox.id)
        .order_by(BackupRestore.occurred_at.desc(), BackupRestore.id.desc())
    )
    return list(session.scalars(query))


# --- verify -------------------------------------------------------------------------------


@dataclass
class MailboxVerify:
    address: str
    snapshots: int = 0
    objects_checked: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    damaged_snapshots: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    mailboxes: list[MailboxVerify] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.mailboxes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mailboxes": [{**asdict(m), "ok": m.ok} for m in self.mailboxes],
        }


def verify(
    session: Session,
    addresses: Iterable[str] | None = None,
    *,
    progress: Callable[[Mailbox], None] | None = None,
) -> VerifyReport:
    """Re-read every object against its hash and every manifest; name what is damaged or
    missing and the snapshots that need it; mark those snapshots damaged in the index."""
    if addresses is None:
        mailboxes = list(session.scalars(select(Mailbox).order_by(Mailbox.address)))
    else:
        mailboxes = [get_mailbox(session, a) for a in dict.fromkeys(addresses)]
    report = VerifyReport()
    for mailbox in mailboxes:
        store = store_for(mailbox.address)
        rows = _rows(session, mailbox)
        if not store.exists() and not rows:
            if progress is not None:
                progress(mailbox)
            continue
        outcome = MailboxVerify(mailbox.address)
        with store.locked():
            result = verify_store(store)
        outcome.snapshots = len(result.snapshots) + len(result.damaged_manifests)
        outcome.objects_checked = result.objects_checked
        for problem in result.problems:
            outcome.problems.append(asdict(problem))
        for snapshot_id, detail in sorted(result.damaged_manifests.items()):
            path = str(store.manifest_path(snapshot_id))
            outcome.problems.append(
                {"manifest": snapshot_id, "problem": "damaged", "detail": detail, "path": path}
            )
        on_disk = set(result.snapshots) | set(result.damaged_manifests)
        for snapshot_id in sorted(set(rows) - on_disk):
            path = str(store.manifest_path(snapshot_id))
            outcome.problems.append(
                {"manifest": snapshot_id, "problem": "missing", "detail": "", "path": path}
            )
        bad = result.bad_snapshots() | (set(rows) - on_disk)
        checked_at = now()
        for snapshot_id, row in rows.items():
            row.status = (
                SnapshotStatus.DAMAGED if snapshot_id in bad else SnapshotStatus.COMPLETE
            ).value
            row.verified_at = checked_at
        outcome.damaged_snapshots = sorted(bad)
        session.commit()
        report.mailboxes.append(outcome)
        if progress is not None:
            progress(mailbox)
    return report
