"""The uidlist lock: Dovecot's dotlock format, stale locks replaced, a bounded wait otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from provider.mailstore import MailStore, MailstoreBusy
from provider.mailstore import uidlist as uidlist_module
from provider.mailstore.locking import FolderLock, LockTimeout
from tests.mailstore import age, files_in, sample_message

HOST = socket.gethostname()


@pytest.fixture
def store(tmp_path):
    MailStore(tmp_path / "mail").create("alice@example.com")
    return MailStore(tmp_path / "mail", lock_timeout=0.3)


@pytest.fixture
def inbox(store):
    return store.open("alice@example.com").folder("INBOX")


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_lock_holds_pid_and_hostname_and_is_removed_after_use(inbox, monkeypatch):
    seen: list[str] = []
    real_append = uidlist_module.UidlistFile.append

    def spy(self, basenames):
        seen.append((inbox.path / "dovecot-uidlist.lock").read_text())
        return real_append(self, basenames)

    monkeypatch.setattr(uidlist_module.UidlistFile, "append", spy)
    inbox.deliver(sample_message("m"))
    assert seen == [f"{os.getpid()}:{HOST}"]
    assert not (inbox.path / "dovecot-uidlist.lock").exists()


def test_lock_of_a_dead_process_is_replaced_at_once(inbox):
    (inbox.path / "dovecot-uidlist.lock").write_text(f"{dead_pid()}:{HOST}")
    assert inbox.deliver(sample_message("m")).uid == 1
    assert not (inbox.path / "dovecot-uidlist.lock").exists()


def test_lock_nobody_touched_for_two_minutes_is_replaced(inbox):
    lock = inbox.path / "dovecot-uidlist.lock"
    lock.write_text(f"{os.getppid()}:{HOST}")  # a live process…
    age(lock, 180)  # …that has not refreshed its lock for three minutes
    age(inbox.path / "dovecot-uidlist", 180)
    assert inbox.deliver(sample_message("m")).uid == 1


def test_fresh_lock_of_a_live_process_makes_writers_fail_busy_and_leave_nothing(inbox):
    lock = inbox.path / "dovecot-uidlist.lock"
    lock.write_text(f"{os.getppid()}:{HOST}")
    started = time.monotonic()
    with pytest.raises(MailstoreBusy, match="try again later"):
        inbox.deliver(sample_message("m"))
    assert time.monotonic() - started < 5
    for subdir in ("new", "cur", "tmp"):
        assert files_in(inbox.path, subdir) == []
    assert lock.read_text() == f"{os.getppid()}:{HOST}"  # someone else's lock stays
    assert inbox.messages() == []  # reading needs no lock


def test_lock_of_another_host_is_only_judged_by_age(inbox):
    lock = inbox.path / "dovecot-uidlist.lock"
    lock.write_text(f"{dead_pid()}:other-host.example")
    with pytest.raises(MailstoreBusy):
        inbox.deliver(sample_message("m"))
    age(lock, 180)
    age(inbox.path / "dovecot-uidlist", 180)
    assert inbox.deliver(sample_message("m")).uid == 1


def test_recent_uidlist_change_keeps_an_old_lock_alive(inbox):
    # Dovecot counts a change to the protected file as activity of the lock's owner.
    lock = inbox.path / "dovecot-uidlist.lock"
    lock.write_text(f"{os.getppid()}:{HOST}")
    age(lock, 180)
    with pytest.raises(MailstoreBusy):
        inbox.deliver(sample_message("m"))


def test_threads_of_one_process_exclude_each_other(inbox):
    first = FolderLock(inbox.path, timeout=0.2)
    first.acquire()
    try:
        with pytest.raises(LockTimeout):
            FolderLock(inbox.path, timeout=0.2).acquire()
        assert (inbox.path / "dovecot-uidlist.lock").read_text() == f"{os.getpid()}:{HOST}"
    finally:
        first.release()
    with FolderLock(inbox.path, timeout=0.2):
        pass
    assert not (inbox.path / "dovecot-uidlist.lock").exists()


def test_refresh_keeps_a_long_held_lock_fresh(inbox):
    with FolderLock(inbox.path) as lock:
        age(lock.lock_path, 100)
        lock.refresh()
        assert time.time() - os.stat(lock.lock_path).st_mtime < 60


def test_release_leaves_a_lock_that_replaced_ours(inbox):
    lock = FolderLock(inbox.path)
    lock.acquire()
    os.unlink(lock.lock_path)  # judged stale and replaced by someone else
    lock.lock_path.write_text(f"{os.getppid()}:{HOST}")
    lock.release()
    assert lock.lock_path.exists()
