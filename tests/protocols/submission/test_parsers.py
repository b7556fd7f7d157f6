"""The submission listener's pure helpers, byte for byte, without a socket."""

from __future__ import annotations

import pytest

from provider.protocols.submission import (
    address_problem,
    has_header,
    header_addresses,
    header_block_end,
    is_xtext,
    parse_parameters,
    with_enhanced_code,
)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ("501 Syntax: EHLO hostname", "501 5.5.4 Syntax: EHLO hostname"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("250 2.1.0 Ok", "250 2.1.0 Ok"),  # has one already
        ("553 5.7.1 Sender address not allowed", "553 5.7.1 Sender address not allowed"),
        ("250 smtp.provider.test", "250 smtp.provider.test"),  # HELO's answer keeps its form
        ("221 Bye", "221 Bye"),  # RFC 2034 §3 leaves 221 alone
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("250-PIPELINING", "250-PIPELINING"),
    ],
)
def test_replies_get_an_enhanced_status_code(reply: str, expected: str):
    """RFC 2034 §3, codes from RFC 3463."""
    assert with_enhanced_code(reply) == expected


def test_parameters_keep_the_case_of_their_values():
    assert parse_parameters(["ret=hdrs", "ENVID=Ab+2Bc", "SMTPUTF8"]) == {
        "RET": "hdrs",
        "ENVID": "Ab+2Bc",
        "SMTPUTF8": None,
    }


@pytest.mark.parametrize(
    "words", [["SIZE="], ["SIZE=1", "size=2"], ["BAD KEY=1"], ["=1"], ["KÉY=1"], ["A_B=1"]]
)
def test_malformed_or_repeated_parameters_are_refused(words: list[str]):
    assert parse_parameters(words) is None


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abc", True),
        ("a+2Bb", True),
        ("a+2bb", False),
        ("a=b", False),
        ("a b", False),
        ("é", False),
        ("", True),
    ],
)
def test_xtext(value: str, valid: bool):
    """RFC 3461 §4: printable ASCII except "+" and "=", which only appear as +XX."""
    assert is_xtext(value) is valid


@pytest.mark.parametrize(
    ("address", "smtputf8", "problem"),
    [
        ("alice@example.test", False, None),
        ("jörg@example.test", True, None),
        ("jörg@example.test", False, "SMTPUTF8"),
        ("a\x00b@example.test", False, "control characters"),
        ("alice", False, "local part, @ and a domain"),
        ("@example.test", False, "local part, @ and a domain"),
        ("a" * 65 + "@example.test", False, "64 octets"),
        ("a@" + "b" * 250 + ".test", False, "254 octets"),
        ("a\udcff@example.test", True, "valid UTF-8"),
    ],
)
def test_address_problems(address: str, smtputf8: bool, problem: str | None):
    found = address_problem(address, smtputf8=smtputf8)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_header_helpers_stop_at_the_end_of_the_header_block():
    content = b"Subject: x\r\n continued date: no\r\nFrom: a@b.test\r\n\r\nDate: in the body\r\n"
    end = header_block_end(content)
    assert content[end:].startswith(b"\r\nDate: in the body")
    assert has_header(content, "from") and has_header(content, "Subject")
    assert not has_header(content, "Date")  # neither the folded line nor the body counts
    assert header_block_end(b"\r\nbody") == 0
    assert header_block_end(b"Subject: no body") == len(b"Subject: no body")


def test_header_addresses_reads_every_field_and_address():
    block = b"From: A <a@b.test>, c@d.test\r\nSender: s@b.test\r\nFrom: e@f.test\r\n"
    assert header_addresses(block, "From") == [["a@b.test", "c@d.test"], ["e@f.test"]]
    assert header_addresses(block, "Sender") == [["s@b.test"]]
    assert header_addresses(block, "Reply-To") == []
    assert header_addresses(b"From: a@b.test <c@d.test>\r\n", "From") is None
