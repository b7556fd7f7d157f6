"""Crash safety (RELIABILITY D1, D2, P6): a message is whole and visible, or absent."""

from __future__ import annotations

import errno
import multiprocessing
import os
import time

import pytest

from provider.mailstore import TMP_MAX_AGE, IncomingMessage, MailStore, diskio, forget_cached_state
from provider.mailstore import maildir as maildir_module
from provider.mailstore import uidlist as uidlist_module
from tests.mailstore import age, files_in, sample_message, uidlist_lines

ADDRESS = "alice@example.com"


@pytest.fixture
def store(tmp_path):
    return MailStore(tmp_path / "mail")


@pytest.fixture
def inbox(store):
    folder = store.create(ADDRESS).folder("INBOX")
    folder.deliver(sample_message("already there"))
    return folder


def fail_on_call(monkeypatch, owner, name: str, call: int) -> None:
    """Make owner.name raise EIO on its call-th call (counting from 1); other calls work."""
    real = getattr(owner, name)
    count = 0

    def flaky(*args, **kwargs):
        nonlocal count
        count += 1
        if count == call:
            raise OSError(errno.EIO, f"injected failure in {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)


FAILURES = {
    # name: (what to patch, attribute, failing call)
    "writing the message": (diskio, "write_all", 1),
    "setting the internal date": (os, "utime", 1),
    "fsync of the message file": (os, "fsync", 1),
    "link into new/": (os, "link", 1),
    "unlinking the tmp name": (os, "unlink", 1),
    "fsync of new/": (maildir_module, "fsync_directory", 1),
    "the uidlist append": (uidlist_module.UidlistFile, "append", 1),
    "fsync of the uidlist append": (os, "fsync", 3),
}


@pytest.mark.parametrize("step", list(FAILURES))
def test_failure_at_any_step_of_delivery_leaves_no_trace(inbox, monkeypatch, step):
    names_before = {sub: files_in(inbox.path, sub) for sub in ("new", "cur", "tmp")}
    lines_before = uidlist_lines(inbox.path)
    uidnext_before = inbox.uidnext
    owner, attribute, call = FAILURES[step]
    fail_on_call(monkeypatch, owner, attribute, call)
    with pytest.raises(OSError, match="injected failure"):
        inbox.deliver(sample_message("doomed"), internal_date=1_600_000_000)
    monkeypatch.undo()
    for subdir in ("new", "cur", "tmp"):
        assert files_in(inbox.path, subdir) == names_before[subdir], subdir
    lines_after = uidlist_lines(inbox.path)
    assert lines_after[1:] == lines_before[1:]  # no uidlist line for the failed message
    assert [m.uid for m in inbox.messages()] == [1]
    forget_cached_state()
    again = MailStore(inbox.path.parent.parent.parent).open(ADDRESS).folder("INBOX")
    assert [m.uid for m in again.messages()] == [1]
    assert again.deliver(sample_message("next")).uid >= uidnext_before


def test_failed_uidlist_append_never_lets_its_uid_be_used_again(inbox, monkeypatch):
    # A reader may have seen the appended line before the fsync failed: that UID is burnt.
    fail_on_call(monkeypatch, os, "fsync", 3)
    with pytest.raises(OSError):
        inbox.deliver(sample_message("doomed"))
    monkeypatch.undo()
    assert uidlist_lines(inbox.path)[0].split()[2] == "N3"
    assert inbox.deliver(sample_message("next")).uid == 3


def test_several_messages_are_stored_all_or_nothing(inbox, monkeypatch):
    fail_on_call(monkeypatch, os, "link", 3)
    batch = [IncomingMessage(sample_message(f"b{n}"), flags=["\\Seen"]) for n in range(5)]
    with pytest.raises(OSError):
        inbox.deliver_many(batch)
    monkeypatch.undo()
    assert [m.uid for m in inbox.messages()] == [1]
    assert files_in(inbox.path, "tmp") == [] and files_in(inbox.path, "cur") == []
    stored = inbox.deliver_many(batch)
    assert [s.uid for s in stored] == [2, 3, 4, 5, 6]
    assert [inbox.read(s.uid) for s in stored] == [m.data for m in batch]


def _crash_during_delivery(root: str, step: str) -> None:
    """Child process: deliver one message and die with os._exit at `step`."""

    def die(*_args, **_kwargs):
        os._exit(9)

    if step == "after writing tmp":
        os.fsync = die
    elif step == "after the link":
        maildir_module.fsync_directory = die
    elif step == "before the uidlist append":
        uidlist_module.UidlistFile.append = die
    elif step == "after the uidlist write":
        real_fsync, calls = os.fsync, []

        def third_fsync_dies(fd):
            calls.append(fd)
            if len(calls) == 3:
                die()
            real_fsync(fd)

        os.fsync = third_fsync_dies
    MailStore(root).open(ADDRESS).folder("INBOX").deliver(sample_message("crash"))
    os._exit(0)  # pragma: no cover - the step above must have killed us


@pytest.mark.parametrize(
    ("step", "visible"),
    [
        ("after writing tmp", False),
        ("after the link", True),
        ("before the uidlist append", True),
        ("after the uidlist write", True),
    ],
)
def test_killed_delivery_is_whole_or_absent_and_healed_by_the_next_listing(
    store, inbox, step, visible
):
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_crash_during_delivery, args=(str(store.root), step))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 9
    forget_cached_state()
    folder = MailStore(store.root).open(ADDRESS).folder("INBOX")
    messages = folder.messages()
    if visible:
        assert [m.uid for m in messages] == [1, 2]
        assert folder.read(2) == sample_message("crash")
        assert uidlist_lines(folder.path)[-1] == f"2 :{messages[1].basename}"
    else:
        assert [m.uid for m in messages] == [1]
        assert len(files_in(folder.path, "tmp")) == 1  # debris, for clean_tmp in 36 hours
    # A lock the dead child left behind is stale (its pid is gone) and gets replaced.
    assert folder.deliver(sample_message("after")).uid == (3 if visible else 2)
    assert not (folder.path / "dovecot-uidlist.lock").exists()


