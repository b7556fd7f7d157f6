"""Parsed-message cache: ENVELOPE, BODYSTRUCTURE, BODY[section] and the per-folder cache file."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from provider.mailstore import message
from provider.mailstore.message import (
    CACHE_FILE_NAME,
    FORMAT_VERSION,
    MAX_ADDRESSES,
    MAX_NESTING,
    MAX_PARTS,
    MISSING_DOMAIN,
    MISSING_MAILBOX,
    Address,
    BodyPart,
    Envelope,
    MessageCache,
    ParsedMessage,
    Section,
    from_json,
    parse_addresses,
    parse_message,
    parse_section,
    section_bytes,
    to_json,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the property tests below then skip
    given = None


def crlf(text: str) -> bytes:
    """A message written with \\n in the test, stored with CRLF as the mail store keeps it."""
    return text.replace("\n", "\r\n").encode()


ALICE = Address("Alice Example", None, "alice", "example.org")
BOB = Address(None, None, "bob", "example.com")

PLAIN_HEADER = crlf(
    """\
Return-Path: <alice@example.org>
Received: from mx.example.org by mail.example.com;
\tMon, 1 Jan 2024 09:00:00 +0000
From: Alice Example <alice@example.org>
To: bob@example.com
Subject: Lunch
Date: Mon, 1 Jan 2024 10:00:00 +0100
Message-ID: <lunch@example.org>

"""
)
PLAIN_BODY = crlf(
    """\
Shall we meet at noon?
Alice
"""
)
PLAIN = PLAIN_HEADER + PLAIN_BODY

ALTERNATIVE = crlf(
    """\
From: alice@example.org
To: bob@example.com
Subject: Alternatives
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="alt"

This is a multi-part message in MIME format.
--alt
Content-Type: text/plain; charset=utf-8

Hello, Bob.
--alt
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<p>Hello, Bob.</p>
--alt--
"""
)

MIXED = crlf(
    """\
From: alice@example.org
To: bob@example.com
Subject: The report
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="==mixed=="

--==mixed==
Content-Type: text/plain; charset=us-ascii

See the attached report.

--==mixed==
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"; size=12
Content-Transfer-Encoding: base64
Content-ID: <report@example.org>
Content-Description: Quarterly report

JVBERi0xLjQKJcfs
j6IKMSAwIG9iago=
--==mixed==--
"""
)

NESTED = crlf(
    """\
From: alice@example.org
Subject: Nested
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain

Plain
--inner
Content-Type: text/html

<b>HTML</b>
--inner--

--outer
Content-Type: image/png
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--outer--
"""
)

INNER_HEADER = crlf(
    """\
From: Alice Example <alice@example.org>
To: bob@example.com
Cc: dave@example.org
Subject: Lunch
Date: Mon, 1 Jan 2024 10:00:00 +0100
Message-ID: <lunch@example.org>
In-Reply-To: <plans@example.com>

"""
)
FORWARD = (
    crlf(
        """\
From: bob@example.com
To: carol@example.net
Subject: Fwd: Lunch
Content-Type: multipart/mixed; boundary=fwd

--fwd
Content-Type: text/plain

See below.
--fwd
Content-Type: message/rfc822
Content-Disposition: inline

"""
    )
    + INNER_HEADER
    + crlf("Shall we meet at noon?\n--fwd--\n")
)

# Dovecot's own BODYSTRUCTURE test vector (src/lib-imap/test-imap-bodystructure.c), in CRLF.
DOVECOT_VECTOR = crlf(
    """\
From: user@domain.org
Date: Sat, 24 Mar 2007 23:00:00 +0200
Mime-Version: 1.0
Content-Type: multipart/mixed; boundary="foo
 bar"

Root MIME prologue

--foo bar
Content-Type: text/x-myown; charset=us-ascii; foo="quoted\\"string"
Content-ID: <foo@example.com>
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==
Content-Disposition: inline; foo=bar
Content-Description: hellodescription
Content-Language: en, fi, se
Content-Location: http://example.com/test.txt

hello

--foo bar
Content-Type: message/rfc822

From: sub@domain.org
To: sub-to1@domain.org, sub-to2@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg
Content-Type: multipart/alternative; boundary="sub1"

Sub MIME prologue
--sub1
Content-Type: text/html
Content-Transfer-Encoding: 8bit

<p>Hello world</p>

--sub1
Content-Type: text/plain
Content-Transfer-Encoding: ?invalid

Hello another world

--sub1--
Sub MIME epilogue

