"""CONTEXT=SEARCH (RFC 5267 §4) on real sockets: live searches told ADDTO and REMOVEFROM as
the folder changes (by this session and by another), CANCELUPDATE, NOUPDATE, PARTIAL. The
expected lines are what Dovecot 2.3 answers to the same exchanges."""

from __future__ import annotations

import imaplib

import pytest

from provider.protocols.imap.contexts import MAX_CONTEXTS
from tests.conftest import make_mailbox
from tests.protocols.imap.exchange import read_response_line
from tests.protocols.imap.test_session import logged_in


def message(number: int) -> bytes:
    return f"From: s{number}@example.test\r\nSubject: m{number}\r\n\r\nbody {number}\r\n".encode()


def run(client: imaplib.IMAP4, tag: str, command: str) -> tuple[list[bytes], bytes]:
    """Send `tag command`; the untagged lines and the tagged one's status text."""
    client.send(f"{tag} {command}\r\n".encode())
    untagged = []
    while True:
        line = read_response_line(client)
        if line.startswith(f"{tag} ".encode()):
            return untagged, line[len(tag) + 1 :]
        untagged.append(line)


def esearch_lines(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line.startswith((b"* ESEARCH", b"* NO [NOUPDATE"))]


@pytest.fixture
def pair(session, imap):
    """Two sessions on one INBOX of six messages, 2, 4 and 6 \\Seen (UIDs 1 to 6)."""
    make_mailbox(session)
    a = logged_in(imap)
    for number in range(1, 7):
        a.append("INBOX", "(\\Seen)" if number % 2 == 0 else None, None, message(number))
    b = logged_in(imap)
    a.select("INBOX")
    b.select("INBOX")
    yield a, b
    a.logout()
    b.logout()


def test_capability_names_context_search(pair):
    a, _ = pair
    assert b"CONTEXT=SEARCH" in a.capability()[1][0].split()


def test_a_live_search_is_told_what_joins_and_leaves_its_result(pair):
    a, b = pair
    untagged, done = run(a, "s1", "SEARCH RETURN (UPDATE) UNSEEN")
    assert done.startswith(b"OK") and untagged == [b'* ESEARCH (TAG "s1")']
    untagged, _ = run(a, "s2", "UID SEARCH RETURN (UPDATE COUNT) UNSEEN")
    assert untagged == [b'* ESEARCH (TAG "s2") UID COUNT 3']
    run(b, "b1", "STORE 1 +FLAGS (\\Seen)")
    run(b, "b2", "STORE 2 -FLAGS (\\Seen)")
    untagged, _ = run(a, "n1", "NOOP")
    assert esearch_lines(untagged) == [
        b'* ESEARCH (TAG "s1") REMOVEFROM (0 1) ADDTO (0 2)',
        b'* ESEARCH (TAG "s2") UID REMOVEFROM (0 1) ADDTO (0 2)',
    ]
    # This session's own STORE: told with the STORE's answer.
    untagged, _ = run(a, "a1", "STORE 2 +FLAGS (\\Seen)")
    assert esearch_lines(untagged) == [
        b'* ESEARCH (TAG "s1") REMOVEFROM (0 2)',
        b'* ESEARCH (TAG "s2") UID REMOVEFROM (0 2)',
    ]
    # A new message that matches.
    b.append("INBOX", None, None, message(7))
    untagged, _ = run(a, "n2", "NOOP")
    assert b"* 7 EXISTS" in untagged
    assert esearch_lines(untagged) == [
        b'* ESEARCH (TAG "s1") ADDTO (0 7)',
        b'* ESEARCH (TAG "s2") UID ADDTO (0 7)',
    ]


def test_an_expunged_match_leaves_numbered_as_it_stood_before_its_expunge(pair):
    a, b = pair
    run(b, "b1", "STORE 1 +FLAGS (\\Deleted)")
    run(b, "b2", "EXPUNGE")
    run(a, "n0", "NOOP")  # UID 1 gone: sequence number n is UID n + 1 now
    untagged, _ = run(a, "s1", "SEARCH RETURN (UPDATE ALL) UNSEEN")
    assert untagged == [b'* ESEARCH (TAG "s1") ALL 2,4']
    untagged, _ = run(a, "s2", "UID SEARCH RETURN (UPDATE ALL) UNSEEN")
    assert untagged == [b'* ESEARCH (TAG "s2") UID ALL 3,5']
    run(b, "b3", "STORE 2 +FLAGS (\\Deleted)")  # UID 3, sequence number 2
    run(b, "b4", "EXPUNGE")
    untagged, _ = run(a, "n1", "NOOP")
    assert untagged == [
        b'* ESEARCH (TAG "s1") REMOVEFROM (0 2)',
        b'* ESEARCH (TAG "s2") UID REMOVEFROM (0 3)',
        b"* 2 EXPUNGE",
    ]
    # Numbers as they stand after that expunge: UID 5 is sequence number 3.
    run(b, "b5", "UID STORE 6 -FLAGS (\\Seen)")
    untagged, _ = run(a, "n2", "NOOP")
    assert esearch_lines(untagged) == [
        b'* ESEARCH (TAG "s1") ADDTO (0 4)',
        b'* ESEARCH (TAG "s2") UID ADDTO (0 6)',
    ]
    # An expunge this session makes itself.
    run(a, "a1", "UID STORE 5 +FLAGS (\\Deleted)")
    untagged, _ = run(a, "a2", "EXPUNGE")
    assert untagged == [
        b'* ESEARCH (TAG "s1") REMOVEFROM (0 3)',
        b'* ESEARCH (TAG "s2") UID REMOVEFROM (0 5)',
        b"* 3 EXPUNGE",
    ]


