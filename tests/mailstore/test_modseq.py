"""Mod-sequences (RFC 7162): per message, per folder, shared, persistent, never backwards."""

from __future__ import annotations

import os

import pytest

from provider.mailstore import Folder, MailStore, forget_cached_state
from provider.mailstore import maildir as maildir_module
from provider.mailstore.maildir import MODSEQ_NAME
from tests.mailstore import sample_message


@pytest.fixture
def maildir(tmp_path):
    return MailStore(tmp_path / "mail").create("alice@example.com")


@pytest.fixture
def inbox(maildir):
    return maildir.folder("INBOX")


def other_process(folder: Folder) -> Folder:
    """The same folder with a state of its own, as another process would see it."""
    other = Folder(folder._maildir, folder.name, folder.path)
    other._state = maildir_module._FolderState(folder.path)
    return other


def test_every_message_gets_a_modseq_and_the_highest_covers_them(inbox):
    uids = [inbox.deliver(sample_message(str(n))).uid for n in range(3)]
    modseqs = inbox.modseqs()
    assert sorted(modseqs.by_uid) == uids
    assert len(set(modseqs.by_uid.values())) == 3
    assert modseqs.highest == max(modseqs.by_uid.values()) > 0
    assert (inbox.path / MODSEQ_NAME).exists()


def test_an_empty_folder_has_a_positive_highest_modseq(inbox):
    assert inbox.modseqs().highest > 0
    assert inbox.modseqs().by_uid == {}


def test_a_flag_change_gets_a_new_modseq_and_a_no_op_does_not(inbox):
    first = inbox.deliver(sample_message("a")).uid
    second = inbox.deliver(sample_message("b")).uid
    before = inbox.modseqs()
    inbox.change_flags(first, "add", ["\\Seen"])
    after = inbox.modseqs()
    assert after.by_uid[first] > before.highest
    assert after.by_uid[second] == before.by_uid[second]
    assert after.highest == after.by_uid[first]
    inbox.change_flags(first, "add", ["\\Seen"])
    assert inbox.modseqs() == after


def test_delivery_and_expunge_raise_the_highest_modseq(inbox):
    first = inbox.deliver(sample_message("a")).uid
    highest = inbox.modseqs().highest
    second = inbox.deliver(sample_message("b")).uid
    modseqs = inbox.modseqs()
    assert modseqs.by_uid[second] > highest
    inbox.expunge([first])
    after = inbox.modseqs()
    assert after.highest > modseqs.highest
    assert list(after.by_uid) == [second]


def test_a_foreign_rename_is_noticed_at_the_next_sync(inbox):
    uid = inbox.deliver(sample_message("a"), flags=["\\Seen"]).uid
    before = inbox.modseqs()
    info = inbox.get(uid)
    os.rename(info.path, info.path.with_name(info.path.name + "F"))
    after = inbox.modseqs()
    assert after.by_uid[uid] > before.highest


def test_processes_share_the_values(inbox):
    uid = inbox.deliver(sample_message("a")).uid
    other = other_process(inbox)
    assert other.modseqs() == inbox.modseqs()
    other.change_flags(uid, "add", ["\\Flagged"])
    mine = inbox.modseqs()
    assert mine == other.modseqs()
    assert mine.by_uid[uid] == mine.highest


def test_values_survive_a_restart(inbox):
    inbox.deliver(sample_message("a"))
    before = inbox.modseqs()
    forget_cached_state()
    assert inbox._maildir.folder("INBOX").modseqs() == before


@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_a_lost_or_damaged_file_never_makes_values_go_backwards(inbox, damage):
    uid = inbox.deliver(sample_message("a")).uid
    before = inbox.modseqs()
    forget_cached_state()
    for suffix in ("", "-wal", "-shm"):
        path = inbox.path / (MODSEQ_NAME + suffix)
        if path.exists():
            path.unlink()
    if damage == "garble":
        (inbox.path / MODSEQ_NAME).write_bytes(b"this is not a database" * 100)
    after = inbox._maildir.folder("INBOX").modseqs()
    assert after.highest > before.highest
    assert after.by_uid[uid] > before.highest


def test_unchanged_since_changes_only_messages_not_modified_since(inbox):
    first = inbox.deliver(sample_message("a")).uid
    second = inbox.deliver(sample_message("b")).uid
    since = inbox.modseqs().highest
    inbox.change_flags(second, "add", ["\\Answered"])
    done, failed, after = inbox.change_flags_unchanged_since(
        [first, second], since, "add", ["\\Seen"]
    )
    assert [info.uid for info in done] == [first] and failed == [second]
    assert inbox.get(first).flags == {"\\Seen"}
    assert inbox.get(second).flags == {"\\Answered"}
    assert after.by_uid[first] > since
