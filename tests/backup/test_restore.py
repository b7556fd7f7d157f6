"""Restore: only adds, never duplicates, keeps flags and dates, respects quota, is recorded."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from provider.errors import InvalidInput, NotFound
from provider.models import AuditEvent, Mailbox
from provider.services import backups
from tests.backup.helpers import bodies, contents, deliver, maildir, message
from tests.conftest import TEST_ACTOR, make_mailbox


def snapshot(session, mailbox) -> str:
    run = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    assert run.error is None, run.error
    return run.snapshot


def restore(session, mailbox, snapshot_id, **options):
    return backups.restore(session, mailbox.address, snapshot_id, actor=TEST_ACTOR, **options)


def test_restore_brings_back_what_was_lost_and_leaves_newer_mail_alone(session):
    """The issue's done-when: 50 delivered and snapshotted; 20 expunged, flags changed on 5,
    3 new; restore gives 53 with the 20 back with their flags, the 3 new untouched."""
    mailbox = make_mailbox(session)
    uids = deliver(session, mailbox, range(50))
    inbox = maildir(mailbox).folder("INBOX")
    for uid in uids[:10]:
        inbox.set_flags(uid, ["\\Seen"], ["$Work"])
    before = {data: info for data, info in contents(mailbox)}
    snapshot_id = snapshot(session, mailbox)

    inbox.expunge(uids[:20])
    for uid in uids[30:35]:
        inbox.set_flags(uid, ["\\Flagged", "\\Deleted"])
    deliver(session, mailbox, [900, 901, 902])
    after_changes = {data: info for data, info in contents(mailbox)}

    report = restore(session, mailbox, snapshot_id)
    assert (report.selected, report.restored, report.skipped, report.shortfall) == (50, 20, 30, 0)
    now_there = contents(mailbox)
    assert len(now_there) == 53
    datas = [data for data, _ in now_there]
    assert len(set(datas)) == 53, "duplicates"
    by_data = {data: info for data, info in now_there}
    for data, info in before.items():
        if data in after_changes:  # never overwritten: current flags win
            assert by_data[data].flags == after_changes[data].flags
            assert by_data[data].uid == after_changes[data].uid
        else:  # brought back with its original flags, keywords and internal date
            assert by_data[data].flags == info.flags
            assert by_data[data].keywords == info.keywords
            assert by_data[data].internal_date == info.internal_date
    for n in (900, 901, 902):
        assert message(n) in by_data
    assert by_data[message(0)].flags == frozenset({"\\Seen"})

    again = restore(session, mailbox, snapshot_id)
    assert (again.restored, again.skipped) == (0, 50)
    assert sorted(bodies(mailbox)) == sorted(datas)


def test_whole_mailbox_restore_recreates_deleted_folders_with_structure(session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, [1, 2], folder="Clients/Acme", internal_date=1_600_000_000.0)
    deliver(session, mailbox, [3])
    snapshot_id = snapshot(session, mailbox)
    maildir(mailbox).delete_folder("Clients/Acme")
    maildir(mailbox).delete_folder("Clients")

    report = restore(session, mailbox, snapshot_id)
    assert report.restored == 2 and report.skipped == 1
    assert "Clients/Acme" in report.folders_created
    restored = contents(mailbox, "Clients/Acme")
    assert sorted(d for d, _ in restored) == [message(1), message(2)]
    assert all(info.internal_date == 1_600_000_000.0 for _, info in restored)


def test_restore_into_a_folder_keeps_the_structure_under_it(session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, [1], folder="Clients/Acme")
    deliver(session, mailbox, [2])
    snapshot_id = snapshot(session, mailbox)
    box = maildir(mailbox)
    box.folder("Clients/Acme").expunge([1])
    box.folder("INBOX").expunge([1])

    report = restore(session, mailbox, snapshot_id, into="Restored")
    assert report.restored == 2
    assert bodies(mailbox, "Restored/Clients/Acme") == [message(1)]
    assert bodies(mailbox, "Restored/INBOX") == [message(2)]
    assert bodies(mailbox, "INBOX") == [] and bodies(mailbox, "Clients/Acme") == []


def test_restore_one_folder_or_chosen_uids(session):
    mailbox = make_mailbox(session)
    uids = deliver(session, mailbox, range(5))
    deliver(session, mailbox, [10, 11], folder="Archive")
    snapshot_id = snapshot(session, mailbox)
    box = maildir(mailbox)
    box.folder("INBOX").expunge(uids)
    box.folder("Archive").expunge([1, 2])

    report = restore(session, mailbox, snapshot_id, folder="Archive")
    assert report.restored == 2 and bodies(mailbox, "INBOX") == []
    report = restore(session, mailbox, snapshot_id, uids=[uids[1], uids[3]])
    assert report.restored == 2 and report.scope == "messages"
    assert sorted(bodies(mailbox)) == sorted([message(1), message(3)])
    report = restore(session, mailbox, snapshot_id, folder="inbox", uids=[uids[1]])
    assert (report.restored, report.skipped) == (0, 1)


def test_restore_refuses_unknown_snapshots_folders_and_uids(session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, [1])
    snapshot_id = snapshot(session, mailbox)
    with pytest.raises(InvalidInput, match="not a snapshot id"):
        restore(session, mailbox, "yesterday")
    with pytest.raises(NotFound, match="has no snapshot"):
        restore(session, mailbox, "20200101T000000Z-abcdef")
    with pytest.raises(NotFound, match="no folder 'Nope'"):
        restore(session, mailbox, snapshot_id, folder="Nope")
    with pytest.raises(NotFound, match="no UID 99"):
        restore(session, mailbox, snapshot_id, uids=[99])
    with pytest.raises(NotFound, match="does not exist"):
        backups.restore(session, "nobody@example.test", snapshot_id, actor=TEST_ACTOR)


def test_a_message_without_message_id_is_restored_once(session):
    mailbox = make_mailbox(session)
    box = maildir(mailbox)
    box.folder("INBOX").deliver(message(7, message_id=False))
    box.folder("INBOX").deliver(message(8, message_id=False))
    snapshot_id = snapshot(session, mailbox)
    box.folder("INBOX").expunge([1])
    assert restore(session, mailbox, snapshot_id).restored == 1
    assert restore(session, mailbox, snapshot_id).restored == 0
    assert sorted(bodies(mailbox)) == [message(7, message_id=False), message(8, message_id=False)]


def test_a_message_moved_to_another_folder_is_not_duplicated(session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, [1])
    snapshot_id = snapshot(session, mailbox)
    box = maildir(mailbox)
    box.folder("Archive").deliver(message(1))
    box.folder("INBOX").expunge([1])
    report = restore(session, mailbox, snapshot_id)
    assert (report.restored, report.skipped) == (0, 1)


@pytest.fixture
def app_config(app_config):
    app_config["QUOTA_MIN_GB"] = 0.000001
    return app_config


def test_restore_into_a_nearly_full_mailbox_reports_the_shortfall(session):
    mailbox = make_mailbox(session, quota_gb=0.000001)  # 1073 bytes
    uids = deliver(session, mailbox, range(10))
    snapshot_id = snapshot(session, mailbox)
    box = maildir(mailbox)
    removed = box.folder("INBOX").expunge(uids)
    from provider.services import quota

    quota.release(session, mailbox.id, sum(len(message(n)) for n in range(10)))
    session.commit()
    deliver(session, mailbox, [500])
    assert len(removed) == 10
    size = len(message(1))
    room = mailbox.quota_bytes - session.scalar(
        select(Mailbox.used_bytes).where(Mailbox.id == mailbox.id)
    )
    fits = room // size

    report = restore(session, mailbox, snapshot_id)
    assert report.restored == fits and report.shortfall == 10 - fits > 0
    assert report.shortfall_bytes == sum(m["size"] for m in report.shortfall_messages)
    assert len(bodies(mailbox)) == 1 + fits
    used = session.scalar(select(Mailbox.used_bytes).where(Mailbox.id == mailbox.id))
    assert used <= mailbox.quota_bytes
    [latest, *_] = backups.restore_history(session, mailbox.address)
    assert (latest.restored, latest.shortfall, latest.actor) == (fits, 10 - fits, "test")
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "backup.restore")).one()
    assert event.target == mailbox.address and event.after["shortfall"] == 10 - fits
