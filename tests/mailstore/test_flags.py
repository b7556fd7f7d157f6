"""Flags and keywords: set_flags renames, unknown letters survive, the 26-keyword limit."""

from __future__ import annotations

import os

import pytest

from provider.mailstore import (
    IncomingMessage,
    InvalidFlag,
    MailStore,
    MessageNotFound,
    TooManyKeywords,
    forget_cached_state,
)
from provider.mailstore import maildir as maildir_module
from tests.mailstore import files_in, sample_message


@pytest.fixture
def maildir(tmp_path):
    return MailStore(tmp_path / "mail").create("alice@example.com")


@pytest.fixture
def inbox(maildir):
    return maildir.folder("INBOX")


def test_set_flags_replaces_flags_and_moves_the_message_to_cur(inbox):
    stored = inbox.deliver(sample_message("m"))
    info = inbox.set_flags(stored.uid, ["\\Seen", "\\Flagged"], ["Work"])
    assert (info.flags, info.keywords, info.recent) == ({"\\Seen", "\\Flagged"}, {"Work"}, False)
    assert info.path == inbox.path / "cur" / f"{stored.basename}:2,FSa"
    assert files_in(inbox.path, "new") == []
    info = inbox.set_flags(stored.uid, ["\\Answered"])
    assert info.path.name == f"{stored.basename}:2,R"
    assert inbox.get(stored.uid) == info
    assert inbox.read(stored.uid) == sample_message("m")


def test_clearing_every_flag_leaves_an_empty_info_suffix(inbox):
    stored = inbox.deliver(sample_message("m"), flags=["\\Seen"])
    assert inbox.set_flags(stored.uid, []).path.name == f"{stored.basename}:2,"


def test_flags_are_case_insensitive(inbox):
    stored = inbox.deliver(sample_message("m"), flags=["\\SEEN", "\\deleted"])
    assert inbox.get(stored.uid).flags == {"\\Seen", "\\Deleted"}


def test_unknown_letters_are_kept_and_not_reported(inbox):
    # "P" (maildir's "passed") means nothing to Dovecot and is not $Forwarded; a keyword letter
    # without a name in dovecot-keywords is unknown too. Both survive a flag change.
    name = "1700000000.M1P1.mx,S=3,W=3"
    (inbox.path / "cur" / f"{name}:2,PSz").write_bytes(b"x\r\n")
    [info] = inbox.messages()
    assert (info.flags, info.keywords) == ({"\\Seen"}, frozenset())
    info = inbox.set_flags(info.uid, ["\\Flagged"], ["Work"])
    assert info.path.name == f"{name}:2,FPaz"
    assert (info.flags, info.keywords) == ({"\\Flagged"}, {"Work"})


def test_forwarded_is_an_ordinary_keyword(inbox):
    stored = inbox.deliver(sample_message("m"), keywords=["$Forwarded"])
    assert inbox.get(stored.uid).keywords == {"$Forwarded"}
    assert "P" not in stored.path.name.split(":2,")[1]


def test_keyword_names_come_from_dovecot_keywords(inbox):
    (inbox.path / "dovecot-keywords").write_text("0 $Label1\n3 Important\n")
    stored = inbox.deliver(sample_message("m"), keywords=["important", "New"])
    assert stored.path.name.endswith(":2,bd")  # known index 3 = "d"; "New" takes free index 1
    assert inbox.get(stored.uid).keywords == {"Important", "New"}
    assert (inbox.path / "dovecot-keywords").read_text() == "0 $Label1\n1 New\n3 Important\n"


