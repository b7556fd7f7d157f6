"""Hostile nesting and odd atoms: bounded recursion (BAD, never a dropped session), `[` in names."""

from __future__ import annotations

import pytest

from provider.protocols.imap.parser import (
    MAX_NESTING,
    Atom,
    ProtocolError,
    parse_command,
)
from provider.protocols.imap.search import MAX_DEPTH, parse_search
from provider.services.storage import mail_store
from tests.conftest import make_mailbox
from tests.protocols.imap.test_commands import raw_login, raw_session
from tests.protocols.imap.test_session import MESSAGE

ODD_NAME = b"!#$&'+,-.0123456789:;<=>?@^_`|[}"
STORABLE_NAME = b"!#$&-'+,-0123456789:;<=>?@^_`|[}"


def until_tagged(reader, tag: bytes) -> list[bytes]:
    """Every line up to and including the one tagged `tag` (fails if the server hangs up)."""
    lines = []
    while True:
        line = reader.readline()
        assert line, f"connection closed before the {tag!r} reply; got {lines!r}"
        lines.append(line)
        if line.startswith(tag + b" "):
            return lines


def still_answers(sock, reader) -> None:
    sock.sendall(b"z NOOP\r\n")
    assert until_tagged(reader, b"z")[-1].startswith(b"z OK")


@pytest.fixture
def selected(session, imap):
    make_mailbox(session)
    mail_store().open("alice@example.test").folder("INBOX").deliver(MESSAGE)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    sock.sendall(b"s SELECT INBOX\r\n")
    assert until_tagged(reader, b"s")[-1].startswith(b"s OK")
    yield sock, reader
    reader.close()


# --- pure parser ---------------------------------------------------------------------------


def test_lists_nested_up_to_the_limit_parse_and_deeper_ones_are_refused():
    deepest = b"(" * MAX_NESTING + b"ALL" + b")" * MAX_NESTING
    value = parse_command(b"a SEARCH " + deepest + b"\r\n").args[0]
    for _ in range(MAX_NESTING - 1):
        assert isinstance(value, list)
        value = value[0]
    assert value == [Atom("ALL")]
    with pytest.raises(ProtocolError, match="nested"):
        parse_command(b"a SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000 + b"\r\n")


def test_search_nesting_is_bounded_for_not_or_and_lists():
    assert parse_search([Atom("NOT")] * (MAX_DEPTH - 1) + [Atom("ALL")])
    for args in (
        [Atom("NOT")] * 5000 + [Atom("ALL")],
        [Atom("OR")] * 5000 + [Atom("ALL")] * 5001,
    ):
        with pytest.raises(ProtocolError, match="nested"):
            parse_search(args)
    value: list = [Atom("ALL")]
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(ProtocolError, match="nested"):
        parse_search(value)
    with pytest.raises(ProtocolError, match="missing"):
        parse_search([Atom("NOT")])


def test_open_bracket_is_an_atom_char_outside_fetch_sections():
    command = parse_command(b"a SELECT " + ODD_NAME + b"\r\n")
    assert command.args == [Atom(ODD_NAME.decode())]
    assert parse_command(b"a SELECT x[y\r\n").args == [Atom("x[y")]
    # `]` is an ASTRING-CHAR (resp-specials): a mailbox name may hold it.
    assert parse_command(b"a SELECT x]y\r\n").args == [Atom("x]y")]
    fetch = parse_command(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (To Cc)]<0.10> body[1.MIME])\r\n")
    assert fetch.args[1] == [Atom("BODY.PEEK[HEADER.FIELDS (To Cc)]<0.10>"), Atom("body[1.MIME]")]


# --- on a real connection --------------------------------------------------------------------


def test_search_nested_400_deep_gets_bad_and_the_session_goes_on(selected):
    sock, reader = selected
    sock.sendall(b"a SEARCH " + b"(" * 400 + b"ALL" + b")" * 400 + b"\r\n")
    assert until_tagged(reader, b"a")[-1].startswith(b"a BAD ")
    still_answers(sock, reader)


