"""Expunged UIDs with their modseqs (RFC 7162 §3.2 QRESYNC): kept, shared, bounded, honest."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from contextlib import closing

import pytest

from provider.mailstore import MailStore, forget_cached_state
from provider.mailstore import maildir as maildir_module
from provider.mailstore.maildir import MODSEQ_NAME
from tests.mailstore import sample_message
from tests.mailstore.test_modseq import other_process


@pytest.fixture
def inbox(tmp_path):
    return MailStore(tmp_path / "mail").create("alice@example.com").folder("INBOX")


def delete(folder, *uids: int) -> None:
    for uid in uids:
        folder.set_flags(uid, ["\\Deleted"])
    folder.expunge(uids)


def test_an_expunge_is_remembered_with_a_modseq_above_what_clients_were_told(inbox):
    uids = [inbox.deliver(sample_message(str(n))).uid for n in range(4)]
    before = inbox.modseqs().highest
    delete(inbox, uids[1], uids[2])
    gone = inbox.expunged_since(before)
    assert gone.uids == [uids[1], uids[2]] and gone.complete
    after = inbox.modseqs().highest
    assert after > before
    assert inbox.expunged_since(after).uids == []
    assert inbox.expunged_since(after).complete
    # One step: the snapshot's modseqs and its expunges are of the same look.
    snapshot = inbox.snapshot(expunged_since=before)
    assert snapshot.modseqs is not None and snapshot.modseqs.highest == after
    assert snapshot.expunged is not None and snapshot.expunged.uids == [uids[1], uids[2]]


def test_another_process_and_a_restart_see_the_same_history(inbox):
    uids = [inbox.deliver(sample_message(str(n))).uid for n in range(3)]
    before = inbox.modseqs().highest
    other = other_process(inbox)
    delete(other, uids[0])
    # Whoever looks first numbers the expunge; the other finds the same value.
    first = other.expunged_since(before)
    assert first.uids == [uids[0]]
    assert inbox.expunged_since(before) == first
    assert inbox.modseqs().highest == other.modseqs().highest
    forget_cached_state()
    assert (
        MailStore(inbox.path.parents[2])
        .open("alice@example.com")
        .folder("INBOX")
        .expunged_since(before)
        == first
    )


def test_an_expunge_by_another_program_is_remembered_when_first_looked_at(inbox):
    uids = [inbox.deliver(sample_message(str(n))).uid for n in range(2)]
    before = inbox.modseqs().highest
    os.unlink(inbox.get(uids[0]).path)  # Dovecot or a user removing the file
    assert inbox.expunged_since(before).uids == [uids[0]]


def test_history_is_bounded_and_a_client_from_before_the_cut_is_told_it_is_incomplete(
    inbox, monkeypatch
):
    monkeypatch.setattr(maildir_module, "MAX_EXPUNGED_REMEMBERED", 3)
    uids = [inbox.deliver(sample_message(str(n))).uid for n in range(6)]
    marks = [inbox.modseqs().highest]
    for uid in uids[:5]:
        delete(inbox, uid)
        marks.append(inbox.modseqs().highest)
    with closing(sqlite3.connect(inbox.path / MODSEQ_NAME)) as connection, connection:
        assert connection.execute("SELECT count(*) FROM expunged").fetchone()[0] == 3
    assert not inbox.expunged_since(marks[0]).complete
    assert not inbox.expunged_since(marks[1]).complete
    recent = inbox.expunged_since(marks[2])
    assert recent.complete and recent.uids == uids[2:5]


def test_a_lost_modseq_file_makes_older_values_incomplete(inbox):
    uids = [inbox.deliver(sample_message(str(n))).uid for n in range(2)]
    before = inbox.modseqs().highest
    delete(inbox, uids[0])
    inbox.modseqs()
    forget_cached_state()
    for suffix in ("", "-wal", "-shm"):
        path = inbox.path / f"{MODSEQ_NAME}{suffix}"
        if path.exists():
            path.unlink()
    folder = MailStore(inbox.path.parents[2]).open("alice@example.com").folder("INBOX")
    lost = folder.expunged_since(before)
    assert lost == maildir_module.ExpungedSince([], False)
    assert folder.expunged_since(folder.modseqs().highest).complete


def test_a_file_from_before_qresync_is_complete_only_from_its_highest(inbox):
    uids = [inbox.deliver(sample_message(str(n))).uid for n in range(3)]
    older = inbox.modseqs().highest
    delete(inbox, uids[0])
    highest = inbox.modseqs().highest
    forget_cached_state()
    with closing(sqlite3.connect(inbox.path / MODSEQ_NAME)) as connection, connection:
        connection.execute("DROP TABLE expunged")
        connection.execute("DELETE FROM meta WHERE name = 'complete_after'")
    folder = MailStore(inbox.path.parents[2]).open("alice@example.com").folder("INBOX")
    assert not folder.expunged_since(older).complete
    delete(folder, uids[1])
    since = folder.expunged_since(highest)
    assert since.complete and since.uids == [uids[1]]


def test_expunges_of_an_older_uidvalidity_are_not_reported(inbox):
    uid = inbox.deliver(sample_message("a")).uid
    inbox.deliver(sample_message("b"))
    before = inbox.modseqs().highest
    delete(inbox, uid)
    inbox.modseqs()
    with closing(sqlite3.connect(inbox.path / MODSEQ_NAME)) as connection, connection:
        connection.execute("UPDATE expunged SET uidvalidity = uidvalidity - 1")
    forget_cached_state()
    folder = MailStore(inbox.path.parents[2]).open("alice@example.com").folder("INBOX")
    assert folder.expunged_since(before).uids == []


def test_the_history_lives_in_our_own_file_only(inbox):
    """Dovecot's files keep their format: the history adds nothing beside provider-modseq."""
    uid = inbox.deliver(sample_message("a")).uid
    inbox.deliver(sample_message("b"))
    before = set(os.listdir(inbox.path))
    inbox.modseqs()
    delete(inbox, uid)
    inbox.modseqs()
    added = set(os.listdir(inbox.path)) - before
    assert {name.removesuffix("-wal").removesuffix("-shm") for name in added} <= {MODSEQ_NAME}
    assert (inbox.path / "dovecot-uidlist").read_text().splitlines()[0].startswith("3 V")


def _look_in_a_fork(root: str, since: int, start, results) -> None:
    """A process of its own (no state shared): wait for the start, then number the expunge."""
    forget_cached_state()
    folder = MailStore(root).open("alice@example.com").folder("INBOX")
    start.wait(10)
    gone = folder.expunged_since(since)
    results.put((gone.uids, folder.modseqs().highest))


def test_processes_racing_to_number_one_expunge_agree(inbox):
    uids = [inbox.deliver(sample_message(str(n))).uid for n in range(4)]
    before = inbox.modseqs().highest
    delete(inbox, uids[1])
    fork = multiprocessing.get_context("fork")
    start, results = fork.Event(), fork.Queue()
    root = str(inbox.path.parents[2])
    processes = [
        fork.Process(target=_look_in_a_fork, args=(root, before, start, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    start.set()
    answers = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(10)
        assert process.exitcode == 0
    results.close()
    assert answers == [([uids[1]], answers[0][1])] * 4
    with closing(sqlite3.connect(inbox.path / MODSEQ_NAME)) as connection, connection:
        rows = connection.execute("SELECT uid, modseq FROM expunged").fetchall()
    assert rows == [(uids[1], answers[0][1])]