--foo bar--
Root MIME epilogue
"""
)

SAMPLES = {
    "plain": PLAIN,
    "alternative": ALTERNATIVE,
    "mixed": MIXED,
    "nested": NESTED,
    "forward": FORWARD,
    "dovecot": DOVECOT_VECTOR,
}


# --- structure and envelope -----------------------------------------------------------------


def test_plain_text_message_has_its_size_lines_envelope_and_header_offsets() -> None:
    parsed = parse_message(PLAIN)

    header_size = len(PLAIN_HEADER)
    assert parsed.size == len(PLAIN) == header_size + 31
    assert parsed.header_size == header_size
    assert parsed.body == BodyPart(
        type="text",
        subtype="plain",
        params=[("charset", "us-ascii")],
        size=31,
        lines=2,
        header_start=0,
        header_end=header_size,
        body_start=header_size,
        body_end=len(PLAIN),
    )
    assert parsed.envelope == Envelope(
        date="Mon, 1 Jan 2024 10:00:00 +0100",
        subject="Lunch",
        from_=[ALICE],
        sender=[ALICE],
        reply_to=[ALICE],
        to=[BOB],
        cc=[],
        bcc=[],
        in_reply_to=None,
        message_id="<lunch@example.org>",
    )
    assert parsed.date_header == datetime(2024, 1, 1, 9, 0, tzinfo=UTC).timestamp()
    assert parsed.sent_day() == date(2024, 1, 1)
    assert [name for name, _, _ in parsed.headers] == [
        "return-path",
        "received",
        "from",
        "to",
        "subject",
        "date",
        "message-id",
    ]
    _, start, end = parsed.headers[1]
    assert PLAIN[start:end] == (
        b"Received: from mx.example.org by mail.example.com;\r\n"
        b"\tMon, 1 Jan 2024 09:00:00 +0000\r\n"
    )
    assert b"".join(PLAIN[s:e] for _, s, e in parsed.headers) + b"\r\n" == PLAIN_HEADER


def test_sent_day_is_the_day_written_in_the_date_field_whatever_the_zone() -> None:
    parsed = parse_message(crlf("Date: Tue, 2 Jan 2024 00:30:00 +0200\n\nx"))

    assert parsed.sent_day() == date(2024, 1, 2)
    assert parsed.date_header == datetime(2024, 1, 1, 22, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "value", ["", "yesterday", "Mon, 32 Jan 2024 10:00:00 +0000", "1 Jan 99999 10:00 +0000"]
)
def test_unparseable_date_gives_none_but_keeps_the_raw_envelope_date(value: str) -> None:
    parsed = parse_message(crlf(f"Date: {value}\n\nx"))

    assert parsed.envelope.date == value
    assert parsed.date_header is None
    assert parsed.sent_day() is None


def test_multipart_alternative_parts_and_their_byte_ranges() -> None:
    parsed = parse_message(ALTERNATIVE)
    body = parsed.body

    assert (body.type, body.subtype, body.params, body.lines) == (
        "multipart",
        "alternative",
        [("boundary", "alt")],
        None,
    )
    assert body.size == len(ALTERNATIVE) - parsed.header_size
    plain, html = body.parts
    # Like Dovecot, lines counts LF octets: the line break before a boundary is the boundary's.
    assert (plain.type, plain.subtype, plain.params, plain.size, plain.lines) == (
        "text",
        "plain",
        [("charset", "utf-8")],
        11,
        0,
    )
    assert (html.subtype, html.encoding, html.size) == ("html", "quoted-printable", 18)
    assert section_bytes(ALTERNATIVE, parsed, "1") == b"Hello, Bob."
    assert section_bytes(ALTERNATIVE, parsed, "2") == b"<p>Hello, Bob.</p>"
    assert section_bytes(ALTERNATIVE, parsed, "1.MIME") == (
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    assert section_bytes(ALTERNATIVE, parsed, "2.MIME") == (
        b"Content-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    assert section_bytes(ALTERNATIVE, parsed, "TEXT") == ALTERNATIVE[parsed.header_size :]
    assert section_bytes(ALTERNATIVE, parsed, "TEXT").startswith(b"This is a multi-part")


def test_multipart_mixed_attachment_has_disposition_name_and_base64() -> None:
    parsed = parse_message(MIXED)
    text, attachment = parsed.body.parts

    assert (text.size, text.lines) == (26, 1)
    assert section_bytes(MIXED, parsed, "1") == b"See the attached report.\r\n"
    assert attachment == BodyPart(
        type="application",
        subtype="pdf",
        params=[("name", "report.pdf")],
        id="<report@example.org>",
        description="Quarterly report",
        encoding="base64",
        size=34,
        lines=None,
        disposition=("attachment", [("filename", "report.pdf"), ("size", "12")]),
        header_start=attachment.header_start,
        header_end=attachment.header_end,
        body_start=attachment.body_start,
        body_end=attachment.body_end,
    )
    assert section_bytes(MIXED, parsed, "2") == b"JVBERi0xLjQKJcfs\r\nj6IKMSAwIG9iago="
    assert section_bytes(MIXED, parsed, "2.MIME").startswith(b"Content-Type: application/pdf;")
    assert section_bytes(MIXED, parsed, "2.MIME").endswith(b"Quarterly report\r\n\r\n")


def test_nested_multipart_is_numbered_as_rfc3501_shows() -> None:
    parsed = parse_message(NESTED)
    alternative, image = parsed.body.parts

    assert (alternative.type, alternative.subtype) == ("multipart", "alternative")
    assert [(p.subtype, p.params) for p in alternative.parts] == [
        ("plain", [("charset", "us-ascii")]),
        ("html", [("charset", "us-ascii")]),
    ]
    assert (image.type, image.subtype, image.params, image.lines) == ("image", "png", [], None)
    assert section_bytes(NESTED, parsed, "1") == crlf(
        """\
--inner
Content-Type: text/plain

Plain
--inner
Content-Type: text/html

<b>HTML</b>
--inner--
"""
    )
    assert section_bytes(NESTED, parsed, "1.1") == b"Plain"
    assert section_bytes(NESTED, parsed, "1.2") == b"<b>HTML</b>"
    assert section_bytes(NESTED, parsed, "1.2.MIME") == b"Content-Type: text/html\r\n\r\n"
    assert section_bytes(NESTED, parsed, "2") == b"iVBORw0KGgo="
    assert section_bytes(NESTED, parsed, "1.3") == b""


def test_message_rfc822_part_has_the_inner_envelope_and_body() -> None:
    parsed = parse_message(FORWARD)
    note, forwarded = parsed.body.parts
    inner_message = INNER_HEADER + b"Shall we meet at noon?"

    assert (note.type, note.subtype) == ("text", "plain")
    assert (forwarded.type, forwarded.subtype, forwarded.disposition) == (
        "message",
        "rfc822",
        ("inline", []),
    )
    assert forwarded.size == len(inner_message)
    assert forwarded.lines == inner_message.count(b"\n") == 8
    assert forwarded.message_envelope == Envelope(
        date="Mon, 1 Jan 2024 10:00:00 +0100",
        subject="Lunch",
        from_=[ALICE],
        sender=[ALICE],
        reply_to=[ALICE],
        to=[BOB],
        cc=[Address(None, None, "dave", "example.org")],
        bcc=[],
        in_reply_to="<plans@example.com>",
        message_id="<lunch@example.org>",
    )
    inner = forwarded.message_body
    assert inner is not None
    assert (inner.type, inner.subtype, inner.size, inner.lines) == ("text", "plain", 22, 0)
    assert FORWARD[inner.header_start : inner.header_end] == INNER_HEADER
    assert section_bytes(FORWARD, parsed, "2") == inner_message
    assert section_bytes(FORWARD, parsed, "2.HEADER") == INNER_HEADER
    assert section_bytes(FORWARD, parsed, "2.TEXT") == b"Shall we meet at noon?"
    assert section_bytes(FORWARD, parsed, "2.MIME") == (
        b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
    )
    # The encapsulated single-part message is its own part 1 (RFC 3501 §6.4.5 example "3.1").
    assert section_bytes(FORWARD, parsed, "2.1") == b"Shall we meet at noon?"
    assert section_bytes(FORWARD, parsed, "2.1.MIME") == INNER_HEADER
    assert section_bytes(FORWARD, parsed, "2.HEADER.FIELDS (subject)") == (
        b"Subject: Lunch\r\n\r\n"
    )
    assert section_bytes(
        FORWARD, parsed, "2.HEADER.FIELDS.NOT (From To Cc Date Message-ID In-Reply-To)"
    ) == (b"Subject: Lunch\r\n\r\n")
    assert section_bytes(FORWARD, parsed, "2.2") == b""
    assert section_bytes(FORWARD, parsed, "1.HEADER") == b""
    assert section_bytes(FORWARD, parsed, "1.TEXT") == b""


def test_dovecot_bodystructure_test_vector_gives_the_same_sizes_lines_and_fields() -> None:
    # The expected values are those of Dovecot's testmsg_bodystructure for the same message.
    parsed = parse_message(DOVECOT_VECTOR)
    body = parsed.body
    own, forwarded = body.parts

    assert (body.subtype, body.params) == ("mixed", [("boundary", "foo bar")])
    assert own == BodyPart(
        type="text",
        subtype="x-myown",
        params=[("charset", "us-ascii"), ("foo", 'quoted"string')],
        id="<foo@example.com>",
        description="hellodescription",
        encoding="7bit",
        size=7,
        lines=1,
        md5="Q2hlY2sgSW50ZWdyaXR5IQ==",
        disposition=("inline", [("foo", "bar")]),
        language=["en", "fi", "se"],
        location="http://example.com/test.txt",
        header_start=own.header_start,
        header_end=own.header_end,
        body_start=own.body_start,
        body_end=own.body_end,
    )
    assert (forwarded.size, forwarded.lines) == (412, 21)
    sub = Address(None, None, "sub", "domain.org")
    assert forwarded.message_envelope == Envelope(
        date="Sun, 12 Aug 2012 12:34:56 +0300",
        subject="submsg",
        from_=[sub],
        sender=[sub],
        reply_to=[sub],
        to=[
            Address(None, None, "sub-to1", "domain.org"),
            Address(None, None, "sub-to2", "domain.org"),
        ],
        cc=[],
        bcc=[],
        in_reply_to=None,
        message_id=None,
    )
    inner = forwarded.message_body
    assert inner is not None
    assert (inner.subtype, inner.params) == ("alternative", [("boundary", "sub1")])
    assert [(p.subtype, p.params, p.encoding, p.size, p.lines) for p in inner.parts] == [
        ("html", [("charset", "us-ascii")], "8bit", 20, 1),
        ("plain", [("charset", "us-ascii")], "7bit", 21, 1),
    ]


def test_multipart_digest_parts_default_to_message_rfc822() -> None:
    data = crlf(
        """\