def test_search_not_5000_times_gets_bad_and_the_session_goes_on(selected):
    sock, reader = selected
    sock.sendall(b"a SEARCH " + b"NOT " * 5000 + b"ALL\r\n")
    reply = until_tagged(reader, b"a")[-1]
    assert reply.startswith(b"a BAD ") and b"nested" in reply
    sock.sendall(b"b UID SEARCH " + b"OR " * 3000 + b"ALL " * 3000 + b"ALL\r\n")
    assert until_tagged(reader, b"b")[-1].startswith(b"b BAD ")
    # Programs within the limits still run.
    sock.sendall(b"c SEARCH " + b"NOT " * 11 + b"ALL\r\n")
    assert until_tagged(reader, b"c") == [b"* SEARCH\r\n", b"c OK SEARCH completed\r\n"]
    deep = b"(" * 60 + b"NOT " * 2 + b"UNSEEN" + b")" * 60
    sock.sendall(b"d SEARCH " + deep + b"\r\n")
    assert until_tagged(reader, b"d") == [b"* SEARCH 1\r\n", b"d OK SEARCH completed\r\n"]
    still_answers(sock, reader)


@pytest.mark.parametrize(
    "command",
    [
        b"a APPEND INBOX " + b"(" * 3000 + b"\\Seen" + b")" * 3000 + b" {1+}\r\nx\r\n",
        b"a FETCH 1 " + b"(" * 3000 + b"FLAGS" + b")" * 3000 + b"\r\n",
        b"a STORE 1 +FLAGS " + b"(" * 3000 + b"x" + b")" * 3000 + b"\r\n",
        b"a SEARCH NOT\r\n",
    ],
)
def test_deeply_nested_arguments_get_bad(selected, command):
    sock, reader = selected
    sock.sendall(command)
    assert until_tagged(reader, b"a")[-1].startswith(b"a BAD ")
    still_answers(sock, reader)


def test_the_atom_char_name_is_parsed_as_one_atom_and_answered(selected):
    # Every ATOM-CHAR: "[" no longer starts a section. As a mailbox name it is still refused,
    # for reasons of its own, with a clear tagged answer, as Dovecot's: "&'+,-" is not
    # modified UTF-7, so no folder has that name.
    sock, reader = selected
    sock.sendall(b"a SELECT " + ODD_NAME + b"\r\n")
    reply = until_tagged(reader, b"a")[-1]
    assert reply.startswith(b"a NO [NONEXISTENT] Mailbox name is not valid modified UTF-7"), reply
    still_answers(sock, reader)


def test_mailbox_name_with_open_bracket_can_be_created_and_selected(selected):
    # The same characters as a name the store can hold: "&" written "&-" (RFC 3501 §5.1.3),
    # and no "." (the Maildir++ level separator).
    name = STORABLE_NAME
    sock, reader = selected
    sock.sendall(b"a CREATE " + name + b"\r\n")
    assert until_tagged(reader, b"a")[-1].startswith(b"a OK")
    sock.sendall(b"b SELECT " + name + b"\r\n")
    assert until_tagged(reader, b"b")[-1].startswith(b"b OK [READ-WRITE]")
    sock.sendall(b'c LIST "" *\r\n')
    listed = until_tagged(reader, b"c")
    assert any(line.rstrip(b"\r\n").endswith(b" " + name) for line in listed), listed
    sock.sendall(b"d STATUS " + name + b" (MESSAGES)\r\n")
    assert until_tagged(reader, b"d")[-1].startswith(b"d OK")
    still_answers(sock, reader)


def _nested_multipart(depth: int) -> bytes:
    head = b"From: a@b.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    parts = []
    for level in range(depth):
        parts.append(
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level)
        )
    body = b"Content-Type: text/plain\r\n\r\ninner\r\n"
    tail = b"".join(b"\r\n--b%d--\r\n" % level for level in reversed(range(depth)))
    return head + b"".join(parts) + body + tail


def _nested_rfc822(depth: int) -> bytes:
    data = b"From: a@b.test\r\nSubject: inner\r\n\r\ninner\r\n"
    for _ in range(depth):
        data = b"From: a@b.test\r\nContent-Type: message/rfc822\r\n\r\n" + data
    return data


@pytest.mark.parametrize("message", [_nested_multipart(1000), _nested_rfc822(2000)])
def test_bodystructure_of_a_deeply_nested_message_is_answered(session, imap, message):
    make_mailbox(session)
    mail_store().open("alice@example.test").folder("INBOX").deliver(message)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    sock.sendall(b"s SELECT INBOX\r\n")
    until_tagged(reader, b"s")
    sock.sendall(b"a FETCH 1 (BODYSTRUCTURE BODY)\r\n")
    reply = until_tagged(reader, b"a")
    assert reply[-1].startswith(b"a OK"), reply[-1]
    assert reply[0].startswith(b"* 1 FETCH (BODYSTRUCTURE (")
    still_answers(sock, reader)
    reader.close()
