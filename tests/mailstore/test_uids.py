"""UID rules (RFC 3501 §2.3.1.1, RELIABILITY D3/D4): ascending, never reused, new UIDVALIDITY."""

from __future__ import annotations

import os

import pytest

from provider.mailstore import MailStore, forget_cached_state
from provider.mailstore.maildir import unique_basename
from tests.mailstore import age, sample_message, uidlist_lines


@pytest.fixture
def store(tmp_path):
    return MailStore(tmp_path / "mail")


@pytest.fixture
def maildir(store):
    return store.create("alice@example.com")


def restarted(store: MailStore, name: str = "INBOX"):
    """The folder as a freshly started process sees it: no in-memory state at all."""
    forget_cached_state()
    return MailStore(store.root).open("alice@example.com").folder(name)


def test_uids_ascend_across_deliveries_restarts_and_expunges(store, maildir):
    inbox = maildir.folder("INBOX")
    seen: list[int] = []
    uidnexts = [inbox.uidnext]
    for round_ in range(3):
        for n in range(3):
            seen.append(inbox.deliver(sample_message(f"r{round_}m{n}")).uid)
            uidnexts.append(inbox.uidnext)
        inbox.expunge([seen[-1]])  # the highest UID goes: it must not come back
        uidnexts.append(inbox.uidnext)
        inbox = restarted(store)
        uidnexts.append(inbox.uidnext)
    assert seen == sorted(seen) and len(set(seen)) == len(seen) == 9
    assert seen == list(range(1, 10))
    assert uidnexts == sorted(uidnexts) and uidnexts[-1] == 10


def test_restart_keeps_uids_and_uidvalidity(store, maildir):
    inbox = maildir.folder("INBOX")
    stored = [inbox.deliver(sample_message(f"m{n}")) for n in range(4)]
    inbox.set_flags(stored[1].uid, ["\\Seen"])
    before = [(m.uid, m.basename) for m in inbox.messages()]
    again = restarted(store)
    assert [(m.uid, m.basename) for m in again.messages()] == before
    assert again.uidvalidity == inbox.uidvalidity == stored[0].uidvalidity


def test_deleting_and_recreating_a_folder_gives_a_greater_uidvalidity(maildir):
    first = maildir.create_folder("Projects")
    old = first.uidvalidity
    first.deliver(sample_message("p"))
    maildir.delete_folder("Projects")
    again = maildir.create_folder("Projects")
    assert again.uidvalidity > old
    assert again.messages() == [] and again.uidnext == 1


def test_every_folder_gets_its_own_uidvalidity(maildir):
    values = [maildir.folder(info.name).uidvalidity for info in maildir.folders()]
    assert len(set(values)) == len(values)


def write_corrupt(path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut-mid-line":
        path.write_bytes(data[:-7])
    elif how == "garbage":
        path.write_bytes(b"\x00\xff garbage \x00\n" * 3)
    elif how == "header-destroyed":
        path.write_bytes(b"3 Vxyz N1\n" + data.split(b"\n", 1)[1])
    elif how == "uids-out-of-order":
        lines = data.split(b"\n")
        lines[1], lines[2] = lines[2], lines[1]
        path.write_bytes(b"\n".join(lines))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["cut-mid-line", "garbage", "header-destroyed", "uids-out-of-order", "empty", "missing"],
)
def test_broken_uidlist_gives_a_new_uidvalidity_and_fresh_uids(store, maildir, how):
    inbox = maildir.folder("INBOX")
    stored = [inbox.deliver(sample_message(f"m{n}")) for n in range(5)]
    old_validity = stored[0].uidvalidity
    write_corrupt(inbox.path / "dovecot-uidlist", how)
    inbox = restarted(store)
    messages = inbox.messages()
    assert inbox.uidvalidity > old_validity
    # Every message is still there, each once, under fresh UIDs in delivery order.
    assert [m.basename for m in messages] == [s.basename for s in stored]
    assert [m.uid for m in messages] == [1, 2, 3, 4, 5]
    assert uidlist_lines(inbox.path)[0].startswith(f"3 V{inbox.uidvalidity} N6 ")
    assert inbox.deliver(sample_message("next")).uid == 6


def test_a_uidvalidity_is_never_handed_out_twice(store, maildir):
    inbox = maildir.folder("INBOX")
    inbox.deliver(sample_message("m"))
    values = {inbox.uidvalidity}
    for _ in range(3):
        (inbox.path / "dovecot-uidlist").write_bytes(b"junk")
        inbox = restarted(store)
        inbox.messages()
        assert inbox.uidvalidity not in values
        assert inbox.uidvalidity > max(values)
        values.add(inbox.uidvalidity)


def test_uidlist_cut_at_a_line_end_is_caught_by_a_process_that_read_it(maildir):
    # Cut exactly at a line end, a uidlist still parses; a reader that saw the longer file
    # notices that the next UID went backwards (Dovecot's "next_uid was lowered") and moves on.
    inbox = maildir.folder("INBOX")
    stored = [inbox.deliver(sample_message(f"m{n}")) for n in range(3)]
    inbox.messages()
    path = inbox.path / "dovecot-uidlist"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    messages = inbox.messages()
    assert inbox.uidvalidity > stored[0].uidvalidity
    assert sorted(m.basename for m in messages) == sorted(s.basename for s in stored)


