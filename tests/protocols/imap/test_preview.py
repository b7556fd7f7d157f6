"""PREVIEW (RFC 8970) on real sockets: the first text part made plain, cached, LAZY."""

from __future__ import annotations

import base64
import re

from imapclient import IMAPClient

from provider.mailstore.content import preview_text
from provider.mailstore.message import close_shared_caches, parse_message
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.exchange import exchange
from tests.protocols.imap.test_session import logged_in

LONG = b"Dear Alice,\r\n\r\n   the   quarterly\tnumbers are in.  " + b"More words here. " * 30
HTML_LATIN1 = (
    "<html><head><title>T</title><style>p {color: red}</style></head><body>"
    "<p>Caf\xe9 &amp; cr\xe8me</p><script>alert(1)</script><div>second&nbsp;block</div>"
    "</body></html>"
)
MESSAGES = [
    # 1: plain text, long: collapsed and cut at 200 characters.
    b"Subject: long\r\n\r\n" + LONG,
    # 2: HTML only, base64, Latin-1.
    b"Subject: html\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(HTML_LATIN1.encode("latin-1")).replace(b"\n", b"\r\n"),
    # 3: alternative inside mixed: the plain part comes first.
    b'Subject: nested\r\nContent-Type: multipart/mixed; boundary="o"\r\n\r\n--o\r\n'
    b'Content-Type: multipart/alternative; boundary="i"\r\n\r\n'
    b"--i\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-"
    b"printable\r\n\r\nGr=C3=BC=C3=9Fe aus =\r\nBerlin\r\n"
    b"--i\r\nContent-Type: text/html\r\n\r\n<p>ignored</p>\r\n--i--\r\n"
    b"--o\r\nContent-Type: application/pdf\r\n\r\n%PDF\r\n--o--\r\n",
    # 4: only an attachment: no text, an empty preview.
    b"Subject: file\r\nContent-Type: application/octet-stream\r\n\r\n\x01\x02",
    # 5: text that is an attachment is skipped; the next text part is used.
    b'Subject: att\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n"
    b"\r\nattached text\r\n--b\r\nContent-Type: text/plain\r\n\r\nreal body\r\n--b--\r\n",
    # 6: bad base64, an unknown charset and control characters.
    b"Subject: odd\r\nContent-Type: text/plain; charset=x-unknown\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8H!!IHdv\r\ncgBs*ZCD/\r\n",
    # 7: an unknown transfer encoding: nothing can be shown.
    b"Subject: uu\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n",
    # 8: no body at all.
    b"Subject: empty\r\n\r\n",
]


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def previews(client, command: str) -> dict[int, bytes]:
    untagged, done = exchange(client, command)
    assert done.startswith(b"OK"), done
    found = {}
    for line in untagged:
        match = re.match(
            rb"\* (\d+) FETCH \(.*PREVIEW (NIL|\"(?:[^\"\\]|\\.)*\"|\{\d+\}\r\n.*)\)$", line, re.S
        )
        assert match, line
        value = match.group(2)
        if value.startswith(b"{"):  # 8-bit text comes as a literal
            value = b'"' + value.split(b"\r\n", 1)[1] + b'"'
        found[int(match.group(1))] = value
    return found


def test_preview_texts(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    assert b"PREVIEW" in client.capability()[1][0].split()
    for message in MESSAGES:
        assert exchange(client, b"APPEND INBOX " + literal(message))[1].startswith(b"OK")
    client.select("INBOX")
    found = previews(client, "FETCH 1:* (PREVIEW)")
    [flags], _ = exchange(client, "FETCH 1 FLAGS")
    client.logout()
    expected_long = ("Dear Alice, the quarterly numbers are in. " + "More words here. " * 30)[
        :200
    ].rstrip()
    assert found[1] == b'"' + expected_long.encode() + b'"'
    assert found[2] == '"Café & crème second block"'.encode()
    assert found[3] == '"Grüße aus Berlin"'.encode()
    assert found[4] == b'""'
    assert found[5] == b'"real body"'
    # Garbage skipped, the unknown charset read as UTF-8 (\xff replaced), controls blanked.
    assert found[6] == '"hello wor ld \ufffd"'.encode()
    assert found[7] == b'""' and found[8] == b'""'
    assert b"\\Seen" not in flags  # PREVIEW reads nothing the user is shown as read


def test_lazy_gives_nil_until_made_then_the_cached_text(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    for message in MESSAGES[:2]:
        exchange(client, b"APPEND INBOX " + literal(message))
    client.select("INBOX")
    first = previews(client, "FETCH 1:2 (UID PREVIEW (LAZY))")
    made = previews(client, "FETCH 1 PREVIEW")
    # The single-item form, whose (LAZY) stands where FETCH's own modifiers would.
    again = previews(client, "FETCH 1:2 PREVIEW (LAZY)")
    close_shared_caches()  # the text is kept in the folder's cache file, not only in memory
    after_restart = previews(client, "UID FETCH 1 (PREVIEW (LAZY))")
    bad = [
        exchange(client, f"FETCH 1 {items}")[1].split(b" ")[0]
        for items in ("(PREVIEW (BOGUS))", "(PREVIEW (LAZY LAZY))", "(PREVIEW ())", "PREVIEW (X)")
    ]
    client.logout()
    assert first == {1: b"NIL", 2: b"NIL"}
    assert made[1].startswith(b'"Dear Alice')
    assert again == {1: made[1], 2: b"NIL"}
    assert after_restart == {1: made[1]}
    assert bad == [b"BAD"] * 4


def test_preview_of_a_big_message_reads_only_the_start(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    big = b"Subject: big\r\n\r\n" + b"word " * 150_000  # 750 KB
    exchange(client, b"APPEND INBOX " + literal(big))
    client.select("INBOX")
    found = previews(client, "FETCH 1 PREVIEW")
    client.logout()
    assert found[1] == b'"' + (b"word " * 40).rstrip() + b'"'


def test_preview_text_units():
    parsed = parse_message(b"Content-Type: text/plain; charset=utf-8\r\n\r\nx")
    assert preview_text(parsed.body, b"a\x00b\x1bc   d\r\n") == "a b c d"
    assert preview_text(None, b"anything") == ""
    deep = b"".join(b"<div>" for _ in range(5000)) + b"deep"
    html = parse_message(b"Content-Type: text/html\r\n\r\n" + deep)
    assert preview_text(html.body, deep) == "deep"


def test_imapclient_fetches_preview(session, imap):
    make_mailbox(session)
    host, port = imap["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        client.append("INBOX", MESSAGES[2])
        client.select_folder("INBOX")
        fetched = client.fetch([1], ["PREVIEW"])[1]
        assert fetched[b"PREVIEW"] == "Grüße aus Berlin".encode()
