"""Huge numbers in FETCH arguments get a tagged BAD (or an empty answer where the RFC allows
one) and the session goes on (issue 11 item 6, the IMAP side)."""

from __future__ import annotations

import imaplib

import pytest

from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox

HUGE = "99999999999999999999"
MESSAGE = b"From: a@b.test\r\nSubject: Hi\r\n\r\nBody text.\r\n"


@pytest.fixture
def client(session, imap):
    make_mailbox(session)
    mail_store().open("alice@example.test").folder("INBOX").deliver(MESSAGE)
    client = imaplib.IMAP4(*imap["imap"], timeout=10)
    client.login("alice@example.test", MAILBOX_PASSWORD)
    client.select("INBOX")
    yield client
    client.logout()


def tagged(client: imaplib.IMAP4, line: str) -> bytes:
    tag = client._new_tag()
    client.send(tag + b" " + line.encode() + b"\r\n")
    while True:
        reply = client.readline()
        if not reply:
            raise EOFError("the server closed the connection")  # not an endless loop
        if reply.startswith(tag + b" "):
            return reply[len(tag) + 1 :]
        if reply.rstrip().endswith(b"}"):  # skip a literal
            client.read(int(reply.rstrip()[:-1].rsplit(b"{", 1)[1]))


@pytest.mark.parametrize(
    "line",
    [
        f"FETCH 1 BODY.PEEK[]<{HUGE}.1>",
        f"FETCH 1 BODY.PEEK[]<0.{HUGE}>",
        "FETCH 1 BODY.PEEK[TEXT]<4294967296.1>",
        f"FETCH {HUGE} FLAGS",
        f"FETCH 1:{HUGE} FLAGS",
        f"UID FETCH {HUGE} FLAGS",
        f"FETCH 1 (FLAGS) (CHANGEDSINCE {HUGE})",
        f"STORE {HUGE} +FLAGS (\\Seen)",
        f"SEARCH UID {HUGE}",
        f"FETCH 1 BODY.PEEK[{HUGE}]",
    ],
)
def test_huge_numbers_get_bad_and_the_session_goes_on(client, line):
    assert tagged(client, line).startswith(b"BAD")
    assert client.noop()[0] == "OK"
    status, data = client.fetch("1", "(BODY.PEEK[TEXT])")
    assert status == "OK" and data[0][1] == b"Body text.\r\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("FETCH 1 BODY.PEEK[999999999]", b"BODY[999999999] {0}"),
        ("FETCH 1 BODY.PEEK[]<4294967295.4294967295>", b"BODY[]<4294967295> {0}"),
        ("FETCH 1 BODY.PEEK[]<6.4294967295>", b"BODY[]<6> {"),
    ],
)
def test_large_but_valid_numbers_are_answered(client, line, expected):
    tag = client._new_tag()
    client.send(tag + b" " + line.encode() + b"\r\n")
    first = client.readline()
    assert expected in first, first
    assert tagged(client, "NOOP").startswith(b"OK")


def test_search_with_huge_numbers_finds_nothing_and_goes_on(client):
    assert client.search(None, "LARGER", HUGE) == ("OK", [b""])
    assert client.noop()[0] == "OK"


@pytest.mark.parametrize(
    "args",
    [
        ("FETCH", "1:*", "(FLAGS)"),
        ("FETCH", "*", "(FLAGS)"),
        ("STORE", "1:*", "+FLAGS", "(\\Seen)"),
        ("COPY", "*", "INBOX"),
        ("SEARCH", "UID", "1:*"),
    ],
)
def test_uid_ranges_on_an_empty_folder_answer_ok_and_the_session_goes_on(client, args):
    """`UID FETCH 1:*` in an empty folder (a client's resync) is an empty answer, not a
    dropped connection (found by bench/imap_mixed.py)."""
    assert client.select("Archive") == ("OK", [b"0"])
    status, _data = client.uid(*args)  # imaplib raises `abort` if the server hangs up
    assert status == "OK"
    assert client.noop()[0] == "OK"
