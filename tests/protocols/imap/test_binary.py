"""BINARY (RFC 3516) on real sockets: decoded sections, sizes, literal8 out and in."""

from __future__ import annotations

import base64
import re

from imapclient import IMAPClient

from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.exchange import exchange
from tests.protocols.imap.test_session import logged_in

BLOB = b"\x00\x01\x02binary\x00\xff\r\n\n\rend"
HTML = b"<html><body><p>Hello &amp; welcome</p></body></html>"
MIXED = (
    b"From: a@b.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
    b"\r\nCaf=C3=A9 au =\r\nlait=3D1\r\n"
    b"--outer\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(BLOB).replace(b"\n", b"\r\n")
    + b"--outer\r\n"
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
    b"begin 644 x\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
    b"--inner\r\nContent-Type: text/plain\r\n\r\nplain words\r\n"
    b"--inner\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: BASE64\r\n\r\n"
    + base64.encodebytes(HTML).replace(b"\n", b"\r\n")
    + b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"aGVs!!bG8g\r\nd2*9y\r\nbGQ\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain\r\n\r\nno encoding named\nbare LF\r\n"
    b"--outer--\r\n"
)


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def literal8(data: bytes) -> bytes:
    return b"~{%d+}\r\n" % len(data) + data


def value_of(line: bytes, label: bytes) -> bytes:
    """The literal (or literal8) after `label` in a FETCH response line."""
    match = re.search(re.escape(label) + rb" ~?\{(\d+)\}\r\n", line)
    assert match, (label, line)
    start = match.end()
    return line[start : start + int(match.group(1))]


def appended(imap, message: bytes = MIXED):
    client = logged_in(imap)
    _, done = exchange(client, b"APPEND INBOX " + literal(message))
    assert done.startswith(b"OK"), done
    client.select("INBOX")
    return client