def test_uidlist_rewritten_in_place_is_read_again_from_the_start(maildir):
    inbox = maildir.folder("INBOX")
    stored = inbox.deliver(sample_message("m"))
    inbox.messages()
    path = inbox.path / "dovecot-uidlist"
    header = path.read_text().splitlines()[0]
    path.write_text(f"{header.replace(' N1 ', ' N40 ')}\n30 W5 :{stored.basename}\n")
    [message] = inbox.messages()
    assert message.uid == 30 and inbox.uidnext == 40
    assert inbox.uidvalidity == stored.uidvalidity


def test_deleting_index_files_never_changes_uids(store, maildir):
    # The store keeps no index or cache files of its own: its only state besides the messages
    # is Dovecot's control files. Index files Dovecot may have left are caches for Dovecot only.
    inbox = maildir.folder("INBOX")
    for n in range(3):
        inbox.deliver(sample_message(f"m{n}"))
    before = [(m.uid, m.basename) for m in inbox.messages()]
    validity = inbox.uidvalidity
    for name in ("dovecot.index", "dovecot.index.cache", "dovecot.index.log"):
        (inbox.path / name).write_bytes(b"stale cache")
    for name in ("dovecot.index", "dovecot.index.cache", "dovecot.index.log"):
        (inbox.path / name).unlink()
    again = restarted(store)
    assert [(m.uid, m.basename) for m in again.messages()] == before
    assert again.uidvalidity == validity


def test_files_without_a_uid_get_ascending_uids_in_delivery_order(maildir):
    inbox = maildir.folder("INBOX")
    inbox.deliver(sample_message("first"))
    # Another MDA dropped three files; they are listed in arbitrary order on disk.
    names = ["1700000300.M5P9.mx,S=3,W=3", "1700000100.M7P9.mx,S=3,W=3", "1700000200.M1P9.mx"]
    for name in names:
        (inbox.path / "new" / name).write_bytes(b"a\r\n")
    got = [(m.uid, m.basename) for m in inbox.messages()][1:]
    assert got == [(2, names[1]), (3, names[2]), (4, names[0])]


def test_vanished_file_drops_out_and_its_uid_is_not_reused(maildir):
    inbox = maildir.folder("INBOX")
    first, second = (inbox.deliver(sample_message(n)) for n in ("a", "b"))
    second.path.unlink()
    assert [m.uid for m in inbox.messages()] == [first.uid]
    assert inbox.deliver(sample_message("c")).uid == 3


def test_lines_appended_by_another_writer_are_picked_up(maildir):
    inbox = maildir.folder("INBOX")
    inbox.deliver(sample_message("ours"))
    inbox.messages()
    # What Dovecot's LDA does: file into new/, then "<uid> :<basename>" appended under the lock.
    basename = unique_basename() + ",S=3,W=3"
    (inbox.path / "new" / basename).write_bytes(b"x\r\n")
    with open(inbox.path / "dovecot-uidlist", "a") as handle:
        handle.write(f"9 :{basename}\n")
    assert [m.uid for m in inbox.messages()] == [1, 9]
    assert inbox.uidnext == 10
    assert inbox.deliver(sample_message("next")).uid == 10


def test_half_written_line_of_a_concurrent_append_is_left_for_later(store):
    inbox = MailStore(store.root, lock_timeout=0.05).create("alice@example.com").folder("INBOX")
    inbox.deliver(sample_message("ours"))
    basename = unique_basename() + ",S=3,W=3"
    (inbox.path / "new" / basename).write_bytes(b"x\r\n")
    path = inbox.path / "dovecot-uidlist"
    with open(path, "a") as handle:
        handle.write(f"7 :{basename[:10]}")  # the writer is mid-line and holds the lock
    lock = inbox.path / "dovecot-uidlist.lock"
    lock.write_text(f"{os.getpid()}:elsewhere.example")
    assert [m.uid for m in inbox.messages()] == [1]  # no half line read, no UID given
    with open(path, "a") as handle:
        handle.write(f"{basename[10:]}\n")
    lock.unlink()
    assert [m.uid for m in inbox.messages()] == [1, 7]


def test_message_moved_from_new_to_cur_by_another_process_keeps_its_uid(maildir):
    inbox = maildir.folder("INBOX")
    stored = inbox.deliver(sample_message("moving"))
    assert inbox.get(stored.uid).recent
    os.rename(stored.path, inbox.path / "cur" / f"{stored.basename}:2,S")
    info = inbox.get(stored.uid)
    assert (info.uid, info.recent, info.flags) == (stored.uid, False, {"\\Seen"})


def test_unchanged_folder_is_not_listed_again(maildir, monkeypatch):
    inbox = maildir.folder("INBOX")
    for n in range(20):
        inbox.deliver(sample_message(f"m{n}"))
    for subdir in ("new", "cur"):
        age(inbox.path / subdir, 60)  # older than the mtime-granularity guard
    inbox.messages()
    calls: list[str] = []
    real_listdir, real_stat = os.listdir, os.stat
    monkeypatch.setattr(os, "listdir", lambda p: calls.append(f"listdir {p}") or real_listdir(p))
    monkeypatch.setattr(os, "stat", lambda p, **kw: calls.append(f"stat {p}") or real_stat(p, **kw))
    for _ in range(5):
        assert len(inbox.messages()) == 20
    assert not [c for c in calls if c.startswith("listdir")]
    # Four stat() calls per sync (new/, cur/, dovecot-uidlist, dovecot-keywords), none per message.
    assert len(calls) == 5 * 4
    calls.clear()
    inbox.deliver(sample_message("one more"))
    assert len(inbox.messages()) == 21
    message_stats = [c for c in calls if "/new/" in c or "/cur/" in c]
    assert len(message_stats) == 1  # only the new message's file
