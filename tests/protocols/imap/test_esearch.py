"""ESEARCH (RFC 4731) and SEARCHRES (RFC 5182, RFC 9051 §6.4.4.1) on real sockets."""

from __future__ import annotations

import imaplib

import pytest

from tests.conftest import make_mailbox
from tests.protocols.imap.exchange import exchange
from tests.protocols.imap.test_session import logged_in


def message(number: int, size: int = 0) -> bytes:
    return (
        f"From: sender{number}@example.test\r\nTo: alice@example.test\r\n"
        f"Subject: Message {number}\r\n\r\nBody {number}.\r\n".encode()
        + b"x" * size
    )


@pytest.fixture
def client(session, imap):
    """Eight messages: 2, 5, 6 and 7 flagged; 8 larger than 1000 octets; UIDs 1 to 8."""
    make_mailbox(session)
    client = logged_in(imap)
    for number in range(1, 9):
        flags = "(\\Flagged)" if number in (2, 5, 6, 7) else None
        client.append("INBOX", flags, None, message(number, 2000 if number == 8 else 0))
    client.select("INBOX")
    yield client
    client.logout()


def tag_of(line: bytes) -> str:
    return line.split(b'"')[1].decode()


def esearch(client: imaplib.IMAP4, command: str) -> tuple[str, bytes]:
    """The ESEARCH response after its (TAG "…") correlator, and the tagged result."""
    untagged, done = exchange(client, command)
    assert done.startswith(b"OK"), (command, done)
    assert len(untagged) == 1 and untagged[0].startswith(b"* ESEARCH (TAG "), untagged
    return untagged[0].split(b") ", 1)[1].decode() if b") " in untagged[0] else "", done


def test_capability_names_esearch_and_searchres(client):
    caps = client.capability()[1][0].split()
    assert b"ESEARCH" in caps and b"SEARCHRES" in caps


def test_return_options_as_rfc_4731_shows_them(client):
    client.store("3", "+FLAGS", "(\\Deleted)")
    got = {
        "SEARCH RETURN (MIN COUNT) FLAGGED": esearch(client, "SEARCH RETURN (MIN COUNT) FLAGGED")[
            0
        ],
        "SEARCH RETURN () FLAGGED": esearch(client, "SEARCH RETURN () FLAGGED")[0],
        "SEARCH RETURN (MIN) UNFLAGGED": esearch(client, "SEARCH RETURN (MIN) UNFLAGGED")[0],
        "SEARCH RETURN (COUNT) DELETED": esearch(client, "SEARCH RETURN (COUNT) DELETED")[0],
        "SEARCH RETURN (MAX ALL COUNT MIN) ALL": esearch(
            client, "SEARCH RETURN (MAX ALL COUNT MIN) ALL"
        )[0],
        "UID SEARCH RETURN (MIN MAX) 1:5000": esearch(client, "UID SEARCH RETURN (MIN MAX) 1:5000")[
            0
        ],
        "UID SEARCH RETURN (ALL) LARGER 1000": esearch(
            client, "UID SEARCH RETURN (ALL) LARGER 1000"
        )[0],
    }
    assert got == {
        "SEARCH RETURN (MIN COUNT) FLAGGED": "MIN 2 COUNT 4",
        "SEARCH RETURN () FLAGGED": "ALL 2,5:7",
        "SEARCH RETURN (MIN) UNFLAGGED": "MIN 1",
        "SEARCH RETURN (COUNT) DELETED": "COUNT 1",
        "SEARCH RETURN (MAX ALL COUNT MIN) ALL": "MIN 1 MAX 8 ALL 1:8 COUNT 8",
        "UID SEARCH RETURN (MIN MAX) 1:5000": "UID MIN 1 MAX 8",
        "UID SEARCH RETURN (ALL) LARGER 1000": "UID ALL 8",
    }


