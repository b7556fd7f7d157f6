"""SORT, ESORT and THREAD (RFC 5256, RFC 5267) on real sockets with imaplib and IMAPClient."""

from __future__ import annotations

import pytest
from imapclient import IMAPClient

from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.exchange import exchange
from tests.protocols.imap.test_session import logged_in


def mail(
    subject: str, date: str, sender: str, to: str | None, extra: str = "", body: str = ""
) -> bytes:
    headers = f"From: {sender}\r\nSubject: {subject}\r\nDate: {date}\r\n"
    if to is not None:
        headers += f"To: {to}\r\n"
    return (headers + extra + "\r\n" + (body or "Text.") + "\r\n").encode()


# (message, internal date); arrival order is the order of the list.
MESSAGES = [
    # 1: the start of a thread
    (
        mail(
            "Plans",
            "Mon, 01 Jan 2024 10:00:00 +0000",
            "carol@c.test",
            "bob@b.test",
            "Message-ID: <plans@c.test>\r\n",
            "x" * 300,
        ),
        '"05-Jan-2024 10:00:00 +0000"',
    ),
    # 2: a reply to 1, sent later (in a zone east of UTC)
    (
        mail(
            "Re: Plans",
            "Tue, 02 Jan 2024 09:00:00 +0200",
            "alice@a.test",
            "carol@c.test",
            "Message-ID: <re1@a.test>\r\nReferences: <plans@c.test>\r\nCc: dave@d.test\r\n",
        ),
        '"02-Jan-2024 10:00:00 +0000"',
    ),
    # 3: unrelated, no To, sent earliest
    (
        mail(
            "[list] Budget",
            "Sun, 31 Dec 2023 23:00:00 -0500",
            "bob@b.test",
            None,
            "Message-ID: <budget@b.test>\r\n",
            "y" * 100,
        ),
        '"03-Jan-2024 10:00:00 +0000"',
    ),
    # 4: a reply to 2 by In-Reply-To only
    (
        mail(
            "Re: Re: Plans",
            "Wed, 03 Jan 2024 12:00:00 +0000",
            "Bob <BOB@b.test>",
            "alice@a.test",
            "Message-ID: <re2@b.test>\r\nIn-Reply-To: <re1@a.test>\r\n",
        ),
        '"04-Jan-2024 10:00:00 +0000"',
    ),
    # 5: no Date header at all: its internal date is its sent date
    (
        b"From: eve@e.test\r\nTo: zed@z.test\r\nSubject: =?UTF-8?Q?=C3=84pfel?=\r\n\r\nHi.\r\n",
        '"01-Jan-2024 00:30:00 +0000"',
    ),
]