def test_a_folder_holds_at_most_26_keywords(inbox):
    names = [f"kw{n}" for n in range(26)]
    stored = inbox.deliver(sample_message("m"), keywords=names)
    assert stored.path.name.endswith(":2,abcdefghijklmnopqrstuvwxyz")
    assert stored.dropped_keywords == ()
    # A delivery is never refused for it: the message is stored, the 27th keyword dropped.
    more = inbox.deliver(sample_message("n"), keywords=["kw3", "one-too-many"], flags=["\\Seen"])
    assert more.dropped_keywords == ("one-too-many",)
    assert more.path.name.endswith(":2,Sd")
    assert (inbox.get(more.uid).flags, inbox.get(more.uid).keywords) == ({"\\Seen"}, {"kw3"})
    # A flag change is all or nothing: refused before anything changes.
    with pytest.raises(TooManyKeywords, match="keywords Maildir can hold") as refused:
        inbox.set_flags(stored.uid, ["\\Flagged"], ["kw0", "one-too-many", "and-another"])
    assert refused.value.names == ["one-too-many", "and-another"]
    assert inbox.get(stored.uid).keywords == frozenset(names)
    assert inbox.get(stored.uid).flags == frozenset()
    assert [m.uid for m in inbox.messages()] == [stored.uid, more.uid]
    assert files_in(inbox.path, "tmp") == []
    assert len((inbox.path / "dovecot-keywords").read_text().splitlines()) == 26


def test_keywords_beyond_the_free_letters_are_dropped_in_the_order_given(inbox):
    inbox.deliver(sample_message("m"), keywords=[f"kw{n}" for n in range(24)])
    batch = [
        IncomingMessage(sample_message("a"), keywords=["new1", "kw0", "new2"]),
        IncomingMessage(sample_message("b"), keywords=["new3", "NEW2"]),
    ]
    first, second = inbox.deliver_many(batch)
    assert (first.dropped_keywords, second.dropped_keywords) == ((), ("new3",))
    assert inbox.get(second.uid).keywords == {"new2"}
    assert inbox.keyword_names()[-2:] == ("new1", "new2")


def test_keyword_file_mtime_grows_with_every_change(inbox):
    # Dovecot re-reads dovecot-keywords only when its mtime (in seconds) changes.
    inbox.deliver(sample_message("a"), keywords=["one"])
    first = os.stat(inbox.path / "dovecot-keywords").st_mtime
    inbox.deliver(sample_message("b"), keywords=["two"])
    assert int(os.stat(inbox.path / "dovecot-keywords").st_mtime) > int(first)


@pytest.mark.parametrize(
    ("flags", "keywords"),
    [
        (["\\Recent"], []),
        (["\\Unknown"], []),
        (["Seen"], []),
        ("\\Seen", []),
        ([], ["two words"]),
        ([], ["\\Seen"]),
        ([], ["paren("]),
        ([], [""]),
        ([], ["caf\u00e9"]),
    ],
)
def test_invalid_flags_and_keywords_are_refused(inbox, flags, keywords):
    with pytest.raises(InvalidFlag):
        inbox.deliver(sample_message("m"), flags=flags, keywords=keywords)
    assert inbox.messages() == [] and files_in(inbox.path, "tmp") == []


def test_set_flags_on_a_gone_message_raises_message_not_found(inbox):
    stored = inbox.deliver(sample_message("m"))
    inbox.expunge([stored.uid])
    with pytest.raises(MessageNotFound) as caught:
        inbox.set_flags(stored.uid, ["\\Seen"])
    assert isinstance(caught.value, KeyError)
    with pytest.raises(KeyError):
        inbox.get(stored.uid)
    with pytest.raises(KeyError):
        inbox.read(stored.uid)


def test_set_flags_follows_a_rename_done_by_another_process(inbox):
    stored = inbox.deliver(sample_message("m"))
    inbox.messages()
    moved = inbox.path / "cur" / f"{stored.basename}:2,S"
    os.rename(stored.path, moved)  # e.g. Dovecot marked it seen meanwhile
    info = inbox.set_flags(stored.uid, ["\\Seen", "\\Answered"])
    assert info.path.name == f"{stored.basename}:2,RS"
    assert not moved.exists()