def test_no_match_still_sends_esearch_with_only_count(client):
    untagged, done = exchange(client, "SEARCH RETURN (MIN MAX ALL COUNT) SUBJECT nothing-like-it")
    assert done.startswith(b"OK")
    assert len(untagged) == 1 and untagged[0].endswith(b'") COUNT 0')
    untagged, _ = exchange(client, "UID SEARCH RETURN (MIN) SUBJECT nothing-like-it")
    assert untagged[0].endswith(b'") UID')


def test_esearch_tag_is_the_commands_tag(client):
    tag = client._new_tag().decode()
    client.send(f"{tag} SEARCH RETURN (COUNT) ALL\r\n".encode())
    assert client.readline() == f'* ESEARCH (TAG "{tag}") COUNT 8\r\n'.encode()
    assert client.readline().startswith(f"{tag} OK".encode())


def test_plain_search_is_unchanged(client):
    assert client.search(None, "FLAGGED") == ("OK", [b"2 5 6 7"])


def test_esearch_with_modseq_reports_the_returned_messages_modseq(client):
    untagged, _ = exchange(client, "FETCH 1:8 (MODSEQ)")
    fetched = [line for line in untagged if b" FETCH " in line]
    modseq = {int(line.split()[1]): int(line.rsplit(b"(", 1)[1].rstrip(b")")) for line in fetched}
    result, _ = esearch(client, "SEARCH RETURN (MIN) MODSEQ 1")
    assert result == f"MIN 1 MODSEQ {modseq[1]}"
    result, _ = esearch(client, "SEARCH RETURN (COUNT) MODSEQ 1")
    assert result == f"COUNT 8 MODSEQ {max(modseq.values())}"


def test_save_then_dollar_in_fetch_store_copy_and_search(client):
    _, done = exchange(client, "SEARCH RETURN (SAVE) FLAGGED")
    untagged, done = exchange(client, "SEARCH RETURN (SAVE) FLAGGED")
    assert untagged == [] and done.startswith(b"OK")  # SAVE alone: no ESEARCH
    untagged, done = exchange(client, "FETCH $ (UID)")
    assert [line.split()[1] for line in untagged] == [b"2", b"5", b"6", b"7"]
    untagged, done = exchange(client, "UID FETCH $ (FLAGS)")
    assert len(untagged) == 4 and done.startswith(b"OK")
    assert esearch(client, "UID SEARCH RETURN () UID $ SMALLER 4096")[0] == "UID ALL 2,5:7"
    assert esearch(client, "SEARCH RETURN () OR $ 1")[0] == "ALL 1:2,5:7"
    assert esearch(client, "SEARCH RETURN () NOT $")[0] == "ALL 1,3:4,8"
    untagged, done = exchange(client, "STORE $ +FLAGS.SILENT (\\Seen)")
    assert untagged == [] and done.startswith(b"OK")
    assert client.search(None, "SEEN") == ("OK", [b"2 5 6 7"])
    _, done = exchange(client, "COPY $ Archive")
    assert done.startswith(b"OK [COPYUID")
    assert client.status("Archive", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 4)")


def test_save_with_min_and_max_keeps_what_rfc_9051_table_4_says(client):
    cases = {
        "SAVE MIN": "2",
        "SAVE MAX": "7",
        "MAX SAVE MIN": "2,7",
        "MAX SAVE MIN COUNT": "2,5:7",
        "ALL SAVE MIN": "2,5:7",
    }
    got = {}
    for options in cases:
        exchange(client, f"SEARCH RETURN ({options}) FLAGGED")
        got[options] = esearch(client, "SEARCH RETURN (ALL) $")[0].removeprefix("ALL ")
    assert got == cases


def test_uid_search_save_used_by_sequence_number_commands(client):
    client.store("1", "+FLAGS", "(\\Deleted)")
    client.expunge()  # UIDs 2..8 are now sequence numbers 1..7
    exchange(client, "UID SEARCH RETURN (SAVE) UID 5:6")
    untagged, _ = exchange(client, "FETCH $ (UID)")
    assert untagged == [b"* 4 FETCH (UID 5)", b"* 5 FETCH (UID 6)"]


