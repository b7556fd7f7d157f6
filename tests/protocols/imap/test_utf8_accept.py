"""UTF8=ACCEPT (RFC 6855) on real sockets: ENABLE, UTF-8 mailbox names, UTF8 APPEND."""

from __future__ import annotations

import imaplib

import pytest

from provider.protocols.imap.parser import Literal8, LiteralArg, ProtocolError, parse_command
from provider.services.storage import mail_store
from tests.conftest import make_mailbox
from tests.protocols.imap.exchange import exchange
from tests.protocols.imap.test_session import logged_in

NAME = "Größe/Ünïcode €"
MUTF7 = b"Gr&APYA3w-e/&ANw-n&AO8-code &IKw-"
UTF8_MESSAGE = (
    "From: Jürgen <jürgen@bücher.example>\r\nTo: alice@example.test\r\n"
    "Subject: Grüße aus Köln\r\n\r\nHallo.\r\n"
).encode()


def enabled(imap) -> imaplib.IMAP4:
    client = logged_in(imap)
    untagged, done = exchange(client, "ENABLE UTF8=ACCEPT")
    assert (untagged, done[:2]) == ([b"* ENABLED UTF8=ACCEPT"], b"OK")
    return client


def test_capability_and_enable_once(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    assert b"UTF8=ACCEPT" in client.capability()[1][0].split()
    assert exchange(client, "ENABLE UTF8=ACCEPT")[0] == [b"* ENABLED UTF8=ACCEPT"]
    assert exchange(client, "ENABLE UTF8=ACCEPT")[0] == [b"* ENABLED"]  # already on
    client.logout()


def test_utf8_names_in_and_out_and_mutf7_for_other_sessions(session, imap):
    make_mailbox(session)
    client = enabled(imap)
    quoted = f'"{NAME}"'.encode()
    assert exchange(client, b"CREATE " + quoted)[1].startswith(b"OK")
    untagged, _ = exchange(client, 'LIST "" "Grö*"'.encode())
    assert untagged == [
        b'* LIST (\\HasChildren) "/" "Gr\xc3\xb6\xc3\x9fe"',
        b'* LIST (\\HasNoChildren) "/" ' + quoted,
    ]
    untagged, _ = exchange(client, b"STATUS " + quoted + b" (MESSAGES)")
    assert untagged == [b"* STATUS " + quoted + b" (MESSAGES 0)"]
    untagged, _ = exchange(client, b'LIST "" "*" RETURN (STATUS (UIDNEXT))')
    assert b"* STATUS " + quoted + b" (UIDNEXT 1)" in untagged
    assert exchange(client, b"SELECT " + quoted)[1].startswith(b"OK [READ-WRITE]")
    assert exchange(client, b"GETQUOTAROOT " + quoted)[0][0] == b"* QUOTAROOT " + quoted + b' ""'
    client.logout()
    # A session that did not enable UTF-8 sees the same folder in modified UTF-7.
    legacy = logged_in(imap)
    untagged, _ = exchange(legacy, 'LIST "" "Gr*"')
    assert untagged[-1] == b'* LIST (\\HasNoChildren) "/" "' + MUTF7 + b'"'
    assert exchange(legacy, b'SELECT "' + MUTF7 + b'"')[1].startswith(b"OK")
    legacy.logout()
    names = [info.name for info in mail_store().open("alice@example.test").folders()]
    assert NAME in names


def test_utf8_name_spelled_in_mutf7_is_taken_literally_after_enable(session, imap):
    make_mailbox(session)
    client = enabled(imap)
    assert exchange(client, 'CREATE "Caf&AOk-"')[1].startswith(b"OK")
    untagged, _ = exchange(client, 'LIST "" "Caf*"')
    assert untagged == [b'* LIST (\\HasNoChildren) "/" Caf&AOk-']
    client.logout()
    legacy = logged_in(imap)
    untagged, _ = exchange(legacy, 'LIST "" "Caf*"')
    assert untagged == [b'* LIST (\\HasNoChildren) "/" Caf&-AOk-']
    legacy.logout()


def test_bad_utf8_and_control_characters_in_names(session, imap):
    make_mailbox(session)
    client = enabled(imap)
    answers = {}
    for name, command in [
        ("latin-1 create", b'CREATE "Gr\xf6\xdfe"'),
        ("latin-1 select", b'SELECT "Gr\xf6\xdfe"'),
        ("overlong", b'CREATE "\xc0\xaf"'),
        ("surrogate", b'CREATE "\xed\xa0\x80"'),
        ("truncated", b'STATUS "\xe2\x82" (MESSAGES)'),
        ("latin-1 list", b'LIST "" "\xf6*"'),
        ("C1 control", 'CREATE "bad\u0085name"'.encode()),
        ("line separator", 'CREATE "bad\u2028name"'.encode()),
        ("8-bit atom", b"CREATE Gr\xc3\xb6\xc3\x9fe"),
    ]:
        answers[name] = exchange(client, command)[1].split(b" ")[0]
    answers["C1 select"] = exchange(client, 'SELECT "bad\u0085name"'.encode())[1][:15]
    client.logout()
    assert answers == {
        "latin-1 create": b"BAD",
        "latin-1 select": b"BAD",
        "overlong": b"BAD",
        "surrogate": b"BAD",
        "truncated": b"BAD",
        "latin-1 list": b"BAD",
        "C1 control": b"BAD",
        "line separator": b"BAD",
        "8-bit atom": b"BAD",
        "C1 select": b"NO [NONEXISTENT",
    }


def test_search_takes_utf8_strings_and_refuses_charset_after_enable(session, imap):
    make_mailbox(session)
    client = enabled(imap)
    client.send(b"a APPEND INBOX UTF8 (~{%d+}\r\n" % len(UTF8_MESSAGE) + UTF8_MESSAGE + b")\r\n")
    line = client.readline()
    assert line.startswith(b"a OK [APPENDUID "), line
    client.select("INBOX")
    assert exchange(client, 'SEARCH SUBJECT "grüße"'.encode())[0] == [b"* SEARCH 1"]
    assert exchange(client, 'SEARCH FROM "jürgen"'.encode())[0] == [b"* SEARCH 1"]
    assert exchange(client, "SEARCH CHARSET UTF-8 ALL")[1].startswith(b"BAD")
    untagged, _ = exchange(client, "FETCH 1 BODY.PEEK[]")
    assert untagged[0].endswith(UTF8_MESSAGE + b")")
    client.logout()


def test_enable_while_selected_does_not_switch(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.create('"Caf&AOk-"')
    client.select("INBOX")
    assert exchange(client, "ENABLE UTF8=ACCEPT")[0] == [b"* ENABLED"]
    assert exchange(client, 'LIST "" "Caf*"')[0] == [b'* LIST (\\HasNoChildren) "/" Caf&AOk-']
    client.logout()


def test_utf8_append_forms(session, imap):
    make_mailbox(session)
    client = enabled(imap)
    message = b"Subject: x\r\n\r\nbody\r\n"
    bad = [
        b"APPEND INBOX UTF8 {%d+}\r\n" % len(message) + message,  # no parentheses
        b"APPEND INBOX UTF8 ({%d+}\r\n" % len(message) + message + b")",  # not literal8
        b'APPEND INBOX UTF8 ("quoted")',
        b"APPEND INBOX UTF8 (~{%d+}\r\n" % len(message) + message + b" ~{1+}\r\nx)",
        b"APPEND INBOX UTF8 ()",
        b"APPEND INBOX UTF8",
    ]
    answers = [exchange(client, command)[1].split(b" ")[0] for command in bad]
    flags_and_date = (
        b'APPEND INBOX (\\Seen) "01-Feb-2024 10:00:00 +0100" UTF8 (~{%d+}\r\n' % len(message)
        + message
        + b")"
    )
    done = exchange(client, flags_and_date)[1]
    client.select("INBOX")
    untagged, _ = exchange(client, "FETCH 1 (FLAGS INTERNALDATE)")
    client.logout()
    assert answers == [b"BAD"] * len(bad)
    assert done.startswith(b"OK [APPENDUID ")
    assert untagged == [b'* 1 FETCH (FLAGS (\\Seen) INTERNALDATE "01-Feb-2024 10:00:00 +0100")']


def test_thunderbird_like_sequence_with_imaplib_utf8_mode(session, imap):
    """Thunderbird: ID, ENABLE UTF8=ACCEPT, LIST with RETURN options, then works with a
    UTF-8 folder; imaplib switches itself to UTF-8 after ENABLE."""
    make_mailbox(session)
    client = logged_in(imap)
    assert exchange(client, 'ID ("name" "Thunderbird" "version" "128.0")')[1].startswith(b"OK")
    assert client.enable("UTF8=ACCEPT")[0] == "OK" and client.utf8_enabled
    assert client.create('"Entwürfe"')[0] == "OK"
    typ, listed = client.list('""', "*")
    assert typ == "OK" and b'(\\HasNoChildren) "/" "Entw\xc3\xbcrfe"' in listed
    assert client.append('"Entwürfe"', None, None, UTF8_MESSAGE)[0] == "OK"
    typ, data = client.select('"Entwürfe"')
    assert (typ, data) == ("OK", [b"1"])
    typ, data = client.search(None, 'SUBJECT "Köln"')
    assert (typ, data) == ("OK", [b"1"])
    client.logout()


def test_parser_tells_literals_literal8_and_quoted_strings_apart():
    command = parse_command(
        b'a APPEND INBOX "01-Jan-2024 00:00:00 +0000" {3}\r\nabc UTF8 (~{2}\r\n\x00\xff)'
    )
    date, message, utf8, inner = command.args[1:]
    assert type(date) is bytes and isinstance(message, LiteralArg)
    assert not isinstance(message, Literal8) and utf8 == "UTF8"
    assert isinstance(inner, list) and isinstance(inner[0], Literal8) and inner[0] == b"\x00\xff"
    for bad in (b"a X ~{3}\r\nab", b"a X ~{x}\r\nabc", b"a X ~{3", b"a X (~{1}\r\n"):
        with pytest.raises(ProtocolError):
            parse_command(bad)
    assert parse_command(b"a X ~").args == ["~"]  # a lone tilde is an atom
