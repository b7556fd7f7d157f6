"""On-disk formats, byte for byte: dovecot-uidlist, dovecot-keywords, message file names."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest

from provider.mailstore import MailStore, forget_cached_state
from provider.mailstore import maildir as maildir_module
from provider.mailstore.maildir import virtual_size
from tests.mailstore import files_in, sample_message

HEADER = re.compile(r"^3 V(\d+) N(\d+) G([0-9a-f]{32})$")
FILE_NAME = re.compile(
    r"^(?P<secs>\d+)\.M(?P<usecs>\d+)P(?P<pid>\d+)Q(?P<counter>\d+)\.(?P<host>[^,:/]+)"
    r",S=(?P<size>\d+),W=(?P<vsize>\d+)(?::2,(?P<flags>[A-Za-z]*))?$"
)


@pytest.fixture
def maildir(tmp_path):
    return MailStore(tmp_path / "mail").create("alice@example.com")


def test_new_folder_has_a_version_3_uidlist_header_only(maildir):
    lines = (maildir.root / ".Sent" / "dovecot-uidlist").read_bytes().split(b"\n")
    assert lines[1:] == [b""]
    match = HEADER.match(lines[0].decode())
    assert match is not None
    assert int(match.group(1)) == maildir.folder("Sent").uidvalidity
    assert match.group(2) == "1"


def test_deliveries_append_uid_lines_and_leave_the_header_alone(maildir):
    inbox = maildir.folder("INBOX")
    header_before = (inbox.path / "dovecot-uidlist").read_bytes().split(b"\n")[0]
    first = inbox.deliver(sample_message("one"))
    second = inbox.deliver(sample_message("two"), flags=["\\Seen"])
    data = (inbox.path / "dovecot-uidlist").read_bytes()
    assert data == header_before + (f"\n1 :{first.basename}\n2 :{second.basename}\n".encode())
    assert ":" not in first.basename and ":" not in second.basename
    assert second.path.name == f"{second.basename}:2,S"


def test_expunge_rewrites_the_header_with_the_next_uid(maildir, monkeypatch):
    monkeypatch.setattr(maildir_module, "_STALE_UIDLIST_LINES", 0)  # rewrite at every expunge
    inbox = maildir.folder("INBOX")
    kept = inbox.deliver(sample_message("kept"))
    gone = inbox.deliver(sample_message("gone"))
    guid = HEADER.match(inbox.path.joinpath("dovecot-uidlist").read_text().splitlines()[0])[3]
    inbox.expunge([gone.uid])
    text = (inbox.path / "dovecot-uidlist").read_text()
    assert text == f"3 V{inbox.uidvalidity} N3 G{guid}\n1 :{kept.basename}\n"
    assert not (inbox.path / "dovecot-uidlist.tmp").exists()


def test_message_file_name_is_dovecot_style(maildir):
    data = sample_message("name")
    stored = maildir.folder("INBOX").deliver(data)
    assert stored.path.parent.name == "new"
    match = FILE_NAME.match(stored.path.name)
    assert match is not None, stored.path.name
    assert int(match["pid"]) == os.getpid()
    assert abs(int(match["secs"]) - time.time()) < 60
    assert 0 <= int(match["usecs"]) < 1_000_000
    assert int(match["size"]) == len(data) == stored.size
    assert int(match["vsize"]) == len(data)  # CRLF already: W= equals S=
    assert match["flags"] is None  # new/ files carry no info suffix
    assert stored.basename == stored.path.name


def test_hostname_slash_and_colon_are_escaped_as_dovecot_does(maildir, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "mx/1:b")
    stored = maildir.folder("INBOX").deliver(sample_message("host"))
    assert ".mx\\0571\\072b," in stored.path.name


def test_w_counts_each_bare_lf_as_two_bytes():
    assert virtual_size(b"a\r\nb\r\n") == 6
    assert virtual_size(b"a\nb\n") == 6
    assert virtual_size(b"a\r\nb\nc") == 7
    assert virtual_size(b"") == 0


def test_bare_lf_message_gets_w_larger_than_s(maildir):
    stored = maildir.folder("INBOX").deliver(b"Subject: lf\n\nbody\n")
    assert stored.path.name.endswith(",S=18,W=21")


def test_flag_letters_are_in_ascii_order_then_keywords(maildir):
    stored = maildir.folder("INBOX").deliver(
        sample_message("flags"),
        flags=["\\Seen", "\\Deleted", "\\Answered", "\\Draft", "\\Flagged"],
        keywords=["Work", "$Forwarded"],
    )
    assert stored.path.parent.name == "cur"
    assert stored.path.name.endswith(":2,DFRSTab")


def test_keywords_file_lists_index_and_name(maildir):
    inbox = maildir.folder("INBOX")
    first = inbox.deliver(sample_message("k1"), keywords=["$Forwarded", "Work"])
    second = inbox.deliver(sample_message("k2"), keywords=["work", "$Junk"])
    assert (inbox.path / "dovecot-keywords").read_bytes() == b"0 $Forwarded\n1 Work\n2 $Junk\n"
    assert first.path.name.endswith(":2,ab")
    assert second.path.name.endswith(":2,bc")  # keywords match case-insensitively
    assert inbox.get(second.uid).keywords == {"Work", "$Junk"}
    assert not (inbox.path / "dovecot-keywords.lock").exists()


def test_keyword_only_message_goes_to_cur(maildir):
    stored = maildir.folder("INBOX").deliver(sample_message("kw"), keywords=["Later"])
    assert stored.path.parent.name == "cur" and stored.path.name.endswith(":2,a")


def test_internal_date_is_the_file_mtime(maildir):
    inbox = maildir.folder("INBOX")
    when = 1_600_000_000.5
    stored = inbox.deliver(sample_message("dated"), internal_date=when)
    assert os.stat(stored.path).st_mtime == pytest.approx(when)
    assert inbox.get(stored.uid).internal_date == pytest.approx(when)


def test_reads_a_uidlist_dovecot_wrote_and_keeps_its_extensions(maildir, monkeypatch):
    monkeypatch.setattr(maildir_module, "_STALE_UIDLIST_LINES", 0)  # rewrite at every expunge
    inbox = maildir.folder("INBOX")
    for name, subdir in (("100.M1P1.host,S=5,W=5", "cur"), ("101.M1P1.host,S=5,W=5", "new")):
        (inbox.path / subdir / (name + (":2,S" if subdir == "cur" else ""))).write_bytes(b"x\r\ny")
    (inbox.path / "dovecot-uidlist").write_text(
        "3 V12345 N9 Gdeadbeefdeadbeefdeadbeefdeadbeef X42\n"
        "7 W5 P0001 :100.M1P1.host,S=5,W=5\n"
        "8 :101.M1P1.host,S=5,W=5\n"
    )
    forget_cached_state()
    inbox = maildir.folder("INBOX")
    assert [(m.uid, m.flags, m.recent) for m in inbox.messages()] == [
        (7, {"\\Seen"}, False),
        (8, frozenset(), True),
    ]
    assert inbox.uidvalidity == 12345 and inbox.uidnext == 9
    inbox.expunge([8])
    assert (inbox.path / "dovecot-uidlist").read_text() == (
        "3 V12345 N9 Gdeadbeefdeadbeefdeadbeefdeadbeef X42\n7 W5 P0001 :100.M1P1.host,S=5,W=5\n"
    )


def test_reads_a_version_1_uidlist_and_writes_version_3(maildir, monkeypatch):
    monkeypatch.setattr(maildir_module, "_STALE_UIDLIST_LINES", 0)  # rewrite at every expunge
    inbox = maildir.folder("INBOX")
    (inbox.path / "cur" / "100.courier:2,").write_bytes(b"hello\r\n")
    (inbox.path / "dovecot-uidlist").write_text("1 777 5\n4 100.courier:2,\n")
    forget_cached_state()
    inbox = maildir.folder("INBOX")
    [message] = inbox.messages()
    assert (message.uid, inbox.uidvalidity, inbox.uidnext) == (4, 777, 5)
    assert message.size == 7  # no S= in the name: from stat
    stored = inbox.deliver(sample_message("after"))
    assert stored.uid == 5
    inbox.expunge([stored.uid])
    lines = (inbox.path / "dovecot-uidlist").read_text().splitlines()
    assert HEADER.match(lines[0]) and lines[0].startswith("3 V777 N6 G")
    assert lines[1:] == ["4 :100.courier"]


def test_mailbox_root_holds_only_maildir_dirs_and_dovecot_control_files(maildir):
    inbox = maildir.folder("INBOX")
    inbox.deliver(sample_message("a"), keywords=["x"])
    highest = max(_uidvalidity(info) for info in maildir.folders())
    top = {name for name in os.listdir(inbox.path) if not name.startswith(".")}
    assert top == {
        "cur",
        "new",
        "tmp",
        "dovecot-uidlist",
        "dovecot-keywords",
        "dovecot-uidvalidity",
        f"dovecot-uidvalidity.{highest:08x}",  # the counter Dovecot shares with us
    }
    assert files_in(inbox.path, "tmp") == []
    assert (maildir.root / ".Sent" / "maildirfolder").read_bytes() == b""
    assert not (inbox.path / "maildirfolder").exists()


def _uidvalidity(info):
    line = (info.path / "dovecot-uidlist").read_text().split("\n", 1)[0]
    return int(HEADER.match(line)[1])