def test_expunged_messages_leave_the_saved_result(client):
    exchange(client, "SEARCH RETURN (SAVE) FLAGGED")
    client.store("5", "+FLAGS", "(\\Deleted)")
    client.expunge()
    assert esearch(client, "UID SEARCH RETURN (ALL) $")[0] == "UID ALL 2,6:7"


def test_failed_search_with_save_empties_the_result_and_bad_keeps_it(client):
    exchange(client, "SEARCH RETURN (SAVE) FLAGGED")
    _, done = exchange(client, "SEARCH RETURN (SAVE) FROBNICATE")
    assert done.startswith(b"BAD")
    assert esearch(client, "SEARCH RETURN (COUNT) $")[0] == "COUNT 4"  # BAD: unchanged
    _, done = exchange(client, "SEARCH RETURN (SAVE) CHARSET KOI8-R ALL")
    assert done.startswith(b"NO [BADCHARSET")
    assert esearch(client, "SEARCH RETURN (COUNT) $")[0] == "COUNT 0"  # NO: emptied
    exchange(client, "SEARCH RETURN (SAVE) FLAGGED")
    exchange(client, "SEARCH RETURN (COUNT) UNFLAGGED")  # no SAVE: unchanged
    assert esearch(client, "SEARCH RETURN (COUNT) $")[0] == "COUNT 4"


def test_empty_saved_result_is_valid_everywhere(client):
    for command in ("FETCH $ (FLAGS)", "UID FETCH $ FLAGS", "STORE $ +FLAGS (\\Seen)"):
        untagged, done = exchange(client, command)
        assert (untagged, done.split()[0]) == ([], b"OK"), command
    _, done = exchange(client, "COPY $ Archive")
    assert done.startswith(b"OK")
    _, done = exchange(client, "UID EXPUNGE $")
    assert done.startswith(b"OK")


def test_select_resets_the_saved_result(client):
    exchange(client, "SEARCH RETURN (SAVE) ALL")
    client.select("INBOX")
    assert esearch(client, "SEARCH RETURN (COUNT) $")[0] == "COUNT 0"


def test_bad_return_options_and_dollar_misuse_are_bad(client):
    commands = [
        "SEARCH RETURN ALL",
        "SEARCH RETURN",
        "SEARCH RETURN (BOGUS) ALL",
        "SEARCH RETURN (PARTIAL) ALL",
        "SEARCH RETURN ((MIN)) ALL",
        'SEARCH RETURN ("MIN") ALL',
        "SEARCH RETURN (MIN)",
        "SEARCH CHARSET UTF-8 RETURN (MIN) ALL",
        "FETCH 1,$ (UID)",
        "FETCH $:3 (UID)",
        "SEARCH 1,$",
        "SEARCH UID $,1",
        "SEARCH RETURN (MIN) " + "NOT " * 100 + "ALL",
        "SEARCH RETURN (MIN) " + "9" * 30,
        "SEARCH RETURN (\x01) ALL",
    ]
    answers = {}
    for command in commands:
        untagged, done = exchange(client, command)
        answers[command] = (done.split()[0], untagged)
    assert answers == {command: (b"BAD", []) for command in commands}


def test_ios_like_sequence(client):
    """iOS Mail: count, then page the newest UIDs with a saved result, fetch envelopes of `$`."""
    assert esearch(client, "UID SEARCH RETURN (COUNT) 1:* NOT DELETED")[0] == "UID COUNT 8"
    assert esearch(client, "UID SEARCH RETURN (ALL) UID 4:*")[0] == "UID ALL 4:8"
    untagged, done = exchange(client, "UID SEARCH RETURN (SAVE MAX) UNSEEN")
    assert untagged[0].endswith(b"UID MAX 8") and done.startswith(b"OK")
    untagged, _ = exchange(client, "UID FETCH $ (UID FLAGS ENVELOPE)")
    assert len(untagged) == 1 and b"UID 8" in untagged[0] and b'"Message 8"' in untagged[0]