Content-Type: multipart/digest; boundary=d

--d

Subject: first

one
--d
Content-Type: text/plain

not a message
--d--
"""
    )
    parsed = parse_message(data)
    first, second = parsed.body.parts

    assert (first.type, first.subtype) == ("message", "rfc822")
    assert first.message_envelope is not None
    assert first.message_envelope.subject == "first"
    assert section_bytes(data, parsed, "1.TEXT") == b"one"
    assert (second.type, second.subtype, second.message_body) == ("text", "plain", None)


def test_rfc2047_encoded_words_are_left_encoded() -> None:
    data = crlf(
        """\
From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>
To: "=?iso-8859-1?q?Fran=E7ois?=" <francois@example.org>
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus =?ISO-8859-1?Q?K=F6ln?=

x"""
    )
    envelope = parse_message(data).envelope

    assert envelope.subject == "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus =?ISO-8859-1?Q?K=F6ln?="
    assert envelope.from_ == [Address("=?utf-8?q?J=C3=B6rg?=", None, "jorg", "example.org")]
    assert envelope.to == [Address("=?iso-8859-1?q?Fran=E7ois?=", None, "francois", "example.org")]


def test_group_addresses_become_start_members_and_end_markers() -> None:
    data = crlf(
        """\
From: alice@example.org
To: undisclosed-recipients:;
Cc: Team: alice@example.org, "Bob B." <bob@example.com>;, carol@example.net

x"""
    )
    envelope = parse_message(data).envelope

    assert envelope.to == [
        Address(None, None, "undisclosed-recipients", None),
        Address(None, None, None, None),
    ]
    assert envelope.cc == [
        Address(None, None, "Team", None),
        Address(None, None, "alice", "example.org"),
        Address("Bob B.", None, "bob", "example.com"),
        Address(None, None, None, None),
        Address(None, None, "carol", "example.net"),
    ]


C_AT_D = Address(None, None, "c", "d.test")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice@example.org (Alice L.)", [Address("Alice L.", None, "alice", "example.org")]),
        ('"Liddell, Alice" <a@example.org>', [Address("Liddell, Alice", None, "a", "example.org")]),
        ("John Q. Public <jqp@ex.com>", [Address("John Q. Public", None, "jqp", "ex.com")]),
        (
            "<@relay1.example,@relay2.example:alice@example.org>",
            [Address(None, "@relay1.example,@relay2.example", "alice", "example.org")],
        ),
        ('"john doe"@example.com', [Address(None, None, "john doe", "example.com")]),
        ("alice@[192.0.2.1]", [Address(None, None, "alice", "[192.0.2.1]")]),
        # RFC 5322 Appendix A.5: comments everywhere.
        (
            "Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
            [Address("Pete", None, "pete", "silly.test")],
        ),
        # RFC 5322 Appendix A.1.3: a group in the middle of a list.
        (
            "A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;, x@y.test",
            [
                Address(None, None, "A Group", None),
                Address("Ed Jones", None, "c", "a.test"),
                Address(None, None, "joe", "where.test"),
                Address("John", None, "jdoe", "one.test"),
                Address(None, None, None, None),
                Address(None, None, "x", "y.test"),
            ],
        ),
        ("b@ex.com (Bob (the builder))", [Address("Bob (the builder)", None, "b", "ex.com")]),
        ("bob@example.com (first) (last)", [Address("last", None, "bob", "example.com")]),
        ('"Bob \\"B\\" Smith" <b@ex.com>', [Address('Bob "B" Smith', None, "b", "ex.com")]),
        ("alice", [Address(None, None, "alice", MISSING_DOMAIN)]),
        ("<>", [Address(None, None, MISSING_MAILBOX, MISSING_DOMAIN)]),
        ("a@b.test, , c@d.test", [Address(None, None, "a", "b.test"), C_AT_D]),
        ("", []),
        ("Broken <a@b.test, c@d.test", [Address("Broken", None, "a", "b.test"), C_AT_D]),
    ],
)  # fmt: skip
def test_address_forms(value: str, expected: list[Address]) -> None:
    assert parse_addresses(value) == expected


def test_address_lists_stop_at_the_limit_with_groups_still_closed() -> None:
    many = ", ".join(f"u{n}@example.org" for n in range(MAX_ADDRESSES + 10))

    assert len(parse_addresses(many)) == MAX_ADDRESSES
    grouped = parse_addresses(f"Crowd: {many};")
    assert grouped[0] == Address(None, None, "Crowd", None)
    assert grouped[-1] == Address(None, None, None, None)
    assert len(grouped) == MAX_ADDRESSES + 1


def test_missing_headers_are_nil_and_empty_ones_are_empty_strings() -> None:
    missing = parse_message(crlf("X-Only: 1\n\nbody")).envelope
    empty = parse_message(crlf("Subject:\nMessage-ID: \nTo:\nFrom:\n\nbody")).envelope

    assert missing == Envelope(None, None, [], [], [], [], [], [], None, None)
    assert (empty.subject, empty.message_id, empty.date) == ("", "", None)
    assert (empty.from_, empty.sender, empty.reply_to, empty.to) == ([], [], [], [])


def test_sender_and_reply_to_default_to_from_only_when_absent_or_empty() -> None:
    defaulted = parse_message(crlf("From: alice@example.org\nReply-To:\n\nx")).envelope
    explicit = parse_message(
        crlf("From: alice@example.org\nSender: bob@example.com\nReply-To: list@example.net\n\nx")
    ).envelope

    alice = [Address(None, None, "alice", "example.org")]
    assert (defaulted.sender, defaulted.reply_to) == (alice, alice)
    assert explicit.sender == [BOB]
    assert explicit.reply_to == [Address(None, None, "list", "example.net")]


def test_folded_fields_are_unfolded_in_the_envelope_and_kept_whole_in_headers() -> None:
    data = crlf(
        """\
