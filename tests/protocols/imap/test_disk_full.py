"""A full disk (ENOSPC, EDQUOT) during APPEND, COPY, MOVE, STORE and CREATE: a tagged
`NO [OVERQUOTA] Not enough disk space`, the session goes on, nothing is half-written."""

from __future__ import annotations

import errno
import os

import pytest

from provider.mailstore import IncomingMessage, maildir
from provider.services.storage import mail_store
from tests.conftest import make_mailbox
from tests.mailstore.diskfull import FailingWrites, leftovers
from tests.protocols.imap.test_commands import raw_login, raw_session, used_bytes
from tests.protocols.imap.test_parser_limits import until_tagged

ADDRESS = "alice@example.test"
DISK_FULL = b"NO [OVERQUOTA] Not enough disk space"


def big_message(n: int, size: int) -> bytes:
    head = f"From: a@b.test\r\nSubject: message {n}\r\n\r\n".encode()
    return head + (b"x" * 76 + b"\r\n") * (size // 78)


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> FailingWrites:
    return FailingWrites(monkeypatch)


@pytest.fixture
def client(session, imap):
    mailbox = make_mailbox(session)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    yield mailbox, sock, reader
    reader.close()


def command(sock, reader, tag: bytes, line: bytes) -> list[bytes]:
    sock.sendall(tag + b" " + line + b"\r\n")
    return until_tagged(reader, tag)


def files(folder: str) -> list[str]:
    path = mail_store().open(ADDRESS).folder(folder).path
    return sorted(p.name for sub in ("tmp", "new", "cur") for p in (path / sub).iterdir())


def uidlist(folder: str) -> bytes:
    return (mail_store().open(ADDRESS).folder(folder).path / "dovecot-uidlist").read_bytes()


def append_line(message: bytes, flags: bytes = b"") -> bytes:
    return b"APPEND INBOX " + flags + b"{%d+}\r\n" % len(message) + message


# --- fault injection: the Nth write of the store fails ------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize(
    ("flags", "writes"),
    [
        (b"", 2),  # the message file in tmp/, the uidlist line
        (b"($New%d) ", 3),  # dovecot-keywords first (a new keyword each time)
    ],
)
def test_append_on_a_full_disk_is_refused_cleanly_at_every_write(
    session, client, failing, code, flags, writes
):
    mailbox, sock, reader = client
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    for nth in range(1, writes + 1):
        before = (files("INBOX"), used_bytes(session, mailbox))
        failing.arm(nth, code)
        message = b"Subject: x\r\n\r\nbody\r\n"
        reply = command(sock, reader, b"a", append_line(message, flags.replace(b"%d", b"%d" % nth)))
        failing.disarm()
        assert failing.failed == 1
        assert reply[-1] == b"a " + DISK_FULL + b"\r\n", (nth, reply)
        assert (files("INBOX"), used_bytes(session, mailbox)) == before
        assert leftovers(inbox.path) == []
    # The store is whole: the next APPEND works and fetches back byte for byte.
    message = b"Subject: after\r\n\r\nthe disk has room again\r\n"
    reply = command(sock, reader, b"b", append_line(message, flags.replace(b"%d", b"")))
    assert reply[-1].startswith(b"b OK [APPENDUID ")
    uid = int(reply[-1].split()[4].rstrip(b"]"))
    assert inbox.read(uid) == message
    assert [info.uid for info in inbox.messages()] == [uid]
    assert used_bytes(session, mailbox) == len(message)


