"""SEARCH keys (RFC 3501 §6.4.4) over a small fixed mailbox, table-driven, through imaplib."""

from __future__ import annotations

import pytest

from tests.conftest import make_mailbox
from tests.protocols.imap.test_session import logged_in

LUNCH = (
    b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nCc: carol@c.test\r\n"
    b"Subject: Lunch plans\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nLet's eat pizza.\r\n"
)
GREETING = (
    b"From: bob@b.test\r\nTo: alice@a.test\r\nBcc: dave@d.test\r\nX-Mailer: Foomail 2\r\n"
    b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nDate: Thu, 15 Feb 2024 09:00:00 +0000\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Grüße aus Berlin.\r\n".encode()
)
REPORT = (
    b"From: carol@c.test\r\nTo: alice@a.test\r\nSubject: Report\r\n"
    b"Date: Sun, 10 Mar 2024 12:00:00 +0000\r\n\r\n" + b"figures " * 250 + b"\r\n"
)
HELLO = (
    b"From: <dave (the boss)@ (home) d.test>\r\nTo: alice@a.test\r\nSubject: Hello\r\n"
    b"Date: Mon, 01 Apr 2024 08:00:00 +0000\r\n\r\nHi.\r\n"
)
# (message, flags, internal date); the last has no flags, so it is the one \Recent message.
MAILBOX = [
    (LUNCH, "(\\Seen \\Answered $Work)", '"01-Jan-2024 10:00:00 +0000"'),
    (GREETING, "(\\Flagged \\Deleted)", '"15-Feb-2024 09:00:00 +0000"'),
    (REPORT, "(\\Draft \\Seen)", '"10-Mar-2024 12:00:00 +0000"'),
    (HELLO, None, None),
]
CASES = {
    "ALL": "1 2 3 4",
    "FROM dave@d.test": "4",  # written with comments, found by the parsed address
    "ANSWERED": "1",
    "UNANSWERED": "2 3 4",
    "BCC dave": "2",
    "BEFORE 1-Feb-2024": "1",
    "ON 15-Feb-2024": "2",
    "SINCE 10-Mar-2024": "3 4",
    "BODY pizza": "1",
    "CC carol": "1",
    "DELETED": "2",
    "UNDELETED": "1 3 4",
    "DRAFT": "3",
    "UNDRAFT": "1 2 4",
    "FLAGGED": "2",
    "UNFLAGGED": "1 3 4",
    "FROM bob": "2",
    "FROM ALICE": "1",
    "HEADER X-Mailer foomail": "2",
    "KEYWORD $Work": "1",
    "UNKEYWORD $Work": "2 3 4",
    "LARGER 1000": "3",
    "SMALLER 1000": "1 2 4",
    "NEW": "4",
    "OLD": "1 2 3",
    "RECENT": "4",
    "SEEN": "1 3",
    "UNSEEN": "2 4",
    "NOT SEEN": "2 4",
    "OR FLAGGED DRAFT": "2 3",
    "SENTBEFORE 1-Feb-2024": "1",
    "SENTON 15-Feb-2024": "2",
    "SENTSINCE 10-Mar-2024": "3 4",
    'SUBJECT "lunch plans"': "1",
    "TEXT pizza": "1",
    "TEXT report": "3",
    "TO alice": "2 3 4",
    "UID 2": "2",
    "2:3": "2 3",
    "2,4": "2 4",
    "*": "4",
    "(SEEN ANSWERED)": "1",
    "OR (SEEN ANSWERED) (FLAGGED (DELETED))": "1 2",
    "NOT (OR SEEN FLAGGED)": "4",
    "1:3 UNSEEN": "2",
}


def test_search_keys_over_a_fixed_mailbox(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    for message, flags, when in MAILBOX:
        assert client.append("INBOX", flags, when, message)[0] == "OK"
    client.select("INBOX")
    got = {}
    for criteria, _ in CASES.items():
        typ, data = client.search(None, criteria)
        got[criteria] = data[0].decode() if typ == "OK" else f"{typ} {data}"
    client.logout()
    wrong = {key: (got[key], want) for key, want in CASES.items() if got[key] != want}
    assert wrong == {}


def test_search_charset_utf8_with_non_ascii_literal(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    for message, flags, when in MAILBOX:
        client.append("INBOX", flags, when, message)
    client.select("INBOX")
    found = {}
    for key in ("SUBJECT", "BODY", "TEXT"):
        client.literal = "grüße".encode()
        typ, data = client.search("UTF-8", key)
        found[key] = (typ, data[0])
    # I18NLEVEL=1 (RFC 5255): i;unicode-casemap, so a combining diaeresis and upper case match
    # the precomposed "ü" of the message, and fullwidth letters their ASCII forms.
    assert b"I18NLEVEL=1" in client.capability()[1][0].split()
    for needle in ("GRU\u0308SSE", "gru\u0308ße", "\uff27\uff32\uff35\u0308"):
        client.literal = needle.encode()
        found[needle] = client.search("UTF-8", "SUBJECT")[1][0]
    typ, data = client.uid("SEARCH", "CHARSET", "UTF-8", "SUBJECT", '"Lunch"')
    found["UID"] = (typ, data[0])
    typ, data = client.search("KOI8-R", "ALL")
    found["KOI8-R"] = (typ, b"BADCHARSET" in data[0])
    client.logout()
    assert found == {
        "SUBJECT": ("OK", b"2"),
        "BODY": ("OK", b"2"),
        "TEXT": ("OK", b"2"),
        "UID": ("OK", b"1"),
        "KOI8-R": ("NO", True),
        "GRU\u0308SSE": b"",  # ß is not SS under simple titlecase
        "gru\u0308ße": b"2",
        "\uff27\uff32\uff35\u0308": b"2",  # fullwidth G R U, a combining diaeresis
    }


def test_search_with_unknown_key_or_missing_argument_is_bad(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.select("INBOX")
    answers = []
    for criteria in ("FROBNICATE", "FROM", "BEFORE yesterday", "LARGER many"):
        tag = client._new_tag()
        client.send(tag + b" SEARCH " + criteria.encode() + b"\r\n")
        answers.append(client.readline().startswith(tag + b" BAD"))
    client.logout()
    assert answers == [True] * 4


@pytest.mark.parametrize(
    "text",
    [
        " Sender 3 <sender3@outside.test>",
        "  spaced   out  ",
        " tab\there",
        "Grüße aus Köln",
        '"quoted, name" <a@b.test> (comment)',
        "",
        " =?utf-8?q?caf=C3=A9?= au lait",
        "=?iso-8859-1?q?na=EFve?=",
        "broken =?utf-8?q?unterminated",
    ],
)
def test_header_decoding_fast_path_matches_decode_header(text):
    """Text without an encoded word skips email.header (issue 14: most of SEARCH FROM's
    time); the answer is what decode_header and make_header give."""
    import email.header

    from provider.protocols.imap.search import _decoded_header

    try:
        expected = str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        expected = text
    assert _decoded_header(text.encode()) == expected