Subject: A rather long subject
 that goes on
To: bob@example.com,
\tcarol@example.net

x"""
    )
    parsed = parse_message(data)

    assert parsed.envelope.subject == "A rather long subject that goes on"
    assert parsed.envelope.to == [BOB, Address(None, None, "carol", "example.net")]
    assert [data[s:e] for _, s, e in parsed.headers] == [
        b"Subject: A rather long subject\r\n that goes on\r\n",
        b"To: bob@example.com,\r\n\tcarol@example.net\r\n",
    ]


def test_first_occurrence_of_a_repeated_field_wins() -> None:
    envelope = parse_message(crlf("Subject: one\nSubject: two\n\nx")).envelope

    assert envelope.subject == "one"


def test_message_without_body_or_blank_line_is_all_header() -> None:
    data = crlf("From: alice@example.org\nSubject: no body\n")
    parsed = parse_message(data)

    assert parsed.header_size == parsed.size == len(data)
    assert (parsed.body.size, parsed.body.lines) == (0, 0)
    assert section_bytes(data, parsed, "HEADER") == data
    assert section_bytes(data, parsed, "TEXT") == b""
    assert section_bytes(data, parsed, "1") == b""
    # No blank line to add: RFC 3501 §6.4.5's exception.
    assert section_bytes(data, parsed, "HEADER.FIELDS (SUBJECT)") == b"Subject: no body\r\n"
    unterminated = b"Subject: no line break"
    assert section_bytes(unterminated, parse_message(unterminated), "HEADER.FIELDS (SUBJECT)") == (
        unterminated
    )


def test_header_with_blank_line_but_no_body_keeps_its_blank_line() -> None:
    data = b"Subject: x\r\n\r\n"
    parsed = parse_message(data)

    assert parsed.header_size == len(data)
    assert section_bytes(data, parsed, "TEXT") == b""
    assert section_bytes(data, parsed, "HEADER.FIELDS (Subject)") == data


def test_empty_input_is_an_empty_text_message() -> None:
    parsed = parse_message(b"")

    assert parsed.size == parsed.header_size == 0
    assert parsed.body == BodyPart(
        type="text",
        subtype="plain",
        params=[("charset", "us-ascii")],
        size=0,
        lines=0,
        header_start=0,
        header_end=0,
        body_start=0,
        body_end=0,
    )
    assert parsed.headers == []


def test_lf_only_input_is_described_as_the_bytes_it_holds() -> None:
    # The store keeps CRLF as received; a bare-LF file (say, imported from another server) is
    # parsed as well, and its sizes and sections are the bare-LF octets, never converted.
    data = ALTERNATIVE.replace(b"\r\n", b"\n")
    parsed = parse_message(data)
    plain, html = parsed.body.parts

    assert parsed.size == len(data)
    assert section_bytes(data, parsed, "HEADER").endswith(b'boundary="alt"\n\n')
    assert section_bytes(data, parsed, "1") == b"Hello, Bob."
    assert section_bytes(data, parsed, "1.MIME") == b"Content-Type: text/plain; charset=utf-8\n\n"
    assert section_bytes(data, parsed, "2") == b"<p>Hello, Bob.</p>"
    assert (plain.size, html.size) == (11, 18)


def test_eight_bit_headers_are_utf8_text_and_raw_in_sections() -> None:
    data = b"Subject: Gr\xc3\xbc\xc3\x9fe\r\nFrom: K\xf6ln <k@example.org>\r\n\r\nx"
    parsed = parse_message(data)

    assert parsed.envelope.subject == "Grüße"
    assert parsed.envelope.from_ == [Address("K\ufffdln", None, "k", "example.org")]
    assert section_bytes(data, parsed, "HEADER") == data[:-1]
    assert from_json(json.loads(json.dumps(to_json(parsed)))) == parsed


def test_rfc2231_continuations_are_joined_and_encoded_values_kept_encoded() -> None:
    data = crlf(
        """\
Content-Type: TEXT/Plain; CHARSET="UTF-8";
 title*0="Part one, "; title*1="part two"
Content-Disposition: attachment; filename*0*=utf-8''na%C3%AF;
 filename*1="ve file.txt"; name*=iso-8859-1'fr'%E9t%E9

x"""
    )
    body = parse_message(data).body

    assert (body.type, body.subtype) == ("text", "plain")
    assert body.params == [("charset", "UTF-8"), ("title", "Part one, part two")]
    assert body.disposition == (
        "attachment",
        [("filename*", "utf-8''na%C3%AFve%20file.txt"), ("name*", "iso-8859-1'fr'%E9t%E9")],
    )


def test_invalid_content_type_and_encoding_fall_back_to_the_defaults() -> None:
    body = parse_message(crlf("Content-Type: text\nContent-Transfer-Encoding: ?x\n\nx")).body

    assert (body.type, body.subtype, body.params, body.encoding) == (
        "text",
        "plain",
        [("charset", "us-ascii")],
        "7bit",
    )


# --- broken MIME never raises ---------------------------------------------------------------


def test_missing_close_delimiter_runs_the_last_part_to_the_end() -> None:
    data = crlf(
        """\
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

first
--b

second, never closed
"""
    )
    parsed = parse_message(data)

    assert len(parsed.body.parts) == 2
    assert section_bytes(data, parsed, "1") == b"first"
    assert section_bytes(data, parsed, "2") == b"second, never closed\r\n"
    assert section_bytes(data, parsed, "2.MIME") == b"\r\n"


def test_inner_multipart_without_close_delimiter_is_ended_by_the_outer_boundary() -> None:
    data = crlf(
        """\
Content-Type: multipart/mixed; boundary=o

--o
Content-Type: multipart/alternative; boundary=o-inner

--o-inner
Content-Type: text/plain

a
--o
Content-Type: text/plain