def test_tmp_files_are_removed_only_after_36_hours(store, inbox):
    maildir = store.open(ADDRESS)
    sent = maildir.folder("Sent")
    young, old = inbox.path / "tmp" / "young", sent.path / "tmp" / "old"
    young.write_bytes(b"in progress")
    old.write_bytes(b"crashed long ago")
    (inbox.path / "tmp" / "a-directory").mkdir()
    age(young, 3600)
    age(old, 40 * 3600)
    assert maildir.clean_tmp() == 1
    assert young.exists() and not old.exists()
    assert (inbox.path / "tmp" / "a-directory").is_dir()
    assert maildir.clean_tmp(now=time.time() + TMP_MAX_AGE) == 1  # young is 37 h old by then
    assert not young.exists()


def test_tmp_cleanup_spares_a_delivery_that_sets_an_old_internal_date(store, inbox, monkeypatch):
    maildir = store.open(ADDRESS)
    removed: list[int] = []
    real_fsync = os.fsync

    def clean_while_delivering(fd):
        if not removed:  # the first fsync is the message file's, after its mtime was set
            removed.append(maildir.clean_tmp())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", clean_while_delivering)
    stored = inbox.deliver(sample_message("restored"), internal_date=time.time() - 5 * 365 * 86400)
    assert removed == [0]
    assert inbox.read(stored.uid) == sample_message("restored")


def test_leftovers_of_interrupted_folder_operations_are_cleaned_later(store, inbox):
    maildir = store.open(ADDRESS)
    leftover = maildir.root / "DELETING-0123"
    (leftover / "cur").mkdir(parents=True)
    (leftover / "cur" / "msg").write_bytes(b"x")
    age(leftover, 40 * 3600)
    maildir.clean_tmp()
    assert not leftover.exists()