@pytest.fixture
def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """COPY and MOVE write the bytes, as on a file system without hard links."""

    def refuse(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(maildir, "link_file", refuse)


@pytest.mark.parametrize("move", [False, True])
def test_copy_and_move_on_a_full_disk_leave_both_folders_as_they_were(
    session, client, failing, no_hard_links, move
):
    mailbox, sock, reader = client
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    inbox.deliver_many([IncomingMessage(big_message(n, 2000), ["\\Seen"]) for n in range(3)])
    verb = b"MOVE" if move else b"COPY"
    command(sock, reader, b"s", b"SELECT INBOX")
    archive = mail_store().open(ADDRESS).folder("Archive")
    # Three message files, then the uidlist line: the disk fills at each one in turn.
    for nth in range(1, 5):
        before = (files("INBOX"), files("Archive"), uidlist("Archive"))
        used = used_bytes(session, mailbox)
        failing.arm(nth)
        reply = command(sock, reader, b"c", verb + b" 1:3 Archive")
        failing.disarm()
        assert reply[-1] == b"c " + DISK_FULL + b"\r\n", (nth, reply)
        assert not any(b"EXPUNGE" in line for line in reply)
        after = (files("INBOX"), files("Archive"))
        assert after == before[:2], nth
        assert used_bytes(session, mailbox) == used
        assert leftovers(archive.path) == []
        if nth < 4:  # a failed uidlist line is taken back by a rewrite that skips its UIDs
            assert uidlist("Archive") == before[2]
    reply = command(sock, reader, b"d", verb + b" 1:3 Archive")
    assert reply[-1].startswith(b"d OK"), reply
    assert [inbox.read(i.uid) for i in inbox.messages()] == (
        [] if move else [big_message(n, 2000) for n in range(3)]
    )
    assert [archive.read(i.uid) for i in archive.messages()] == [
        big_message(n, 2000) for n in range(3)
    ]


def test_store_and_create_on_a_full_disk_answer_no_and_change_nothing(session, client, failing):
    _, sock, reader = client
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    inbox.deliver(b"Subject: x\r\n\r\nbody\r\n")
    command(sock, reader, b"s", b"SELECT INBOX")
    failing.arm(1)  # dovecot-keywords for the new keyword
    reply = command(sock, reader, b"a", b"STORE 1 +FLAGS ($Brand-New \\Seen)")
    failing.disarm()
    assert reply[-1] == b"a " + DISK_FULL + b"\r\n"
    assert inbox.messages()[0].flags == frozenset() and inbox.messages()[0].keywords == frozenset()
    assert leftovers(inbox.path) == []
    failing.arm(1)  # the new folder's dovecot-uidlist
    reply = command(sock, reader, b"b", b"CREATE Projects/2026")
    failing.disarm()
    assert reply[-1] == b"b " + DISK_FULL + b"\r\n"
    root = mail_store().open(ADDRESS).root
    assert not [p.name for p in root.iterdir() if p.name.startswith(("CREATING-", ".Projects"))]
    assert command(sock, reader, b"c", b"CREATE Projects/2026")[-1].startswith(b"c OK")


@pytest.mark.parametrize("move", [False, True])
def test_a_hard_linked_copy_writes_only_the_uidlist_line_and_a_full_disk_there_leaves_nothing(
    session, client, failing, move
):
    """COPY and MOVE link the originals (nothing to write but the directory and the uidlist):
    the disk filling at the uidlist line leaves both folders as they were, links included."""
    mailbox, sock, reader = client
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    inbox.deliver_many([IncomingMessage(big_message(n, 2000), ["\\Seen"]) for n in range(3)])
    verb = b"MOVE" if move else b"COPY"
    command(sock, reader, b"s", b"SELECT INBOX")
    archive = mail_store().open(ADDRESS).folder("Archive")
    before = (files("INBOX"), files("Archive"), uidlist("Archive"))
    used = used_bytes(session, mailbox)
    failing.arm(1)
    reply = command(sock, reader, b"c", verb + b" 1:3 Archive")
    failing.disarm()
    assert reply[-1] == b"c " + DISK_FULL + b"\r\n", reply
    # The uidlist line failed, and the rewrite that takes it back went through: no message
    # bytes were written (writing them, the first write would have been the first message).
    assert (failing.failed, failing.calls) == (1, 2)
    # The UIDs the failed line named are skipped (the header's next UID moves on), never reused.
    assert (files("INBOX"), files("Archive")) == before[:2]
    assert uidlist("Archive").splitlines()[1:] == before[2].splitlines()[1:]
    assert used_bytes(session, mailbox) == used and leftovers(archive.path) == []
    originals = [info.path for info in inbox.messages()]
    assert all(path.stat().st_nlink == 1 for path in originals)
    reply = command(sock, reader, b"d", verb + b" 1:3 Archive")
    assert reply[-1].startswith(b"d OK"), reply
    copies = [info.path for info in archive.messages()]
    assert [archive.read(i.uid) for i in archive.messages()] == [
        big_message(n, 2000) for n in range(3)
    ]
    if move:
        assert all(path.stat().st_nlink == 1 for path in copies)
    else:
        inodes = {path.stat().st_ino for path in originals}
        assert {path.stat().st_ino for path in copies} == inodes
        assert all(path.stat().st_nlink == 2 for path in copies)