@pytest.fixture
def client(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    for data, when in MESSAGES:
        assert client.append("INBOX", None, when, data)[0] == "OK"
    client.select("INBOX")
    yield client
    client.logout()


SORTS = {
    "(ARRIVAL)": "5 2 3 4 1",
    "(REVERSE ARRIVAL)": "1 4 3 2 5",
    "(DATE)": "5 3 1 2 4",  # 2's 09:00 +0200 is 07:00 UTC, after 1's 10:00 on the 1st
    "(REVERSE DATE)": "4 2 1 3 5",
    "(SUBJECT)": "5 3 1 2 4",  # Äpfel (casemapped and decomposed: a…), Budget, 3 Plans
    "(SUBJECT REVERSE DATE)": "5 3 4 2 1",
    "(FROM)": "2 3 4 1 5",  # alice, bob, BOB (case-insensitive: by sequence), carol, eve
    "(TO)": "3 4 1 2 5",  # 3 has no To: the empty string sorts first
    "(CC)": "1 3 4 5 2",
    # RFC 5957: the display name where there is one ("Bob" of 4 before bob@b.test of 3).
    "(DISPLAYFROM)": "2 4 3 1 5",
    "(REVERSE DISPLAYTO)": "5 2 1 4 3",
    "(SIZE)": "5 4 2 3 1",
    "(REVERSE SIZE)": "1 3 2 4 5",
}


def test_capabilities(client):
    caps = client.capability()[1][0].split()
    for name in (
        b"SORT",
        b"SORT=DISPLAY",
        b"ESORT",
        b"THREAD=ORDEREDSUBJECT",
        b"THREAD=REFERENCES",
    ):
        assert name in caps


def test_sort_criteria(client):
    got = {}
    for criteria in SORTS:
        typ, data = client.sort(criteria, "UTF-8", "ALL")
        got[criteria] = data[0].decode() if typ == "OK" else typ
    assert got == SORTS


def test_uid_sort_with_search_keys_and_empty_result(client):
    client.store("1", "+FLAGS", "(\\Deleted)")
    client.expunge()  # sequence numbers now differ from UIDs
    typ, data = client.uid("SORT", "(DATE)", "UTF-8", "UNDELETED")
    assert (typ, data) == ("OK", [b"5 3 2 4"])
    typ, data = client.sort("(DATE)", "US-ASCII", "FROM", "nobody")
    assert (typ, data) == ("OK", [b""])
    untagged, _ = exchange(client, 'SORT (DATE) UTF-8 SUBJECT "nothing"')
    assert untagged == [b"* SORT"]


def test_esort_return_options(client):
    untagged, done = exchange(client, "SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
    assert done.startswith(b"OK")
    assert untagged[0].split(b") ", 1)[1] == b"MIN 5 MAX 4 ALL 5,3,1:2,4 COUNT 5"
    untagged, _ = exchange(client, "UID SORT RETURN () (REVERSE ARRIVAL) UTF-8 ALL")
    assert untagged[0].split(b") ", 1)[1] == b"UID ALL 1,4,3,2,5"
    untagged, _ = exchange(client, "SORT RETURN (COUNT) (DATE) UTF-8 SUBJECT nothing")
    assert untagged[0].split(b") ", 1)[1] == b"COUNT 0"


def test_esort_save_keeps_the_first_in_sort_order(client):
    _, done = exchange(client, "SORT RETURN (SAVE MIN) (REVERSE DATE) UTF-8 ALL")
    assert done.startswith(b"OK")
    untagged, _ = exchange(client, "FETCH $ (UID)")
    assert untagged == [b"* 4 FETCH (UID 4)"]
    untagged, done = exchange(client, "SORT RETURN (SAVE) (DATE) UTF-8 SUBJECT plans")
    assert untagged == [] and done.startswith(b"OK")
    assert exchange(client, "SEARCH RETURN (ALL) $")[0][0].endswith(b"ALL 1:2,4")


def test_sort_with_modseq_reports_it(client):
    untagged, _ = exchange(client, "SORT (DATE) UTF-8 MODSEQ 1")
    assert untagged[-1].startswith(b"* SORT 5 3 1 2 4 (MODSEQ ")


def test_bad_sort_and_thread_commands(client):
    commands = [
        "SORT DATE UTF-8 ALL",
        "SORT () UTF-8 ALL",
        "SORT (BOGUS) UTF-8 ALL",
        "SORT (REVERSE) UTF-8 ALL",
        "SORT (DATE) UTF-8",
        "SORT (DATE)",
        "SORT (DATE) (UTF-8) ALL",
        "SORT RETURN (PARTIAL 0:10) (DATE) UTF-8 ALL",
        "SORT RETURN (UPDATE) (DATE) UTF-8 ALL",
        "SORT (DATE) UTF-8 FROBNICATE",
        "UID SORT (DATE) UTF-8 " + "NOT " * 200 + "ALL",
        "THREAD BOGUS UTF-8 ALL",
        "THREAD (REFERENCES) UTF-8 ALL",
        "THREAD REFERENCES UTF-8",
        "UID THREAD REFERENCES",
    ]
    answers = {}
    for command in commands:
        untagged, done = exchange(client, command)
        answers[command] = (done.split(b" ")[0], untagged)
    assert answers == {command: (b"BAD", []) for command in commands}
    for command in ("SORT (DATE) KOI8-R ALL", "THREAD REFERENCES ISO-8859-1 ALL"):
        assert exchange(client, command)[1].startswith(b"NO [BADCHARSET")


def test_thread_references_and_orderedsubject(client):
    untagged, _ = exchange(client, "THREAD REFERENCES UTF-8 ALL")
    # 5 (no Date: its internal date, 1 Jan 00:30) and 3 (31 Dec 23:00 -0500 = 1 Jan 04:00).
    assert untagged == [b"* THREAD (5)(3)(1 2 4)"]
    untagged, _ = exchange(client, "UID THREAD ORDEREDSUBJECT UTF-8 ALL")
    assert untagged == [b"* THREAD (5)(3)(1 (2)(4))"]
    untagged, _ = exchange(client, "THREAD REFERENCES UTF-8 NOT UID 1")
    # Without the start of the thread its two replies are still one thread.
    assert untagged == [b"* THREAD (5)(3)(2 4)"]
    untagged, _ = exchange(client, "THREAD REFERENCES UTF-8 SUBJECT nothing")
    assert untagged == [b"* THREAD"]


def test_imapclient_sort_and_thread_like_roundcube(session, imap):
    """Roundcube's list view: SORT by date descending, then THREAD REFERENCES for the thread
    view, both by UID, through IMAPClient's own sort() and thread()."""
    make_mailbox(session)
    host, port = imap["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        for data, when in MESSAGES:
            client._imap.append("INBOX", None, when, data)
        client.select_folder("INBOX")
        assert client.sort(["REVERSE DATE"], ["ALL"]) == [4, 2, 1, 3, 5]
        assert client.sort("SUBJECT", ["FROM", "bob"], charset="US-ASCII") == [3, 4]
        assert client.thread("REFERENCES", ["ALL"]) == ((5,), (3,), (1, 2, 4))
        assert client.thread("ORDEREDSUBJECT", ["ALL"]) == ((5,), (3,), (1, (2,), (4,)))
        client.logout()