def test_binary_is_advertised_after_login(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    assert b"BINARY" in client.capability()[1][0].split()
    client.logout()


def test_binary_decodes_quoted_printable_base64_and_nested_parts(session, imap):
    make_mailbox(session)
    client = appended(imap)
    [line], done = exchange(
        client,
        "FETCH 1 (BINARY.PEEK[1] BINARY.PEEK[2] BINARY.PEEK[4.1] BINARY.PEEK[4.2] "
        "BINARY.PEEK[5] BINARY.PEEK[6] BINARY.SIZE[1] BINARY.SIZE[2] FLAGS)",
    )
    client.logout()
    assert done.startswith(b"OK"), done
    assert value_of(line, b"BINARY[1]") == "Café au lait=1".encode()
    # NUL inside: sent as literal8, every octet as decoded (no line-end rewriting).
    assert b"BINARY[2] ~{%d}\r\n" % len(BLOB) in line
    assert value_of(line, b"BINARY[2]") == BLOB
    assert value_of(line, b"BINARY[4.1]") == b"plain words"
    assert value_of(line, b"BINARY[4.2]") == HTML
    # Bad base64: characters outside the alphabet are skipped (RFC 2045 §6.8).
    assert value_of(line, b"BINARY[5]") == b"hello world"
    # No Content-Transfer-Encoding: 7bit, given with CRLF line ends as BODY[6] is.
    assert value_of(line, b"BINARY[6]") == b"no encoding named\r\nbare LF"
    assert b"BINARY.SIZE[1] %d" % len("Café au lait=1".encode()) in line
    assert b"BINARY.SIZE[2] %d" % len(BLOB) in line
    assert b"\\Seen" not in line


def test_binary_without_peek_sets_seen_and_partial_counts_decoded_octets(session, imap):
    make_mailbox(session)
    client = appended(imap)
    [line], _ = exchange(client, "FETCH 1 (BINARY[2]<3.6> BINARY.SIZE[2])")
    [flags], _ = exchange(client, "FETCH 1 FLAGS")
    # Partials far out: nothing, and no error; beyond 32 bits: BAD.
    [far], done_far = exchange(client, "FETCH 1 BINARY.PEEK[2]<4294967295.4294967295>")
    _, too_far = exchange(client, "FETCH 1 BINARY.PEEK[2]<4294967296.1>")
    client.logout()
    assert value_of(line, b"BINARY[2]<3>") == BLOB[3:9] == b"binary"
    assert b"\\Seen" in flags
    assert b"BINARY[2]<4294967295> {0}" in far and done_far.startswith(b"OK")
    assert too_far.startswith(b"BAD")


def test_unknown_transfer_encoding_fails_with_unknown_cte(session, imap):
    make_mailbox(session)
    client = appended(imap)
    _, done = exchange(client, "FETCH 1 BINARY.PEEK[3]")
    _, size_done = exchange(client, "FETCH 1 BINARY.SIZE[3]")
    # BODY[3] still gives the octets as stored.
    [body], body_done = exchange(client, "FETCH 1 BODY.PEEK[3]")
    client.logout()
    assert done.startswith(b"NO [UNKNOWN-CTE]"), done
    assert size_done.startswith(b"NO [UNKNOWN-CTE]")
    assert value_of(body, b"BODY[3]") == b"begin 644 x" and body_done.startswith(b"OK")


def test_odd_sections(session, imap):
    make_mailbox(session)
    client = appended(imap)
    [missing], done = exchange(client, "FETCH 1 (BINARY.PEEK[9] BINARY.SIZE[4.7])")
    [whole], _ = exchange(client, "FETCH 1 BINARY.PEEK[]")
    [deep], deep_done = exchange(client, "FETCH 1 BINARY.SIZE[" + "1." * 200 + "1]")
    bad = [
        exchange(client, f"FETCH 1 {item}")[1].split(b" ")[0]
        for item in (
            "BINARY[1.HEADER]",
            "BINARY[TEXT]",
            "BINARY[0]",
            "BINARY[1..2]",
            "BINARY.SIZE[1]<0.5>",
            "BINARY[1]<0.0>",
            "BINARY[1]<-1.2>",
        )
    ]
    client.logout()
    assert done.startswith(b"OK")
    assert b"BINARY[9] {0}\r\n" in missing and b"BINARY.SIZE[4.7] 0" in missing
    # The whole message, line ends made CRLF as BODY[] gives them.
    assert value_of(whole, b"BINARY[]") == MIXED.replace(b"LF\r\n", b"LF").replace(
        b"named\n", b"named\r\n"
    ).replace(b"bare LF", b"bare LF\r\n")
    assert deep.endswith(b" 0)") and deep_done.startswith(b"OK")
    assert bad == [b"BAD"] * 7


def test_append_literal8_keeps_nul_octets_and_plain_literal_with_nul_is_refused(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    message = b"Subject: nul\r\nContent-Type: application/octet-stream\r\n\r\n" + BLOB
    _, done = exchange(client, b"APPEND INBOX " + literal8(message))
    _, refused = exchange(client, b"APPEND INBOX " + literal(message))
    # MULTIAPPEND: a bad second message stores neither.
    _, refused_both = exchange(
        client, b"APPEND INBOX " + literal8(message) + b" " + literal(message)
    )
    client.select("INBOX")
    [line], _ = exchange(client, "FETCH 1 BINARY.PEEK[]")
    client.logout()
    assert done.startswith(b"OK [APPENDUID"), done
    assert refused.startswith(b"BAD") and refused_both.startswith(b"BAD")
    stored = mail_store().open("alice@example.test").folder("INBOX")
    assert len(stored.messages()) == 1
    assert stored.read(stored.messages()[0].uid) == message
    assert value_of(line, b"BINARY[]") == message and b"BINARY[] ~{" in line


def test_imapclient_fetches_binary_sections(session, imap):
    make_mailbox(session)
    host, port = imap["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        client.append("INBOX", MIXED)
        client.select_folder("INBOX")
        [uid] = client.search("ALL")
        fetched = client.fetch([uid], ["BINARY.PEEK[1]", "BINARY.SIZE[4.2]"])[uid]
        assert fetched[b"BINARY[1]"] == "Café au lait=1".encode()
        assert fetched[b"BINARY.SIZE[4.2]"] == len(HTML)


def test_fetch_item_parsing_of_the_new_items():
    from provider.protocols.imap.fetch import FetchItem, parse_fetch_items
    from provider.protocols.imap.parser import parse_command

    command = parse_command(
        b"a FETCH 1 (BINARY.PEEK[1.2]<0.10> binary.size[3] BINARY[] PREVIEW (lazy) SAVEDATE "
        b"PREVIEW)\r\n"
    )
    items = parse_fetch_items(command.args[1])
    assert items == [
        FetchItem("BINARY", "1.2", (0, 10), peek=True),
        FetchItem("BINARY.SIZE", "3"),
        FetchItem("BINARY", ""),
        FetchItem("PREVIEW", lazy=True),
        FetchItem("SAVEDATE"),
        FetchItem("PREVIEW"),
    ]
    assert [i.label for i in items[:3]] == ["BINARY[1.2]<0>", "BINARY.SIZE[3]", "BINARY[]"]
    assert [i.sets_seen for i in items] == [False, False, True, False, False, False]


def test_append_with_a_synchronizing_literal8(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    message = b"Subject: sync\r\n\r\n\x00\r\n"
    untagged, done = exchange(client, b"APPEND INBOX ~{%d}\r\n" % len(message) + message)
    client.logout()
    assert untagged == [b"+ Ready for literal data"] and done.startswith(b"OK"), done
    folder = mail_store().open("alice@example.test").folder("INBOX")
    assert [folder.read(info.uid) for info in folder.messages()] == [message]
