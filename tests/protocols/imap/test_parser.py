"""The IMAP command parser and encoders, byte for byte (RFC 3501 §9)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.protocols.imap.parser import (
    Atom,
    ProtocolError,
    encode_string,
    format_sequence_set,
    parse_command,
    parse_sequence_set,
    trailing_literal,
)


def test_parses_quoted_literal_list_and_section():
    command = parse_command(
        b'a1 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (To Cc)]<0.10>) "x\\"y" {3}\r\nabc\r\n'
    )
    assert command.tag == "a1" and command.name == "FETCH"
    assert command.args == [
        Atom("1:*"),
        [Atom("FLAGS"), Atom("BODY.PEEK[HEADER.FIELDS (To Cc)]<0.10>")],
        b'x"y',
        b"abc",
    ]


def test_flags_and_wildcards_are_atoms():
    command = parse_command(b"a STORE 1 +FLAGS (\\Seen $Junk)\r\n")
    assert command.args[2] == [Atom("\\Seen"), Atom("$Junk")]
    assert parse_command(b'b LIST "" Foo/%\r\n').args == [b"", Atom("Foo/%")]


@pytest.mark.parametrize(
    "line", [b"\r\n", b"a\r\n", b'a LOGIN "unterminated\r\n', b"a X (1 2\r\n", b"a X {5}\r\nab\r\n"]
)
def test_malformed_commands_raise_protocol_error_only(line):
    with pytest.raises(ProtocolError):
        parse_command(line)


def test_trailing_literal():
    assert trailing_literal(b"a LOGIN {5}\r\n") == (5, False)
    assert trailing_literal(b"a APPEND x {12+}\r\n") == (12, True)
    assert trailing_literal(b"a NOOP\r\n") is None


def test_sequence_sets():
    assert parse_sequence_set("1:3,5,7:*") == [(1, 3), (5, 5), (7, None)]
    assert format_sequence_set([5, 1, 2, 3, 9]) == "1:3,5,9"
    with pytest.raises(ProtocolError):
        parse_sequence_set("0:1")


def test_encode_string_quotes_or_uses_literal():
    assert encode_string('a"b') == b'"a\\"b"'
    assert encode_string("é") == b"{2}\r\n\xc3\xa9"


@given(st.binary(max_size=200))
def test_round_trip_any_string_argument(value):
    command = parse_command(b"t1 LOGIN " + encode_string(value) + b" x\r\n")
    assert command.args[0] == value


@given(st.binary(max_size=300))
def test_fuzz_only_protocol_error(data):
    with contextlib.suppress(ProtocolError):
        parse_command(data)
