"""APPEND dates the store cannot keep and mailbox names that are not modified UTF-7 get BAD."""

from __future__ import annotations

import os

import pytest

from provider.mailstore import IncomingMessage, InvalidDate, forget_cached_state
from provider.services.storage import mail_store
from tests.conftest import make_mailbox
from tests.protocols.imap.test_commands import folder_files, raw_login, raw_session
from tests.protocols.imap.test_parser_limits import until_tagged
from tests.protocols.imap.test_session import MESSAGE

ADDRESS = "alice@example.test"


@pytest.fixture
def client(session, imap):
    make_mailbox(session)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    yield sock, reader
    reader.close()


def append(sock, reader, date: bytes) -> bytes:
    sock.sendall(b'a APPEND INBOX "' + date + b'" {%d+}\r\n' % len(MESSAGE) + MESSAGE + b"\r\n")
    return until_tagged(reader, b"a")[-1]


@pytest.mark.parametrize(
    "date",
    [
        b"31-Dec-9999 23:59:59 +0000",
        b"01-Jan-0001 00:00:00 -2359",
        b"31-Dec-1969 23:59:59 +0000",
        b"07-Feb-2106 06:28:16 +0000",
    ],
)
def test_append_with_a_date_the_store_cannot_keep_is_bad_and_stores_nothing(client, date):
    sock, reader = client
    reply = append(sock, reader, date)
    assert reply.startswith(b"a BAD ") and b"out of range" in reply, reply
    assert folder_files("INBOX") == []
    sock.sendall(b"b NOOP\r\n")
    assert until_tagged(reader, b"b")[-1].startswith(b"b OK")


@pytest.mark.parametrize(
    ("date", "shown"),
    [
        (b"01-Jan-1970 00:00:00 +0000", b"01-Jan-1970 00:00:00 +0000"),
        (b"07-Feb-2106 06:28:15 +0000", b"07-Feb-2106 06:28:15 +0000"),
        (b"31-Dec-2099 23:59:59 -2359", b"31-Dec-2099 23:59:59 -2359"),
    ],
)
def test_append_dates_at_the_edges_are_kept_exactly(client, date, shown):
    sock, reader = client
    assert append(sock, reader, date).startswith(b"a OK [APPENDUID ")
    sock.sendall(b"s SELECT INBOX\r\nf FETCH 1 INTERNALDATE\r\n")
    until_tagged(reader, b"s")
    reply = until_tagged(reader, b"f")
    assert reply[0] == b'* 1 FETCH (INTERNALDATE "' + shown + b'")\r\n'


def test_the_store_refuses_dates_it_cannot_keep(session):
    make_mailbox(session)
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    for moment in (-1.0, 2.0**32, 253402300799.0):
        with pytest.raises(InvalidDate):
            inbox.deliver(MESSAGE, internal_date=moment)
    assert inbox.messages() == []
    assert not any((inbox.path / "tmp").iterdir())


@pytest.mark.parametrize("mtime", [-86400 * 365 * 10, 2**33])
def test_a_message_file_dated_out_of_range_is_still_copied(client, mtime):
    """A file whose mtime the store could not take as a new date (`touch`, a migrated file) is
    shown and copied at the nearest date it keeps: COPY must not fail for it."""
    sock, reader = client
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    [stored] = inbox.deliver_many([IncomingMessage(MESSAGE)])
    path = inbox.get(stored.uid).path
    os.utime(path, (mtime, mtime))
    forget_cached_state()  # as a fresh process finds the file
    sock.sendall(b"s SELECT INBOX\r\nc COPY 1 Archive\r\n")
    until_tagged(reader, b"s")
    assert until_tagged(reader, b"c")[-1].startswith(b"c OK [COPYUID ")
    [copied] = mail_store().open(ADDRESS).folder("Archive").messages()
    assert copied.internal_date == min(max(mtime, 0), 2**32 - 1)


@pytest.mark.parametrize(
    "name",
    [
        b'"&AAA"',  # "&" never closed
        b'"&AGE-"',  # an encoded printable ASCII character ("a")
        b'"&AOk-&AOk-"',  # two runs where one would do
        b'"&AO-"',  # base64 with leftover bits
        b'"&2D0-"',  # a lone surrogate (U+D83D)
        b'"&Jjo!"',  # "!" inside base64
        b'"caf\xc3\xa9"',  # raw 8-bit UTF-8
        b'"x&y"',  # "&" for itself must be written "&-"
    ],
)
def test_mailbox_names_that_are_not_modified_utf7_are_refused(client, name):
    """A new name (CREATE, RENAME's target) or a LIST pattern: BAD. A name that must exist:
    NO [NONEXISTENT], as Dovecot answers it (no folder can have such a name)."""
    sock, reader = client
    for tag, command, answer in (
        (b"c", b"CREATE " + name, b"BAD"),
        (b"r", b"RENAME Sent " + name, b"BAD"),
        (b"l", b'LIST "" ' + name, b"BAD"),
        (b"s", b"SELECT " + name, b"NO [NONEXISTENT]"),
        (b"e", b"EXAMINE " + name, b"NO [NONEXISTENT]"),
        (b"t", b"STATUS " + name + b" (MESSAGES)", b"NO [NONEXISTENT]"),
        (b"u", b"SUBSCRIBE " + name, b"NO [NONEXISTENT]"),
        (b"d", b"DELETE " + name, b"NO [NONEXISTENT]"),
        (b"a", b"APPEND " + name + b" {1+}\r\nx", b"NO [NONEXISTENT]"),
    ):
        sock.sendall(tag + b" " + command + b"\r\n")
        reply = until_tagged(reader, tag)[-1]
        expected = tag + b" " + answer + b" Mailbox name is not valid modified UTF-7"
        assert reply.startswith(expected), reply
    names = [info.name for info in mail_store().open(ADDRESS).folders()]
    assert names == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    sock.sendall(b"z NOOP\r\n")
    assert until_tagged(reader, b"z")[-1].startswith(b"z OK")


def test_a_valid_modified_utf7_name_round_trips(client):
    sock, reader = client
    sock.sendall(b'c CREATE "Caf&AOk- &- Bar"\r\n')
    assert until_tagged(reader, b"c")[-1].startswith(b"c OK")
    sock.sendall(b'l LIST "" "Caf*"\r\n')
    listed = until_tagged(reader, b"l")
    assert listed[0] == b'* LIST (\\HasNoChildren) "/" "Caf&AOk- &- Bar"\r\n'
    assert "Café & Bar" in [info.name for info in mail_store().open(ADDRESS).folders()]
