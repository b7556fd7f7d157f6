"""CONTEXT=SEARCH answered as Dovecot answers it: the same exchanges (two sessions on one
INBOX, live searches, flag changes, an expunge, CANCELUPDATE, PARTIAL) against the real
Dovecot and against our server give the same ESEARCH and EXPUNGE lines, in the same order."""

from __future__ import annotations

import imaplib
from pathlib import Path

import pytest

from provider.mailstore import IncomingMessage, MailStore
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.interop.test_dovecot_reads_store import ADDRESS, PASSWORD, running_dovecot
from tests.interop.test_dovecot_reads_store import work as dovecot_work
from tests.protocols.imap.test_context_search import message, run

__all__ = ["dovecot_work"]

# (session, command): "a" keeps the live searches, "b" changes the folder.
SCRIPT = [
    ("a", "SEARCH RETURN (UPDATE) UNSEEN"),
    ("a", "UID SEARCH RETURN (UPDATE COUNT) UNSEEN"),
    ("a", "UID SEARCH RETURN (UPDATE ALL) SEEN"),
    ("b", "STORE 1 +FLAGS (\\Seen)"),
    ("b", "STORE 2 -FLAGS (\\Seen)"),
    ("a", "NOOP"),
    ("a", "STORE 2 +FLAGS (\\Seen)"),
    ("b", "STORE 3 +FLAGS (\\Deleted)"),
    ("b", "EXPUNGE"),
    ("a", "NOOP"),
    ("a", 'CANCELUPDATE "s1"'),
    ("b", "UID STORE 4 -FLAGS (\\Seen)"),
    ("b", "UID STORE 5 +FLAGS (\\Seen)"),
    ("a", "NOOP"),
    ("a", "SEARCH RETURN (PARTIAL 2:3) SEEN"),
    ("a", "UID SEARCH RETURN (PARTIAL 1:9 COUNT) ALL"),
    ("a", "SEARCH RETURN (CONTEXT) UNSEEN"),
]


def transcript(a: imaplib.IMAP4, b: imaplib.IMAP4) -> list[tuple[int, str, bytes]]:
    """Every ESEARCH, EXPUNGE and tagged status line session a saw, step by step."""
    seen = []
    for step, (who, command) in enumerate(SCRIPT):
        untagged, done = run(a if who == "a" else b, f"s{step}", command)
        if who == "a":
            seen += [
                (step, "untagged", line)
                for line in untagged
                if b"ESEARCH" in line or line.endswith(b"EXPUNGE")
            ]
            seen.append((step, "tagged", done.split(b" ", 1)[0]))
    return seen


def sessions(
    host: str, port: int, address: str, password: str
) -> tuple[imaplib.IMAP4, imaplib.IMAP4]:
    pair = []
    for _ in range(2):
        client = imaplib.IMAP4(host, port, timeout=10)
        client.login(address, password)
        client.select("INBOX")
        pair.append(client)
    return pair[0], pair[1]


@pytest.fixture
def dovecot_transcript(dovecot_work: Path) -> list[tuple[int, str, bytes]]:
    store = MailStore(dovecot_work / "mail")
    inbox = store.create(ADDRESS).folder("INBOX")
    for number in range(1, 7):
        flags = ["\\Seen"] if number % 2 == 0 else []
        inbox.deliver_many([IncomingMessage(message(number), flags)])
    with running_dovecot(dovecot_work, store) as server:
        a, b = sessions(server.host, server.port, ADDRESS, PASSWORD)
        try:
            return transcript(a, b)
        finally:
            a.logout()
            b.logout()


def test_our_live_searches_answer_as_dovecot_does(session, imap, dovecot_transcript):
    make_mailbox(session)
    setup = imaplib.IMAP4(*imap["imap"], timeout=10)
    setup.login("alice@example.test", MAILBOX_PASSWORD)
    for number in range(1, 7):
        setup.append("INBOX", "(\\Seen)" if number % 2 == 0 else None, None, message(number))
    setup.logout()
    a, b = sessions(*imap["imap"], "alice@example.test", MAILBOX_PASSWORD)
    try:
        ours = transcript(a, b)
    finally:
        a.logout()
        b.logout()
    assert ours == dovecot_transcript
