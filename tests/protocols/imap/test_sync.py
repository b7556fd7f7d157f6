"""Several sessions on one folder: merged flag changes, \\Recent given to exactly one session."""

from __future__ import annotations

import imaplib

import pytest

from provider.mailstore.maildir import forget_cached_state
from provider.services.storage import mail_store
from tests.conftest import make_mailbox
from tests.protocols.imap.test_session import MESSAGE, logged_in

ADDRESS = "alice@example.test"


def fetch_flags(client: imaplib.IMAP4, responses: list) -> dict[int, set[str]]:
    """Sequence number → flags, from untagged FETCH responses."""
    found = {}
    for item in responses:
        line = item if isinstance(item, bytes) else item[0]
        parsed = imaplib.ParseFlags(line)
        seq = int(line.split(b" ", 1)[0])
        found[seq] = {flag.decode() for flag in parsed}
    return found


def untagged(client: imaplib.IMAP4, name: str) -> list:
    return client.untagged_responses.pop(name, [])


def recent_count(client: imaplib.IMAP4) -> int:
    return int(untagged(client, "RECENT")[-1])


def selected_pair(imap) -> tuple[imaplib.IMAP4, imaplib.IMAP4]:
    first, second = logged_in(imap), logged_in(imap)
    first.select("INBOX")
    second.select("INBOX")
    return first, second


def test_store_keeps_a_flag_another_session_set_meanwhile(session, imap):
    """RFC 3501 §6.4.6: -FLAGS removes only what it names, even when this session has not yet
    been told of a change another session made."""
    make_mailbox(session)
    mail_store().open(ADDRESS).folder("INBOX").deliver(MESSAGE, flags=["\\Seen"])
    first, second = selected_pair(imap)
    first.store("1", "+FLAGS", "(\\Draft)")
    typ, data = second.store("1", "-FLAGS", "(\\Seen)")  # no NOOP in between
    assert typ == "OK"
    assert fetch_flags(second, data)[1] - {"\\Recent"} == {"\\Draft"}
    [info] = mail_store().open(ADDRESS).folder("INBOX").messages()
    assert info.flags == {"\\Draft"}
    second.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    typ, data = first.uid("STORE", "1", "-FLAGS", "(\\Draft)")
    assert fetch_flags(first, data[-1:])[1] - {"\\Recent"} == {"\\Flagged"}
    first.logout()
    second.logout()


def test_recent_goes_to_the_first_read_write_session_only(session, imap):
    make_mailbox(session)
    folder = mail_store().open(ADDRESS).folder("INBOX")
    folder.deliver(MESSAGE)
    folder.deliver(MESSAGE)
    looker = logged_in(imap)
    looker.select("INBOX", readonly=True)  # EXAMINE sees \Recent but does not take it
    assert recent_count(looker) == 2
    first = logged_in(imap)
    first.select("INBOX")
    assert recent_count(first) == 2
    _, data = first.fetch("1:2", "(FLAGS)")
    assert all("\\Recent" in flags for flags in fetch_flags(first, data).values())
    second = logged_in(imap)
    second.select("INBOX")
    assert recent_count(second) == 0
    _, data = second.fetch("1:2", "(FLAGS)")
    assert not any("\\Recent" in flags for flags in fetch_flags(second, data).values())
    _, data = second.status("INBOX", "(RECENT MESSAGES)")
    assert b"RECENT 0" in data[0] and b"MESSAGES 2" in data[0]
    # ... and a restarted server (no memory of it) agrees.
    forget_cached_state()
    third = logged_in(imap)
    third.select("INBOX")
    assert recent_count(third) == 0
    for client in (looker, first, second, third):
        client.logout()


def test_a_new_message_is_recent_in_exactly_one_of_two_sessions(session, imap):
    make_mailbox(session)
    first, second = selected_pair(imap)
    mail_store().open(ADDRESS).folder("INBOX").deliver(MESSAGE)
    first.noop()
    second.noop()
    counts = [recent_count(first), recent_count(second)]
    assert sorted(counts) == [0, 1]
    flags = [fetch_flags(c, c.fetch("1", "(FLAGS)")[1])[1] for c in (first, second)]
    assert sorted("\\Recent" in f for f in flags) == [False, True]
    first.logout()
    second.logout()


