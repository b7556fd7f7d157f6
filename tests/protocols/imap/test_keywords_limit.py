"""Keywords: the 27th in a folder never fails APPEND/COPY/MOVE, STORE says NO [LIMIT], FLAGS and
PERMANENTFLAGS name every keyword before a FETCH shows it (RFC 3501 §7.2.6)."""

from __future__ import annotations

import imaplib
import re

import pytest

from provider.mailstore import IncomingMessage
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.test_commands import folder_files, raw_login, raw_session
from tests.protocols.imap.test_parser_limits import until_tagged

ADDRESS = "alice@example.test"
MESSAGE = b"From: a@b.test\r\nSubject: keywords\r\n\r\nbody\r\n"
TWENTY_SIX = [f"$Label{n}" for n in range(26)]


class RecordingIMAP(imaplib.IMAP4):
    """imaplib, keeping every line the server sent, in order (imaplib itself groups untagged
    responses by type and loses their order)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.lines: list[bytes] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def readline(self) -> bytes:
        line = super().readline()
        self.lines.append(line)
        return line


def login(imap) -> RecordingIMAP:
    client = RecordingIMAP(*imap["imap"], timeout=10)
    client.login(ADDRESS, MAILBOX_PASSWORD)
    return client


def keywords_before_use(lines: list[bytes]) -> None:
    """Every keyword a FETCH shows was named by an earlier `* FLAGS` response."""
    known: set[str] | None = None
    for line in lines:
        text = line.decode("utf-8", "replace")
        if text.startswith("* FLAGS ("):
            known = {f for f in text[9:].split(")")[0].split() if not f.startswith("\\")}
            continue
        match = re.match(r"\* \d+ FETCH \(.*FLAGS \(([^)]*)\)", text)
        if match:
            assert known is not None, f"FETCH before any FLAGS: {text!r}"
            shown = {f for f in match.group(1).split() if not f.startswith("\\")}
            assert shown <= known, f"{text!r} uses {shown - known} not named in FLAGS"


def flags_and_permanentflags(lines: list[bytes]) -> tuple[list[str], list[str]]:
    flags = permanent = None
    for line in lines:
        text = line.decode()
        if text.startswith("* FLAGS ("):
            flags = text[9:].split(")")[0].split()
        match = re.match(r"\* OK \[PERMANENTFLAGS \(([^)]*)\)\]", text)
        if match:
            permanent = match.group(1).split()
    assert flags is not None and permanent is not None, lines
    return flags, permanent


@pytest.fixture
def full_inbox(session):
    """INBOX with all 26 keyword letters named (one message carries them all)."""
    make_mailbox(session)
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    inbox.deliver(MESSAGE, keywords=TWENTY_SIX)
    return inbox


def test_append_of_a_27th_keyword_stores_the_message_and_warns(full_inbox, imap):
    client = login(imap)
    typ, data = client.append("INBOX", "($New27 $Label3 \\Seen)", None, MESSAGE)
    assert typ == "OK" and b"APPENDUID" in data[0], data
    warning = [line for line in client.lines if line.startswith(b"* NO [LIMIT]")]
    assert len(warning) == 1 and b"$New27" in warning[0], client.lines
    stored = full_inbox.messages()[-1]
    assert full_inbox.read(stored.uid) == MESSAGE
    assert (stored.flags, stored.keywords) == ({"\\Seen"}, {"$Label3"})
    client.logout()


@pytest.mark.parametrize("verb", ["COPY", "MOVE"])
def test_copy_and_move_into_a_full_folder_store_every_message(session, imap, verb):
    make_mailbox(session)
    maildir = mail_store().open(ADDRESS)
    maildir.folder("Archive").deliver(MESSAGE, keywords=TWENTY_SIX)
    inbox = maildir.folder("INBOX")
    inbox.deliver_many(
        [
            IncomingMessage(MESSAGE + b"%d\r\n" % n, keywords=[f"$Other{n}", "$Label0"])
            for n in range(3)
        ]
    )
    client = login(imap)
    client.select("INBOX")
    typ, data = client.uid(verb, "1:3", "Archive")
    assert typ == "OK", data
    warning = [line for line in client.lines if line.startswith(b"* NO [LIMIT]")]
    assert len(warning) == 1 and b"$Other0, $Other1, $Other2" in warning[0], client.lines
    archived = maildir.folder("Archive").messages()[1:]
    assert [m.keywords for m in archived] == [{"$Label0"}] * 3
    assert len(inbox.messages()) == (0 if verb == "MOVE" else 3)
    client.logout()


def test_store_of_a_27th_keyword_is_no_limit_and_changes_nothing(full_inbox, imap):
    client = login(imap)
    client.select("INBOX")
    typ, data = client.store("1", "+FLAGS", "(\\Seen $New27)")
    assert typ == "NO" and data[0].startswith(b"[LIMIT] This folder already names the 26"), data
    assert b"$New27" in data[0]
    assert full_inbox.messages()[0].flags == frozenset()
    typ, data = client.uid(
        "STORE", "1", "(UNCHANGEDSINCE 9000000000000000000)", "+FLAGS.SILENT", "($X)"
    )
    assert typ == "NO" and data[0].startswith(b"[LIMIT]"), data
    # Keywords the folder knows still work, and so does removing any.
    assert client.store("1", "FLAGS", "(\\Seen $Label25)")[0] == "OK"
    assert full_inbox.messages()[0].keywords == {"$Label25"}
    client.logout()


def test_permanentflags_stop_offering_new_keywords_when_the_folder_is_full(session, imap):
    make_mailbox(session)
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    inbox.deliver(MESSAGE, keywords=TWENTY_SIX[:25])
    client = login(imap)
    client.select("INBOX")
    flags, permanent = flags_and_permanentflags(client.lines)
    assert flags[5:] == TWENTY_SIX[:25] and permanent[-1] == "\\*"
    # The 26th letter is taken by this session's STORE: the new lists come first.
    del client.lines[:]
    assert client.store("1", "+FLAGS", "($Label25)")[0] == "OK"
    flags, permanent = flags_and_permanentflags(client.lines)
    assert flags[5:] == TWENTY_SIX and "\\*" not in permanent and permanent == flags
    keywords_before_use(client.lines)
    client.logout()
    # A new session is told the same at SELECT; EXAMINE offers no permanent flags at all.
    for command, expected in (("select", flags), ("examine", [])):
        client = login(imap)
        getattr(client, command if command == "select" else "select")(
            "INBOX", readonly=command == "examine"
        )
        assert flags_and_permanentflags(client.lines) == (flags, expected)
        client.logout()


@pytest.mark.parametrize(
    ("flags", "answer"),
    [
        ("(" + "k" * 256 + ")", "NO"),
        ("(" + " ".join(f"$k{n}" for n in range(200)) + ")", "NO"),
        ("(a]b)", "BAD"),
    ],
)
def test_oversized_keywords_get_a_clear_answer_and_store_nothing(session, imap, flags, answer):
    make_mailbox(session)
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    inbox.deliver(MESSAGE)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    sock.sendall(b"s SELECT INBOX\r\n")
    until_tagged(reader, b"s")
    sock.sendall(b"a STORE 1 +FLAGS " + flags.encode() + b"\r\n")
    reply = until_tagged(reader, b"a")[-1]
    assert reply.startswith(b"a " + answer.encode()), reply
    if answer == "NO":
        assert reply.startswith(b"a NO [LIMIT] "), reply
    sock.sendall(
        b"b APPEND INBOX " + flags.encode() + b" {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n"
    )
    reply = until_tagged(reader, b"b")[-1]
    assert reply.startswith(b"b " + answer.encode()), reply
    assert len(folder_files("INBOX")) == 1
    assert inbox.keyword_names() == ()
    reader.close()


def test_a_keyword_set_by_another_session_is_named_in_flags_before_any_fetch(session, imap):
    make_mailbox(session)
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    inbox.deliver_many([IncomingMessage(MESSAGE), IncomingMessage(MESSAGE + b"2\r\n")])
    watcher, writer = login(imap), login(imap)
    watcher.select("INBOX")
    writer.select("INBOX")
    assert writer.store("1", "+FLAGS", "($hello)")[0] == "OK"
    keywords_before_use(writer.lines)
    assert any(line.startswith(b"* FLAGS (") and b"$hello" in line for line in writer.lines)

    # The watcher's NOOP: FLAGS and PERMANENTFLAGS, then the FETCH that shows $hello.
    start = len(watcher.lines)
    assert watcher.noop()[0] == "OK"
    new = watcher.lines[start:]
    assert [line.split(b" (")[0] for line in new[:3]] == [
        b"* FLAGS",
        b"* OK [PERMANENTFLAGS",
        b"* 1 FETCH",
    ]
    assert b"$hello" in new[0] and b"$hello" in new[1] and b"$hello" in new[2]
    keywords_before_use(watcher.lines)

    # A FETCH that sets \Seen right after another keyword appeared: the FETCH itself does not
    # show the keyword the session has not been told of; the update after it does, in order.
    assert writer.store("2", "+FLAGS", "($world)")[0] == "OK"
    start = len(watcher.lines)
    typ, data = watcher.fetch("2", "(BODY[])")
    assert typ == "OK", (data, watcher.lines[start:])
    keywords_before_use(watcher.lines)
    assert any(b"$world" in line and b"FETCH" in line for line in watcher.lines[start:])
    assert any(
        line.startswith(b"* FLAGS (") and b"$world" in line for line in watcher.lines[start:]
    )

    # APPEND with a new keyword by the writer: the watcher hears of it before EXISTS/FETCH.
    assert writer.append("INBOX", "($third)", None, MESSAGE)[0] == "OK"
    start = len(watcher.lines)
    assert watcher.noop()[0] == "OK"
    assert watcher.lines[start].startswith(b"* FLAGS (") and b"$third" in watcher.lines[start]
    typ, data = watcher.fetch("3", "(FLAGS)")
    assert typ == "OK" and b"$third" in data[0]
    keywords_before_use(watcher.lines)
    watcher.logout()
    writer.logout()


def test_own_append_and_copy_name_their_new_keywords_before_using_them(session, imap):
    make_mailbox(session)
    mail_store().open(ADDRESS).folder("Archive").deliver(MESSAGE, keywords=["$fromArchive"])
    client = login(imap)
    client.select("INBOX")
    start = len(client.lines)
    assert client.append("INBOX", "($mine)", None, MESSAGE)[0] == "OK"
    new = [line for line in client.lines[start:] if not line.startswith(b"+ ")]
    assert new[0].startswith(b"* FLAGS (") and b"$mine" in new[0], new
    assert new[1].startswith(b"* OK [PERMANENTFLAGS (") and b"$mine" in new[1], new
    assert any(line.startswith(b"* 1 EXISTS") for line in new[2:]), new
    client.select("Archive")
    start = len(client.lines)
    assert client.copy("1", "Archive")[0] == "OK"  # into the selected folder itself
    typ, data = client.fetch("1:*", "(FLAGS)")
    assert typ == "OK" and all(b"$fromArchive" in item for item in data), data
    keywords_before_use(client.lines)
    client.logout()