b
--o--
"""
    )
    parsed = parse_message(data)
    first, second = parsed.body.parts

    assert [part.subtype for part in first.parts] == ["plain"]
    assert section_bytes(data, parsed, "1.1") == b"a"
    assert section_bytes(data, parsed, "2") == b"b"
    assert second.body_end < len(data)


@pytest.mark.parametrize(
    "content_type",
    ["multipart/mixed", 'multipart/mixed; boundary=""', "multipart/mixed; boundary=never"],
)
def test_multipart_without_usable_boundary_is_one_text_part_over_the_body(
    content_type: str,
) -> None:
    data = crlf(f"Content-Type: {content_type}\n\nJust some text\n--other\n")
    parsed = parse_message(data)

    assert parsed.body.type == "multipart"
    (only,) = parsed.body.parts
    assert (only.type, only.subtype, only.header_start, only.header_end) == (
        "text",
        "plain",
        parsed.header_size,
        parsed.header_size,
    )
    assert section_bytes(data, parsed, "1") == b"Just some text\r\n--other\r\n"
    assert section_bytes(data, parsed, "1.MIME") == b""


def test_multipart_starting_with_its_close_delimiter_has_one_text_part() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b--\nepilogue\n")
    parsed = parse_message(data)

    assert [part.size for part in parsed.body.parts] == [parsed.body.size]


def test_part_header_cut_short_by_a_boundary_has_no_body() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html\n--b--\n"
    )
    parsed = parse_message(data)
    (part,) = parsed.body.parts

    assert (part.subtype, part.size) == ("html", 0)
    # The line break before "--b--" belongs to the delimiter (RFC 2046 §5.1.1).
    assert section_bytes(data, parsed, "1.MIME") == b"Content-Type: text/html"
    assert section_bytes(data, parsed, "1") == b""


def test_bad_base64_is_stored_as_is() -> None:
    data = crlf("Content-Transfer-Encoding: base64\n\n!!! not base64 @@@\n")
    parsed = parse_message(data)

    assert parsed.body.encoding == "base64"
    assert section_bytes(data, parsed, "1") == b"!!! not base64 @@@\r\n"


def test_nesting_beyond_the_limit_is_described_as_text() -> None:
    data = b"Content-Type: message/rfc822\r\n\r\n" * (MAX_NESTING + 50) + b"deep\r\n"
    parsed = parse_message(data)

    depth = 0
    part = parsed.body
    while part.message_body is not None:
        part, depth = part.message_body, depth + 1
    assert depth == MAX_NESTING
    assert (part.type, part.subtype) == ("text", "plain")
    assert section_bytes(data, parsed, "TEXT").endswith(b"deep\r\n")
    assert from_json(to_json(parsed)) == parsed


def test_a_flood_of_parts_stops_at_the_part_limit() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\n" * (MAX_PARTS * 2)
    parsed = parse_message(data)

    assert len(parsed.body.parts) < MAX_PARTS
    assert parsed.body.parts[-1].body_end == len(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xff" * 100,
        b":::\r\n",
        b"\r\n\r\n",
        b"--",
        b"\n",
        b"\r",
        b" folded first line\r\n\r\nbody",
        b'From: (unclosed comment\r\nTo: "unclosed quote\r\nCc: <unclosed@angle\r\n\r\n',
        b"To: ,,,;;;<<<>>>@@@:::\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n--b--",
        b'Content-Type: ;;;="\r\nContent-Disposition: ;filename*0*=%%%\r\n\r\n',
        b"Date: \xff\xfe 31 Feb 2024 25:61:61 +9999\r\n\r\n",
    ],
)
def test_nasty_inputs_never_raise(data: bytes) -> None:
    check_invariants(data, parse_message(data))


# --- section_bytes --------------------------------------------------------------------------


def test_whole_message_header_and_text_sections() -> None:
    parsed = parse_message(PLAIN)

    assert section_bytes(PLAIN, parsed, "") == PLAIN
    assert section_bytes(PLAIN, parsed, "HEADER") == PLAIN_HEADER
    assert section_bytes(PLAIN, parsed, "TEXT") == PLAIN_BODY
    assert section_bytes(PLAIN, parsed, "header") == PLAIN_HEADER


def test_header_fields_are_case_insensitive_in_message_order_with_the_blank_line() -> None:
    parsed = parse_message(PLAIN)
    expected = b"From: Alice Example <alice@example.org>\r\nSubject: Lunch\r\n\r\n"

    assert section_bytes(PLAIN, parsed, "HEADER.FIELDS (Subject From)") == expected
    assert section_bytes(PLAIN, parsed, "header.fields (SUBJECT from)") == expected
    assert section_bytes(PLAIN, parsed, 'HEADER.FIELDS ("subject" "FROM")') == expected
    assert section_bytes(PLAIN, parsed, "HEADER.FIELDS (X-Missing)") == b"\r\n"


def test_header_fields_not_returns_every_other_field() -> None:
    parsed = parse_message(PLAIN)

    assert section_bytes(
        PLAIN, parsed, "HEADER.FIELDS.NOT (Return-Path Received Date Message-ID)"
    ) == (
        b"From: Alice Example <alice@example.org>\r\nTo: bob@example.com\r\nSubject: Lunch\r\n\r\n"
    )
    assert section_bytes(PLAIN, parsed, "HEADER.FIELDS.NOT (X-None)") == PLAIN_HEADER


def test_repeated_fields_are_all_returned() -> None:
    data = crlf("Received: one\nSubject: s\nReceived: two\n  folded\n\nx")
    parsed = parse_message(data)

    assert section_bytes(data, parsed, "HEADER.FIELDS (RECEIVED)") == crlf(
        "Received: one\nReceived: two\n  folded\n\n"
    )


def test_single_part_message_is_its_own_part_one() -> None:
    parsed = parse_message(PLAIN)

    assert section_bytes(PLAIN, parsed, "1") == PLAIN_BODY
    assert section_bytes(PLAIN, parsed, "1.MIME") == PLAIN_HEADER
    assert section_bytes(PLAIN, parsed, "2") == b""
    assert section_bytes(PLAIN, parsed, "1.1") == b""
    assert section_bytes(PLAIN, parsed, "1.HEADER") == b""


def test_nonexistent_parts_give_empty_bytes() -> None:
    parsed = parse_message(MIXED)

    for section in ("3", "3.MIME", "2.1.1", "1.2", "9.HEADER", "2.TEXT", "999999999"):
        assert section_bytes(MIXED, parsed, section) == b"", section


@pytest.mark.parametrize(
    "section",
    [
        "0",
        "1.",
        ".1",
        "1..2",
        "1.0",
        "FOO",
        "MIME",
        "1.FOO",
        "HEADER.FIELDS",
        "HEADER.FIELDS ()",
        "HEADER.FIELDS (A",
        'HEADER.FIELDS ("A)',
        "HEADER.FIELDS (A)(B)",
        "TEXT.HEADER",
    ],
)
def test_malformed_sections_raise_value_error(section: str) -> None:
    with pytest.raises(ValueError, match="bad section"):
        section_bytes(PLAIN, parse_message(PLAIN), section)


def test_parse_section_gives_part_numbers_keyword_and_lower_cased_names() -> None:
    assert parse_section("1.2.header.fields.not (To  Cc)") == Section(
        (1, 2), "HEADER.FIELDS.NOT", ("to", "cc")
    )
    assert parse_section("4.2.MIME") == Section((4, 2), "MIME")
    assert parse_section("") == Section((), "")


# --- JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_json_round_trip_is_lossless(name: str) -> None:
    parsed = parse_message(SAMPLES[name])
    encoded = json.dumps(to_json(parsed))

    assert from_json(json.loads(encoded)) == parsed


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(v=FORMAT_VERSION + 1),
        lambda d: d.update(size="12"),
        lambda d: d.update(size=True),
        lambda d: d["body"].update(range=[0, 5, 4, 10]),
        lambda d: d["body"].update(range=[0, 1, 1, 10**9]),
        lambda d: d["envelope"].update(to=[["a", None, "b"]]),
        lambda d: d.pop("headers"),
        lambda d: d["headers"].append(["x", "1", 2]),
    ],
)
def test_from_json_refuses_what_to_json_did_not_write(damage: Any) -> None:
    encoded = to_json(parse_message(MIXED))
    damage(encoded)

    with pytest.raises((ValueError, KeyError, TypeError)):
        from_json(encoded)


# --- invariants, by example and by property --------------------------------------------------


def numbered_parts(part: BodyPart, prefix: str = "") -> Iterator[tuple[str, BodyPart]]:
    """Every (part number, part) under part, numbered as RFC 3501 §6.4.5 does."""
    if not part.parts:
        # A non-multipart entity is its own part 1, and numbering continues inside a message.
        yield prefix + "1", part
        if part.message_body is not None:
            yield from numbered_parts(part.message_body, prefix + "1.")
        return
    for index, child in enumerate(part.parts, 1):
        number = f"{prefix}{index}"
        yield number, child
        if child.parts:
            yield from numbered_parts(child, number + ".")
        elif child.message_body is not None:
            yield from numbered_parts(child.message_body, number + ".")


def check_invariants(data: bytes, parsed: ParsedMessage) -> None:
    assert from_json(json.loads(json.dumps(to_json(parsed)))) == parsed
    assert parsed.size == len(data)
    assert section_bytes(data, parsed, "HEADER") + section_bytes(data, parsed, "TEXT") == data
    assert section_bytes(data, parsed, "HEADER.FIELDS.NOT (X-Absent)") == data[: parsed.header_size]
    header = data[: parsed.header_size]
    fields = b"".join(data[start:end] for _, start, end in parsed.headers)
    assert header.startswith(fields)
    assert header[len(fields) :] in (b"", b"\n", b"\r\n")

    def walk(part: BodyPart, low: int, high: int) -> None:
        assert low <= part.header_start <= part.header_end <= part.body_start <= part.body_end
        assert part.body_end <= high
        assert part.size == part.body_end - part.body_start
        assert (part.type == "multipart") == bool(part.parts)
        is_message = part.type == "message" and part.subtype in ("rfc822", "global")
        assert is_message == (part.message_body is not None) == (part.message_envelope is not None)
        assert (part.lines is not None) == (part.type == "text" or is_message)
        for child in part.parts:
            walk(child, part.body_start, part.body_end)
        if part.message_body is not None:
            walk(part.message_body, part.body_start, part.body_end)

    walk(parsed.body, 0, len(data))
    for number, part in numbered_parts(parsed.body):

        def section(suffix: str, number: str = number) -> bytes:
            return section_bytes(data, parsed, number + suffix)

        assert section("") == data[part.body_start : part.body_end]
        assert section(".MIME") == data[part.header_start : part.header_end]
        inner = part.message_body
        if inner is not None:
            header = data[inner.header_start : inner.header_end]
            assert section(".HEADER") == section(".HEADER.FIELDS.NOT (X-Absent)") == header
            assert section(".TEXT") == data[inner.body_start : inner.body_end]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_keep_the_invariants(name: str) -> None:
    check_invariants(SAMPLES[name], parse_message(SAMPLES[name]))


MIME_PIECES = [
    b"--b\r\n",
    b"--b--\r\n",
    b"--c\r\n",
    b"--c--",
    b"--b-c\r\n",
    b"\r\n",
    b"\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="c"\r\n',
    b"Content-Type: multipart/related; boundary=b-c\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: message/global\r\n",
    b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''a%20; filename*1=b\r\n",
    b"From: a@b\r\n",
    b"To: g: a@b, (c) <d@e>;\r\n",
    b" folded\r\n",
    b"Subject: x\r\n",
    b"Date: Mon, 1 Jan 2024 10:00 +0100\r\n",
    b"text line\r\n",
    b"\xff\xfe",
    b"--",
    b":",
    b"\x00",
]


def test_seeded_fuzz_of_mime_shaped_input_keeps_the_invariants() -> None:
    # Runs without Hypothesis too, so CI always exercises the malformed-input paths.
    rng = random.Random(3501)
    for _ in range(1500):
        data = b"".join(rng.choice(MIME_PIECES) for _ in range(rng.randrange(60)))
        check_invariants(data, parse_message(data))


if given is not None:

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=3000))
    def test_parse_never_raises_on_arbitrary_bytes(data: bytes) -> None:
        check_invariants(data, parse_message(data))

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.sampled_from(MIME_PIECES) | st.binary(max_size=6), max_size=80))
    def test_parse_keeps_the_invariants_on_mime_shaped_input(pieces: list[bytes]) -> None:
        data = b"".join(pieces)
        check_invariants(data, parse_message(data))

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=200))
    def test_address_parser_never_raises(value: str) -> None:
        for address in parse_addresses(value):
            assert address.mailbox is not None or address.host is None

else:  # pragma: no cover

    def test_property_tests_need_hypothesis() -> None:
        pytest.skip("hypothesis is not installed")


# --- the cache ------------------------------------------------------------------------------


def store_message(folder: Path, data: bytes, unique: str = "1700000000.M1P1.host") -> Path:
    (folder / "cur").mkdir(parents=True, exist_ok=True)
    path = folder / "cur" / f"{unique},S={len(data)}:2,S"
    path.write_bytes(data)
    return path


def basename(path: Path) -> str:
    return path.name.split(":2,")[0]


def cache_rows(folder: Path) -> dict[str, bytes]:
    connection = sqlite3.connect(folder / CACHE_FILE_NAME)
    try:
        return dict(connection.execute("SELECT basename, data FROM parsed").fetchall())
    finally:
        connection.close()


def remove_cache_files(folder: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (folder / f"{CACHE_FILE_NAME}{suffix}").unlink(missing_ok=True)


def test_cache_hit_does_not_read_the_message_file(tmp_path: Path) -> None:
    path = store_message(tmp_path, MIXED)
    with MessageCache(tmp_path) as cache:
        first = cache.get(basename(path), path)
        path.unlink()
        assert cache.get(basename(path), path) == first == parse_message(MIXED)
    with MessageCache(tmp_path) as reopened:
        assert reopened.get(basename(path), path) == first


def test_cache_file_is_created_lazily_in_the_folder(tmp_path: Path) -> None:
    path = store_message(tmp_path, PLAIN)
    cache = MessageCache(tmp_path)
    try:
        assert not (tmp_path / CACHE_FILE_NAME).exists()
        cache.forget([basename(path)])
        assert not (tmp_path / CACHE_FILE_NAME).exists()
        cache.get(basename(path), path)
    finally:
        cache.close()

    assert list(cache_rows(tmp_path)) == [basename(path)]


def test_deleted_cache_file_is_rebuilt_on_demand(tmp_path: Path) -> None:
    first = store_message(tmp_path, PLAIN, "1.M1P1.host")
    second = store_message(tmp_path, MIXED, "2.M2P1.host")
    with MessageCache(tmp_path) as cache:
        cache.get(basename(first), first)
        remove_cache_files(tmp_path)

        assert cache.get(basename(second), second) == parse_message(MIXED)
        assert cache.get(basename(first), first) == parse_message(PLAIN)
        assert sorted(cache_rows(tmp_path)) == sorted([basename(first), basename(second)])
        first.unlink()
        assert cache.get(basename(first), first) == parse_message(PLAIN)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_file_is_replaced(tmp_path: Path, damage: str) -> None:
    paths = [store_message(tmp_path, NESTED, f"{n}.M{n}P1.host") for n in range(60)]
    with MessageCache(tmp_path) as cache:
        for path in paths:
            cache.get(basename(path), path)
    cache_file = tmp_path / CACHE_FILE_NAME
    size = cache_file.stat().st_size
    assert size > 8192
    with cache_file.open("r+b") as handle:
        if damage == "garbage":
            handle.write(random.Random(7).randbytes(size))
        else:
            handle.truncate(size // 2)

    with MessageCache(tmp_path) as cache:
        for _ in range(2):
            assert all(cache.get(basename(p), p) == parse_message(NESTED) for p in paths)
    connection = sqlite3.connect(cache_file)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()
    if damage == "garbage":
        assert sorted(cache_rows(tmp_path)) == sorted(basename(p) for p in paths)


@pytest.mark.parametrize("blob", [b"\x78\x01junk", b"", b"not zlib at all"])
def test_damaged_entry_is_reparsed_and_overwritten(tmp_path: Path, blob: bytes) -> None:
    path = store_message(tmp_path, MIXED)
    with MessageCache(tmp_path) as cache:
        cache.get(basename(path), path)
    connection = sqlite3.connect(tmp_path / CACHE_FILE_NAME)
    with connection:
        connection.execute("UPDATE parsed SET data = ?", (blob,))
    connection.close()

    with MessageCache(tmp_path) as cache:
        assert cache.get(basename(path), path) == parse_message(MIXED)
        path.unlink()
        assert cache.get(basename(path), path) == parse_message(MIXED)


def test_entries_of_another_format_version_are_reparsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store_message(tmp_path, PLAIN)
    with MessageCache(tmp_path) as cache:
        cache.get(basename(path), path)
    monkeypatch.setattr(message, "FORMAT_VERSION", FORMAT_VERSION + 1)

    with MessageCache(tmp_path) as cache:
        reparsed = cache.get(basename(path), path)
        path.unlink()
        assert cache.get(basename(path), path) == reparsed == parse_message(PLAIN)


def test_entry_whose_size_disagrees_with_the_file_name_is_not_trusted(tmp_path: Path) -> None:
    path = store_message(tmp_path, PLAIN)
    wrong_name = basename(path).replace(f"S={len(PLAIN)}", "S=1")
    with MessageCache(tmp_path) as cache:
        cache.get(wrong_name, path)
        path.unlink()
        with pytest.raises(FileNotFoundError):
            cache.get(wrong_name, path)


def test_forget_drops_entries_after_expunge(tmp_path: Path) -> None:
    kept = store_message(tmp_path, PLAIN, "1.M1P1.host")
    expunged = store_message(tmp_path, MIXED, "2.M2P1.host")
    with MessageCache(tmp_path) as cache:
        cache.get(basename(kept), kept)
        cache.get(basename(expunged), expunged)
        cache.forget([basename(expunged), "never-cached"])
        kept.unlink()
        expunged.unlink()

        assert cache.get(basename(kept), kept) == parse_message(PLAIN)
        with pytest.raises(FileNotFoundError):
            cache.get(basename(expunged), expunged)


def test_cache_that_cannot_be_written_still_parses(tmp_path: Path) -> None:
    path = store_message(tmp_path, PLAIN)
    with MessageCache(tmp_path / "no-such-folder") as cache:
        assert cache.get(basename(path), path) == parse_message(PLAIN)


def test_cache_busy_past_its_timeout_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(message, "BUSY_TIMEOUT_SECONDS", 0.05)
    path = store_message(tmp_path, PLAIN)
    with MessageCache(tmp_path) as cache:
        cache.get("warm-up", path)
        blocker = sqlite3.connect(tmp_path / CACHE_FILE_NAME, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            assert cache.get(basename(path), path) == parse_message(PLAIN)
            assert basename(path) not in cache_rows(tmp_path)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert cache.get(basename(path), path) == parse_message(PLAIN)
    assert basename(path) in cache_rows(tmp_path)


def test_one_cache_shared_by_threads(tmp_path: Path) -> None:
    paths = [store_message(tmp_path, SAMPLES[n], f"{i}.M{i}.{n}") for i, n in enumerate(SAMPLES)]
    expected = {basename(p): parse_message(p.read_bytes()) for p in paths}
    failures: list[BaseException] = []

    with MessageCache(tmp_path) as cache:

        def work(seed: int) -> None:
            try:
                rng = random.Random(seed)
                for _ in range(30):
                    path = rng.choice(paths)
                    assert cache.get(basename(path), path) == expected[basename(path)]
                    if rng.random() < 0.1:
                        cache.forget([basename(path)])
            except BaseException as error:  # pragma: no cover - reported below
                failures.append(error)

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures
    assert not any(thread.is_alive() for thread in threads)


def cache_worker(folder: str, seed: int, go: Any, results: Any) -> None:
    """One process of the concurrency test: get, compare and forget in a random order."""
    try:
        go.wait(60)
        rng = random.Random(seed)
        cur = Path(folder) / "cur"
        names = sorted(os.listdir(cur))
        expected = {name: parse_message((cur / name).read_bytes()) for name in names}
        mismatches = 0
        with MessageCache(Path(folder)) as cache:
            for _ in range(4):
                rng.shuffle(names)
                for name in names:
                    if cache.get(name.split(":2,")[0], cur / name) != expected[name]:
                        mismatches += 1
                cache.forget(name.split(":2,")[0] for name in rng.sample(names, 5))
        results.put((seed, mismatches, ""))
    except BaseException as error:  # pragma: no cover - reported to the parent
        results.put((seed, -1, repr(error)))


def test_four_processes_share_one_folder_cache_safely(tmp_path: Path) -> None:
    for index in range(40):
        name = sorted(SAMPLES)[index % len(SAMPLES)]
        store_message(tmp_path, SAMPLES[name], f"{index}.M{index}P1.host")
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=cache_worker, args=(str(tmp_path), seed, go, results))
        for seed in range(4)
    ]
    for process in processes:
        process.start()
    go.set()
    outcomes = sorted(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)

    assert outcomes == [(seed, 0, "") for seed in range(4)]
    assert all(process.exitcode == 0 for process in processes)
    connection = sqlite3.connect(tmp_path / CACHE_FILE_NAME)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()
    with MessageCache(tmp_path) as cache:
        for key in cache_rows(tmp_path):
            stored = cache.get(key, tmp_path / "no-such-file")
            assert stored == parse_message((tmp_path / "cur" / f"{key}:2,S").read_bytes())


def test_cache_miss_finds_a_message_renamed_by_a_flag_change(tmp_path: Path) -> None:
    """A session still holds the name the message had before another session's STORE renamed
    it (new flags after ':2,'): the parse reads the file under its new name."""
    data = b"Subject: renamed\r\n\r\nbody\r\n"
    path = store_message(tmp_path, data)
    renamed = path.with_name(path.name.replace(":2,S", ":2,FS"))
    os.rename(path, renamed)
    with message.MessageCache(tmp_path) as cache:
        parsed = cache.get(basename(path), path)
    assert parsed.envelope.subject == "renamed"
    os.unlink(renamed)
    remove_cache_files(tmp_path)
    with message.MessageCache(tmp_path) as cache, pytest.raises(FileNotFoundError):
        cache.get(basename(path), path)


# --- the process's shared caches and memory (issue 14: no open/close per FETCH) ---------------


@pytest.fixture
def fresh_shared() -> Iterator[None]:
    message.close_shared_caches()
    yield
    message.close_shared_caches()


def test_shared_cache_is_one_open_cache_per_folder(tmp_path: Path, fresh_shared: None) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = message.shared_cache(tmp_path / "a")
    assert message.shared_cache(tmp_path / "a") is first
    assert message.shared_cache(tmp_path / "b") is not first
    path = store_message(tmp_path / "a", PLAIN)
    first.get(basename(path), path)
    # The connection stays open between uses (no checkpoint and WAL removal per command).
    assert first._connection is not None
    assert list(cache_rows(tmp_path / "a")) == [basename(path)]


def test_shared_caches_are_bounded_and_the_oldest_is_closed(
    tmp_path: Path, fresh_shared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(message, "SHARED_CACHES", 2)
    caches = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        path = store_message(tmp_path / name, PLAIN)
        cache = message.shared_cache(tmp_path / name)
        cache.get(basename(path), path)
        caches.append(cache)
    assert caches[0]._connection is None  # closed when the third came
    assert caches[2]._connection is not None
    assert message.shared_cache(tmp_path / "a") is not caches[0]


def test_remembered_entries_skip_the_file_and_forget_drops_them(
    tmp_path: Path, fresh_shared: None
) -> None:
    path = store_message(tmp_path, PLAIN)
    cache = message.shared_cache(tmp_path)
    parsed = cache.get(basename(path), path)
    remove_cache_files(tmp_path)
    # Decoded in memory: the same object, without the cache file (nothing recreated it).
    assert cache.get(basename(path), path) is parsed
    assert not (tmp_path / CACHE_FILE_NAME).exists()
    cache.forget([basename(path)])
    again = cache.get(basename(path), path)
    assert again == parsed and again is not parsed
    assert list(cache_rows(tmp_path)) == [basename(path)]


def test_header_block_is_the_header_and_comes_from_memory_once_read(
    tmp_path: Path, fresh_shared: None
) -> None:
    path = store_message(tmp_path, PLAIN)
    cache = message.shared_cache(tmp_path)
    header = cache.header(basename(path), path)
    parsed = parse_message(PLAIN)
    assert header.block == PLAIN[: parsed.header_size] and header.block == PLAIN_HEADER
    assert header.headers == parsed.headers and header.envelope == parsed.envelope
    assert header.sent_day() == parsed.sent_day()
    # Read from the head of the file only: nothing parsed the body, nothing wrote the cache.
    assert not (tmp_path / CACHE_FILE_NAME).exists()
    path.unlink()  # renamed away or expunged: the block is remembered
    assert cache.header(basename(path), path) is header


def test_header_block_of_a_message_renamed_by_a_flag_change(
    tmp_path: Path, fresh_shared: None
) -> None:
    path = store_message(tmp_path, PLAIN)
    cache = message.shared_cache(tmp_path)
    parsed = cache.get(basename(path), path)
    path.rename(path.with_name(path.name.replace(":2,S", ":2,FS")))
    header = cache.header(basename(path), path)
    assert header.block == PLAIN_HEADER and header.envelope is parsed.envelope


def test_header_block_of_a_renamed_message_never_parsed(tmp_path: Path, fresh_shared: None) -> None:
    path = store_message(tmp_path, PLAIN)
    path.rename(path.with_name(path.name.replace(":2,S", ":2,FS")))
    assert message.shared_cache(tmp_path).header(basename(path), path).block == PLAIN_HEADER


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: bare LF\nFrom: a@example.test\n\nbody\n",
        b"Subject: no body at all\r\nFrom: a@example.test\r\n",
        b"\r\nbody without a header\r\n",
        b"\nbody without a header, bare LF\n",
        b"",
        b"X-Long: " + b"x" * 20_000 + b"\r\n\tfolded\r\nSubject: after 20 KB\r\n\r\nbody\r\n",
        # The first 8 KB read ends in "\r\n\r": the blank line's last "\n" comes with the next.
        b"Subject: blank line across the first read\r\n" + b"X: " + b"y" * 8143 + b"\r\n\r\nb",
        b"From: =?utf-8?q?J=C3=B6rg?= <j@example.test>\r\nDate: 1 Feb 2024 10:00 +0100\r\n\r\n",
        b"To: a@x.test, (c) B <b@y.test>, g: c@z.test;\r\nFrom: one@x.test\r\n"
        b"From: two@x.test\r\nCc: \r\nReply-To: r@x.test\r\n\r\n",
    ],
)
def test_the_header_read_alone_agrees_with_the_whole_parse(
    tmp_path: Path, fresh_shared: None, data: bytes
) -> None:
    path = store_message(tmp_path, data)
    header = message.shared_cache(tmp_path).header(basename(path), path)
    parsed = parse_message(data)
    for name in ("from", "sender", "reply-to", "to", "cc", "bcc"):  # each parsed alone
        assert header.addresses(name) == parsed.addresses(name), name
    assert header.block == data[: parsed.header_size]
    assert header.headers == parsed.headers
    assert header.envelope == parsed.envelope
    assert header.sent_day() == parsed.sent_day()


def test_a_plain_message_cache_keeps_nothing_in_memory(tmp_path: Path) -> None:
    path = store_message(tmp_path, PLAIN)
    with MessageCache(tmp_path) as cache:
        first = cache.get(basename(path), path)
        assert cache.get(basename(path), path) is not first  # decoded from the file again


def _child_uses_shared_cache(folder: Path, inherited: int, path: Path, out: Any) -> None:
    cache = message.shared_cache(folder)
    parsed = cache.get(basename(path), path)
    out.put((id(cache) != inherited, parsed == parse_message(PLAIN)))


def test_a_forked_child_opens_its_own_shared_caches(tmp_path: Path, fresh_shared: None) -> None:
    """SQLite connections must not cross a fork (a worker process forked from one that used
    the caches): the child opens its own."""
    path = store_message(tmp_path, PLAIN)
    cache = message.shared_cache(tmp_path)
    cache.get(basename(path), path)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child_uses_shared_cache, args=(tmp_path, id(cache), path, out))
    child.start()
    try:
        assert out.get(timeout=30) == (True, True)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
    assert message.shared_cache(tmp_path) is cache  # the parent's own is untouched