def test_copied_messages_are_recent_in_the_target_even_with_flags(session, imap):
    """RFC 3501 §6.4.7: the \\Recent flag SHOULD be set on the copies."""
    make_mailbox(session)
    folder = mail_store().open(ADDRESS).folder("INBOX")
    for _ in range(3):
        folder.deliver(MESSAGE)
    client = logged_in(imap)
    client.create("Target")
    watcher = logged_in(imap)
    watcher.select("Target")
    client.select("INBOX")
    client.store("1", "FLAGS", "(\\Seen)")
    client.store("2", "FLAGS", "(\\Draft \\Flagged)")
    assert client.copy("1:3", "Target")[0] == "OK"
    watcher.noop()
    assert untagged(watcher, "EXISTS")[-1] == b"3"
    assert recent_count(watcher) == 3
    flags = fetch_flags(watcher, watcher.fetch("1:3", "(FLAGS)")[1])
    assert flags == {
        1: {"\\Seen", "\\Recent"},
        2: {"\\Draft", "\\Flagged", "\\Recent"},
        3: {"\\Recent"},
    }
    client.logout()
    watcher.logout()


@pytest.mark.parametrize(
    "command", ["FETCH 1 (FLAGS)", "STORE 1 +FLAGS (\\Draft)", "FETCH 2:3 UID"]
)
def test_a_sequence_number_past_the_last_message_is_bad(session, imap, command):
    make_mailbox(session)
    mail_store().open(ADDRESS).folder("INBOX").deliver(MESSAGE)
    client = logged_in(imap)
    client.create("Empty")
    client.select("Empty" if command.startswith(("FETCH 1", "STORE")) else "INBOX")
    tag = client._new_tag()
    client.send(tag + b" " + command.encode() + b"\r\n")
    line = client.readline()
    assert line.startswith(tag + b" BAD"), line
    # `*` is never out of range: on an empty mailbox 1:* is simply nothing.
    client.select("Empty")
    assert client.fetch("1:*", "(FLAGS)") == ("OK", [None])
    client.logout()


def test_fetching_a_message_another_session_expunged_says_expungeissued(session, imap):
    make_mailbox(session)
    folder = mail_store().open(ADDRESS).folder("INBOX")
    for _ in range(3):
        folder.deliver(MESSAGE)
    first, second = selected_pair(imap)
    second.store("2", "+FLAGS", "(\\Deleted)")
    assert second.expunge()[0] == "OK"
    # The first session still numbers the messages 1..3; the body of 2 is gone.
    tag = first._new_tag()
    first.send(tag + b" FETCH 1:3 (BODY.PEEK[])\r\n")
    lines = []
    while not (line := first.readline()).startswith(tag):
        lines.append(line)
    assert line.startswith(tag + b" NO [EXPUNGEISSUED]")
    assert any(raw.startswith(b"* 1 FETCH") for raw in lines)
    assert any(raw.startswith(b"* 3 FETCH") for raw in lines)
    assert not any(raw.startswith((b"* 2 FETCH", b"* 2 EXPUNGE")) for raw in lines)
    first.noop()
    assert untagged(first, "EXPUNGE") == [b"2"]
    assert first.fetch("2", "(UID)")[1] == [b"2 (UID 3)"]
    first.logout()
    second.logout()


@pytest.mark.parametrize(
    "command",
    [
        ("uid", "SEARCH", "ALL"),
        ("uid", "FETCH", "1", "(FLAGS)"),
        ("uid", "STORE", "1", "+FLAGS", "(\\Answered)"),
        ("noop",),
    ],
)
def test_changes_made_before_a_command_come_with_its_answer(session, imap, command):
    """The look at the folder after a command rides the command's own worker-thread trip
    (issue 14): what another session changed before the command is reported in its answer,
    with or without blocking work of its own."""
    make_mailbox(session)
    folder = mail_store().open(ADDRESS).folder("INBOX")
    folder.deliver(MESSAGE)
    first, second = selected_pair(imap)
    untagged(first, "EXISTS")
    folder.deliver(MESSAGE)
    second.store("1", "+FLAGS", "(\\Flagged)")
    typ, data = getattr(first, command[0])(*command[1:])
    assert typ == "OK"
    assert untagged(first, "EXISTS") == [b"2"]
    # imaplib hands FETCH responses to UID FETCH and UID STORE as their data.
    fetched = data if command[1:2] in (("FETCH",), ("STORE",)) else untagged(first, "FETCH")
    assert "\\Flagged" in fetch_flags(first, [d for d in fetched if d])[1]
    first.logout()
    second.logout()