def test_read_follows_a_message_that_moved(inbox):
    stored = inbox.deliver(sample_message("m"))
    inbox.messages()
    os.rename(stored.path, inbox.path / "cur" / f"{stored.basename}:2,T")
    assert inbox.read(stored.uid) == sample_message("m")


def test_expunge_returns_only_what_it_removed(inbox):
    stored = [inbox.deliver(sample_message(f"m{n}")) for n in range(3)]
    removed = inbox.expunge([stored[0].uid, stored[2].uid, 999])
    assert [m.uid for m in removed] == [stored[0].uid, stored[2].uid]
    assert inbox.expunge([stored[0].uid]) == []
    assert [m.uid for m in inbox.messages()] == [stored[1].uid]
    assert not stored[0].path.exists() and not stored[2].path.exists()


def test_expunge_drops_lines_of_files_deleted_behind_our_back(inbox, monkeypatch):
    monkeypatch.setattr(maildir_module, "_STALE_UIDLIST_LINES", 0)  # rewrite at every expunge
    stored = [inbox.deliver(sample_message(f"m{n}")) for n in range(3)]
    stored[1].path.unlink()
    inbox.expunge([stored[0].uid])
    lines = (inbox.path / "dovecot-uidlist").read_text().splitlines()
    assert lines[1:] == [f"3 :{stored[2].basename}"]
    assert inbox.uidnext == 4


def test_keyword_named_later_by_another_writer_is_reported(inbox):
    name = "1700000000.M1P1.mx,S=3,W=3"
    (inbox.path / "cur" / f"{name}:2,Sc").write_bytes(b"x\r\n")
    [info] = inbox.messages()
    assert info.keywords == frozenset()
    (inbox.path / "dovecot-keywords").write_text("2 $Important\n")
    [info] = inbox.messages()
    assert (info.flags, info.keywords) == ({"\\Seen"}, {"$Important"})


def test_every_flag_change_made_behind_our_back_is_seen_at_once(inbox):
    """The listing cache trusts a directory only while its mtime has not moved since a listing
    made safely after that mtime: a rename by another process right after a listing (within
    the same timestamp tick or not) is never missed."""
    uids = [inbox.deliver(sample_message(n), flags=["\\Seen"]).uid for n in range(5)]
    for round_ in range(200):
        uid = uids[round_ % len(uids)]
        info = inbox.get(uid)
        letters = "S" if "\\Flagged" in info.flags else "FS"
        os.rename(info.path, inbox.path / "cur" / f"{info.basename}:2,{letters}")
        flagged = {i.uid: "\\Flagged" in i.flags for i in inbox.messages()}
        assert flagged[uid] is (letters == "FS"), round_


def test_an_expunge_leaves_its_uidlist_lines_until_enough_name_no_file(inbox, maildir, monkeypatch):
    """The uidlist is rewritten without expunged lines only once more than
    _STALE_UIDLIST_LINES of them gathered; meanwhile nobody sees those messages and no UID is
    given twice."""
    monkeypatch.setattr(maildir_module, "_STALE_UIDLIST_LINES", 3)
    stored = [inbox.deliver(sample_message(f"m{n}")) for n in range(6)]
    uidlist = inbox.path / "dovecot-uidlist"
    before = uidlist.read_bytes()
    assert [info.uid for info in inbox.expunge([stored[0].uid, stored[1].uid])] == [1, 2]
    assert uidlist.read_bytes() == before, "two stale lines: no rewrite"
    forget_cached_state()  # another process: reads the uidlist and lists the directories
    again = maildir.folder("INBOX")
    assert [info.uid for info in again.messages()] == [3, 4, 5, 6]
    assert inbox.deliver(sample_message("new")).uid == 7
    inbox.expunge([stored[2].uid, stored[3].uid])  # four stale lines: over the limit
    lines = uidlist.read_text().splitlines()
    assert [int(line.split(" ", 1)[0]) for line in lines[1:]] == [5, 6, 7]
    assert " N8 " in lines[0]
    assert [info.uid for info in inbox.messages()] == [5, 6, 7]
