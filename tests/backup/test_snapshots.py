"""Snapshots: manifests, incremental reads, consistency under deliveries, retention, POP3-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from provider.backup import Manifest
from provider.backup.manifest import DamagedManifest, new_snapshot_id
from provider.backup.retention import expired
from provider.mailstore import Folder, IncomingMessage
from provider.models import BackupSnapshot
from provider.services import backups, clock
from tests.backup.helpers import deliver, maildir, message
from tests.conftest import make_mailbox

DAY0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def manifest_of(address: str, snapshot_id: str) -> Manifest:
    store = backups.store_for(address)
    return Manifest.decode(store.read_manifest_bytes(snapshot_id))[0]


def test_snapshot_records_every_folder_flags_dates_and_key_headers(session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, [1, 2], flags=["\\Seen"], keywords=["$Important"])
    deliver(
        session,
        mailbox,
        [3],
        folder="Projects/2026",
        internal_date=1_700_000_000.0,
        zone_minutes=120,
    )
    with clock.frozen_at(DAY0):
        summary = backups.run_backups(session, [mailbox.address])
    [run] = summary.mailboxes
    assert run.error is None and run.messages == 3 and run.new_objects == 3
    assert run.snapshot.startswith("20261101T020000Z-")

    manifest = manifest_of(mailbox.address, run.snapshot)
    assert manifest.created_at == DAY0
    assert {f.name for f in manifest.folders} >= {"INBOX", "Projects", "Projects/2026", "Trash"}
    by_folder = {(m.folder, m.uid): m for m in manifest.messages}
    first = by_folder[("INBOX", 1)]
    assert first.flags == ("\\Seen",) and first.keywords == ("$Important",)
    assert first.subject == "message number 1" and first.message_id == "<m1@example.org>"
    assert first.sender == "Sender 1 <sender1@example.org>"
    assert first.date == "Sat, 28 Nov 2026 10:00:00 +0000"
    third = by_folder[("Projects/2026", 1)]
    assert third.internal_date == 1_700_000_000.0 and third.zone_minutes == 120
    store = backups.store_for(mailbox.address)
    assert store.root == backups.backups_root() / "example.test" / "alice"
    assert store.get(third.sha256) == message(3)
    # Stored compressed under its SHA-256, each content once.
    assert store.digests() == {m.sha256 for m in manifest.messages}
    assert store.object_path(third.sha256).read_bytes() != message(3)

    [row] = backups.list_snapshots(session, mailbox.address)
    assert (row.snapshot_id, row.messages, row.status) == (run.snapshot, 3, "complete")
    assert row.bytes == sum(m.size for m in manifest.messages)


def test_an_unchanged_mailbox_is_snapshotted_without_opening_a_message(session, monkeypatch):
    mailbox = make_mailbox(session)
    uids = deliver(session, mailbox, range(30))
    first = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    assert first.new_objects == 30
    maildir(mailbox).folder("INBOX").set_flags(uids[0], ["\\Flagged"])

    def no_reading(self: Folder, uid: int) -> bytes:
        raise AssertionError("a message file was opened")

    monkeypatch.setattr(Folder, "read", no_reading)
    second = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    assert second.error is None and second.new_objects == 0 and second.messages == 30
    flagged = [
        m for m in manifest_of(mailbox.address, second.snapshot).messages if m.uid == uids[0]
    ]
    assert flagged[0].flags == ("\\Flagged",)


def test_snapshot_during_deliveries_and_flag_changes_has_each_message_once(session, monkeypatch):
    """RELIABILITY B5: every message present at the start appears exactly once."""
    mailbox = make_mailbox(session)
    inbox_uids = deliver(session, mailbox, range(20))
    deliver(session, mailbox, range(100, 110), folder="Archive")
    box = maildir(mailbox)
    at_start = {
        (name, info.basename)
        for name in ("INBOX", "Archive")
        for info in box.folder(name).messages()
    }
    real_read = Folder.read
    counter = iter(range(1000, 2000))

    def busy_read(self: Folder, uid: int) -> bytes:
        # While the snapshot reads, mail keeps arriving and flags keep changing (new/ → cur/
        # renames of messages not read yet), in the folder being read and in others.
        for name in ("INBOX", "Archive"):
            box.folder(name).deliver_many([IncomingMessage(message(next(counter)))])
        for other in box.folder("INBOX").messages():
            if other.uid > uid:
                box.folder("INBOX").set_flags(other.uid, ["\\Seen", "\\Answered"])
                break
        return real_read(self, uid)

    monkeypatch.setattr(Folder, "read", busy_read)
    run = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    assert run.error is None and run.vanished == 0
    manifest = manifest_of(mailbox.address, run.snapshot)
    keys = [(m.folder, m.basename) for m in manifest.messages]
    assert len(keys) == len(set(keys)), "a message appears twice"
    assert at_start <= set(keys)
    contents = {m.sha256 for m in manifest.messages}
    store = backups.store_for(mailbox.address)
    assert all(store.get(d) for d in contents)
    assert len([k for k in keys if k[0] == "INBOX"]) >= len(inbox_uids)


def test_a_message_expunged_while_the_snapshot_runs_is_left_out(session, monkeypatch):
    mailbox = make_mailbox(session)
    uids = deliver(session, mailbox, range(5))
    box = maildir(mailbox)
    real_read = Folder.read

    def expunging_read(self: Folder, uid: int) -> bytes:
        if uid == uids[0]:
            box.folder("INBOX").expunge([uids[-1]])
        return real_read(self, uid)

    monkeypatch.setattr(Folder, "read", expunging_read)
    run = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    assert run.error is None and (run.messages, run.vanished) == (4, 1)


def test_a_failed_snapshot_is_never_listed_and_leaves_nothing_behind(session, monkeypatch):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, range(10))
    real_read = Folder.read
    reads = iter(range(100))

    def failing_read(self: Folder, uid: int) -> bytes:
        if next(reads) == 5:
            raise OSError(5, "Input/output error")
        return real_read(self, uid)

    monkeypatch.setattr(Folder, "read", failing_read)
    summary = backups.run_backups(session, [mailbox.address])
    assert "Input/output error" in summary.mailboxes[0].error
    assert summary.to_dict()["failed"] == 1
    store = backups.store_for(mailbox.address)
    assert backups.list_snapshots(session, mailbox.address) == []
    assert store.snapshot_ids() == []
    monkeypatch.setattr(Folder, "read", real_read)
    run = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    assert run.error is None and run.messages == 10
    assert [s.snapshot_id for s in backups.list_snapshots(session, mailbox.address)] == [
        run.snapshot
    ]
    assert list(store.tmp.iterdir()) == []


def test_a_manifest_left_unindexed_by_a_crash_is_indexed_by_the_next_run(session, monkeypatch):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, range(3))
    first = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    session.execute(BackupSnapshot.__table__.delete())
    session.commit()
    assert backups.list_snapshots(session, mailbox.address) == []
    second = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    listed = {s.snapshot_id for s in backups.list_snapshots(session, mailbox.address)}
    assert listed == {first.snapshot, second.snapshot}


def test_manifest_detects_its_own_damage(session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, range(3))
    run = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    data = backups.store_for(mailbox.address).read_manifest_bytes(run.snapshot)
    Manifest.decode(data)
    for damaged in (data[:-1], data[:-5] + bytes([data[-5] ^ 1]) + data[-4:], b"junk\n"):
        with pytest.raises(DamagedManifest):
            Manifest.decode(damaged)


def _daily_runs(session, mailbox, days: range, fail_from: int | None = None, monkeypatch=None):
    for day in days:
        # Mail comes and goes every day, so objects become unreferenced as snapshots age out.
        deliver(session, mailbox, [1000 + day])
        folder = maildir(mailbox).folder("INBOX")
        if len(folder.messages()) > 5:
            folder.expunge([folder.messages()[0].uid])
        if fail_from is not None and day >= fail_from and monkeypatch is not None:
            monkeypatch.setattr(
                "provider.services.backups.take_snapshot",
                lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")),
            )
        with clock.frozen_at(DAY0 + timedelta(days=day)):
            backups.run_backups(session, [mailbox.address])


def referenced_and_present(address: str) -> tuple[set[str], set[str]]:
    store = backups.store_for(address)
    referenced: set[str] = set()
    for snapshot_id in store.snapshot_ids():
        referenced |= manifest_of(address, snapshot_id).digests()
    return referenced, store.digests()


def test_twenty_daily_runs_keep_fifteen_snapshots_and_no_unreferenced_object(session):
    mailbox = make_mailbox(session)
    _daily_runs(session, mailbox, range(20))
    listed = backups.list_snapshots(session, mailbox.address)
    assert len(listed) == 15
    assert [s.created_at for s in listed][-1] == DAY0 + timedelta(days=5)
    store = backups.store_for(mailbox.address)
    assert len(store.snapshot_ids()) == 15
    referenced, present = referenced_and_present(mailbox.address)
    assert referenced == present
    assert len(present) == 5 + 15 - 1  # the 5 kept messages plus one per day still referenced


def test_when_backups_fail_from_day_20_the_newest_good_one_exists_on_day_40(session, monkeypatch):
    """RELIABILITY B2: retention counts from the newest good snapshot, not from now."""
    mailbox = make_mailbox(session)
    _daily_runs(session, mailbox, range(20, 41), fail_from=20, monkeypatch=monkeypatch)
    assert backups.list_snapshots(session, mailbox.address) == []
    monkeypatch.undo()

    mailbox2 = make_mailbox(session, "bob@example.test")
    _daily_runs(session, mailbox2, range(20))
    _daily_runs(session, mailbox2, range(20, 41), fail_from=20, monkeypatch=monkeypatch)
    listed = backups.list_snapshots(session, mailbox2.address)
    assert listed[0].created_at == DAY0 + timedelta(days=19)
    assert len(listed) == 15
    referenced, present = referenced_and_present(mailbox2.address)
    assert referenced == present


def test_retention_counts_from_the_newest_good_snapshot_not_a_damaged_one():
    day = [new_snapshot_id(DAY0 + timedelta(days=n)) for n in (0, 1, 15)]
    assert expired(day, good=set(day), days=15) == [day[0]]
    assert expired(day, good={day[0], day[1]}, days=15) == []
    assert expired(day, good=set(), days=15) == []
    just_under = new_snapshot_id(DAY0 + timedelta(days=15) - timedelta(seconds=1))
    assert expired([day[0], just_under], good={just_under}, days=15) == []


def test_pop3_only_mailboxes_are_never_backed_up(session):
    make_mailbox(session, "pop@example.test", protocols="pop3")
    both = make_mailbox(session, "both@example.test", protocols="imap,pop3")
    with pytest.raises(backups.NotBackedUp, match="POP3 only"):
        backups.run_backups(session, ["pop@example.test"])
    summary = backups.run_backups(session)
    assert summary.skipped_pop3_only == 1
    assert [m.address for m in summary.mailboxes] == [both.address]
    assert not backups.store_for("pop@example.test").exists()


def test_the_snapshots_index_is_per_mailbox(session):
    alice = make_mailbox(session)
    bob = make_mailbox(session, "bob@example.test")
    deliver(session, alice, [1])
    backups.run_backups(session)
    assert len(backups.list_snapshots(session, bob.address)) == 1
    rows = session.scalars(select(BackupSnapshot)).all()
    assert {r.mailbox_id for r in rows} == {alice.id, bob.id}