def test_cancelupdate_stops_the_updates_and_names_an_unknown_tag(pair):
    a, b = pair
    run(a, "s1", "SEARCH RETURN (UPDATE) UNSEEN")
    run(a, "s2", "UID SEARCH RETURN (UPDATE) UNSEEN")
    untagged, done = run(a, "c1", 'CANCELUPDATE "s1"')
    assert done.startswith(b"OK") and untagged == []
    run(b, "b1", "STORE 2 -FLAGS (\\Seen)")
    untagged, _ = run(a, "n1", "NOOP")
    assert esearch_lines(untagged) == [b'* ESEARCH (TAG "s2") UID ADDTO (0 2)']
    _, done = run(a, "c2", 'CANCELUPDATE "s1" "s2"')
    assert done.startswith(b"NO")  # s1 was cancelled already; s2 is cancelled now
    run(b, "b2", "STORE 4 -FLAGS (\\Seen)")
    untagged, _ = run(a, "n2", "NOOP")
    assert esearch_lines(untagged) == []
    _, done = run(a, "c3", "CANCELUPDATE")
    assert done.startswith(b"BAD")


def test_a_new_mailbox_ends_the_live_searches(pair):
    a, b = pair
    run(a, "s1", "SEARCH RETURN (UPDATE) UNSEEN")
    run(a, "x1", "SELECT INBOX")
    run(b, "b1", "STORE 2 -FLAGS (\\Seen)")
    untagged, _ = run(a, "n1", "NOOP")
    assert esearch_lines(untagged) == []
    _, done = run(a, "c1", 'CANCELUPDATE "s1"')
    assert done.startswith(b"NO")


def test_past_the_limit_a_search_is_answered_but_not_kept(pair):
    a, b = pair
    for number in range(MAX_CONTEXTS):
        run(a, f"s{number}", "SEARCH RETURN (UPDATE) UNSEEN")
    untagged, done = run(a, "over", "SEARCH RETURN (UPDATE COUNT) UNSEEN")
    assert done.startswith(b"OK")
    assert untagged[0].startswith(b'* NO [NOUPDATE "over"]') or untagged[1].startswith(
        b'* NO [NOUPDATE "over"]'
    )
    assert b'* ESEARCH (TAG "over") COUNT 3' in untagged
    run(a, "s0", "SEARCH RETURN (UPDATE) SEEN")  # a tag in use is replaced, not refused
    run(b, "b1", "STORE 1 +FLAGS (\\Seen)")
    untagged, _ = run(a, "n1", "NOOP")
    told = esearch_lines(untagged)
    assert b'* ESEARCH (TAG "s0") ADDTO (0 1)' in told
    assert not any(b'"over"' in line for line in told)
    assert len(told) == MAX_CONTEXTS


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("SEARCH RETURN (PARTIAL 1:2) ALL", b'* ESEARCH (TAG "p") PARTIAL (1:2 1:2)'),
        ("SEARCH RETURN (PARTIAL 2:9) UNSEEN", b'* ESEARCH (TAG "p") PARTIAL (2:9 3,5)'),
        (
            "SEARCH RETURN (PARTIAL 3:2 COUNT) SEEN",
            b'* ESEARCH (TAG "p") PARTIAL (2:3 4,6) COUNT 3',
        ),
        ("SEARCH RETURN (PARTIAL 7:9) ALL", b'* ESEARCH (TAG "p") PARTIAL (7:9 NIL)'),
        ("UID SEARCH RETURN (PARTIAL 1:1) SEEN", b'* ESEARCH (TAG "p") UID PARTIAL (1:1 2)'),
        ("SEARCH RETURN (CONTEXT) UNSEEN", b'* ESEARCH (TAG "p") ALL 1,3,5'),
        (
            "SORT RETURN (PARTIAL 1:2) (REVERSE SUBJECT) UTF-8 ALL",
            b'* ESEARCH (TAG "p") PARTIAL (1:2 6,5)',
        ),
    ],
)
def test_partial_and_context(pair, command, answer):
    a, _ = pair
    untagged, done = run(a, "p", command)
    assert done.startswith(b"OK") and untagged == [answer]


@pytest.mark.parametrize(
    "command",
    [
        "SEARCH RETURN (PARTIAL) ALL",
        "SEARCH RETURN (PARTIAL 0:2) ALL",
        "SEARCH RETURN (PARTIAL -1:-2) ALL",
        "SEARCH RETURN (PARTIAL 1:99999999999) ALL",
        "SEARCH RETURN (PARTIAL 1:2 UPDATE) ALL",
        "SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL",
    ],
)
def test_bad_partial_ranges_and_live_sorts_are_bad(pair, command):
    a, _ = pair
    _, done = run(a, "p", command)
    assert done.startswith(b"BAD"), done


def test_an_idling_session_is_told_at_once(pair):
    a, b = pair
    run(a, "s1", "UID SEARCH RETURN (UPDATE) UNSEEN")
    a.send(b"i1 IDLE\r\n")
    assert read_response_line(a).startswith(b"+ ")
    run(b, "b1", "STORE 2 -FLAGS (\\Seen)")
    lines = []
    while not any(line.startswith(b"* ESEARCH") for line in lines):
        lines.append(read_response_line(a))  # the socket's timeout bounds the wait
    assert b'* ESEARCH (TAG "s1") UID ADDTO (0 2)' in lines
    a.send(b"DONE\r\n")
    while not read_response_line(a).startswith(b"i1 OK"):
        pass
