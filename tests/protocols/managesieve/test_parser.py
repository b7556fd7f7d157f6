"""RFC 5804 §4 command parsing and response strings, byte for byte with no socket."""

from __future__ import annotations

import pytest

from provider.protocols.managesieve import (
    SyntaxProblem,
    literal_announced,
    parse_command,
    response,
    string_form,
)


def test_quoted_literals_and_numbers():
    assert parse_command(b'putscript "a b" {3+}\r\nx\ny') == ("PUTSCRIPT", [b"a b", b"x\ny"])
    assert parse_command(b'HAVESPACE "s" 4294967295') == ("HAVESPACE", [b"s", 4294967295])
    assert parse_command(b'NOOP "say \\"hi\\" \\\\ there"') == ("NOOP", [b'say "hi" \\ there'])
    assert parse_command(b"GETSCRIPT {0}\r\n") == ("GETSCRIPT", [b""])
    assert parse_command(b"LOGOUT") == ("LOGOUT", [])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"123",
        b'NOOP "open',
        b'NOOP "bad \\n escape"',
        b'NOOP "nul\x00"',
        b"NOOP atom",
        b'NOOP"x"',
        b'HAVESPACE "s" 4294967296',
        b'HAVESPACE "s" 00000000000000000001',
        b'PUTSCRIPT "a" {5+}\r\nabc',
        b'PUTSCRIPT "a" {99999999999+}\r\nabc',
        b'PUTSCRIPT "a" {3+}x',
    ],
)
def test_malformed_commands_are_refused(data):
    with pytest.raises(SyntaxProblem):
        parse_command(data)


def test_literal_announced_at_the_end_of_a_line():
    assert literal_announced(b'PUTSCRIPT "a" {12+}') == (12, True)
    assert literal_announced(b'PUTSCRIPT "a" {12}') == (12, False)
    assert literal_announced(b'NOOP "{12}"') is None
    assert literal_announced(b"X {" + b"9" * 5000 + b"+}") == (2**64, True)


def test_response_strings_quote_or_fall_back_to_a_literal():
    assert string_form('a "b" \\') == b'"a \\"b\\" \\\\"'
    assert string_form("two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert string_form("x" * 1025).startswith(b"{1025}\r\n")
    assert response("NO", "gone", "NONEXISTENT") == b'NO (NONEXISTENT) "gone"\r\n'
    assert response("OK") == b"OK\r\n"
