"""CATENATE (RFC 4469) on real sockets: drafts built from TEXT and URLs, all or nothing."""

from __future__ import annotations

import re

import pytest
from imapclient import IMAPClient

from provider.protocols.imap.catenate import BadUrl, parse_imap_url
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.exchange import exchange
from tests.protocols.imap.test_session import logged_in

DRAFT = (
    b"From: alice@example.test\r\nTo: bob@b.test\r\nSubject: draft 1\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain\r\n\r\nFirst version of the text.\r\n"
    b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"JVBERi0xLjQKJcfsj6IK\r\n"
    b"--b1--\r\n"
)


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def folder_messages(name: str = "Drafts") -> list[bytes]:
    folder = mail_store().open("alice@example.test").folder(name)
    return [folder.read(info.uid) for info in folder.messages()]


def saved_draft(client) -> tuple[int, int]:
    """APPEND the first draft to Drafts: (UIDVALIDITY, UID) from APPENDUID."""
    _, done = exchange(client, b"APPEND Drafts (\\Draft) " + literal(DRAFT))
    match = re.search(rb"APPENDUID (\d+) (\d+)", done)
    assert match, done
    return int(match.group(1)), int(match.group(2))


def test_apple_mail_like_draft_replaces_text_and_keeps_attachment(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    assert b"CATENATE" in client.capability()[1][0].split()
    validity, uid = saved_draft(client)
    client.select("Drafts")
    base = f"/Drafts;UIDVALIDITY={validity}/;UID={uid}"
    new_text = b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSecond version.\r\n--b1\r\n"
    command = (
        b"APPEND Drafts (\\Draft) CATENATE ("
        + f'URL "{base}/;SECTION=HEADER" '.encode()
        + b"TEXT "
        + literal(new_text)
        # A section name in lower case and the attachment's MIME header and body.
        + f' URL "{base}/;section=2.mime" URL "{base}/;SECTION=2"'.encode()
        + b" TEXT "
        + literal(b"\r\n--b1--\r\n")
        + b")"
    )
    _, done = exchange(client, command)
    [_, second] = folder_messages()
    client.logout()
    assert done.startswith(b"OK [APPENDUID"), done
    assert second == (
        DRAFT.split(b"\r\n\r\n", 1)[0]
        + b"\r\n\r\n"
        + new_text
        + b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b"JVBERi0xLjQKJcfsj6IK"
        + b"\r\n--b1--\r\n"
    )


def test_absolute_url_whole_message_partial_and_multiappend(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    # RFC 5550: ;PARTIAL in the URLs CATENATE takes is what URL-PARTIAL announces.
    assert b"URL-PARTIAL" in client.capability()[1][0].split()
    validity, uid = saved_draft(client)
    host, port = imap["imap"]
    absolute = f"imap://alice%40example.test@{host}:{port}/Drafts;UIDVALIDITY={validity}/;UID={uid}"
    command = (
        f'APPEND INBOX CATENATE (URL "{absolute}") '.encode()
        + b"(\\Seen) CATENATE (TEXT "
        + literal(b"Subject: ")
        + f' URL "/Drafts/;UID={uid}/;SECTION=1/;PARTIAL=0.5" TEXT '.encode()
        + literal(b"\r\n\r\nbody\r\n")
        + b") "
        + literal(b"Subject: plain\r\n\r\nx\r\n")
    )
    _, done = exchange(client, command)
    client.logout()
    assert re.match(rb"OK \[APPENDUID \d+ 1:3\]", done), done
    assert folder_messages("INBOX") == [
        DRAFT,
        b"Subject: First\r\n\r\nbody\r\n",
        b"Subject: plain\r\n\r\nx\r\n",
    ]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("/Drafts;UIDVALIDITY=1/;UID={uid}", b"UIDVALIDITY"),
        ("/Drafts/;UID=99", b"no such message"),
        ("/Nowhere/;UID={uid}", b"no such mailbox"),
        ("/Drafts", b"no message"),
        ("imap://bob%40example.test@localhost/Drafts/;UID={uid}", b"another user"),
        ("imap://alice%40example.test@elsewhere.test/Drafts/;UID={uid}", b"another server"),
        ("imap://localhost/Drafts/;UID={uid}", b"no user"),
        ("/Drafts/;UID={uid}/;URLAUTH=anonymous:internal:abc", b"URLAUTH"),
        ("/Drafts?SUBJECT%20x", b"not a message URL"),
        ("/Drafts/;UID={uid}/;SECTION=1.BOGUS", b"bad section"),
        ("/Drafts/;UID=0", b"UID must be"),
        ("/Drafts/;UID=99999999999", b"UID must be"),
        ("/%FF%FE/;UID={uid}", b"UTF-8"),
        ("/Drafts/;SECTION=1/;UID={uid}", b"unexpected"),
        ("/..%2F..%2FDrafts/;UID={uid}", b"no such mailbox"),
        ("/Drafts%00/;UID={uid}", b"no such mailbox"),
        ("/Drafts/;UID={uid}/;PARTIAL=x", b"bad PARTIAL"),
    ],
)
def test_bad_urls_fail_with_badurl_and_store_nothing(session, imap, url, why):
    make_mailbox(session)
    client = logged_in(imap)
    _, uid = saved_draft(client)
    url = url.format(uid=uid)
    command = (
        b"APPEND Drafts CATENATE (TEXT "
        + literal(b"Subject: x\r\n\r\n")
        + f' URL "{url}")'.encode()
        + b" "
        + literal(b"Subject: second\r\n\r\n")
    )
    _, done = exchange(client, command)
    client.logout()
    assert done.startswith(b"NO [BADURL "), done
    assert why in done, done
    assert len(folder_messages()) == 1  # only the first draft: the MULTIAPPEND stored nothing


def test_catenate_counts_toward_quota_and_the_size_limit(session, imap):
    mailbox = make_mailbox(session)
    mailbox.quota_bytes = 1500
    session.commit()
    client = logged_in(imap)
    _, uid = saved_draft(client)
    url = f' URL "/Drafts/;UID={uid}"'.encode()
    # Each copy of the draft is ~350 octets: three fit, a fourth does not.
    _, done = exchange(client, b"APPEND Drafts CATENATE (" + url[1:] + url + b")")
    _, over = exchange(client, b"APPEND Drafts CATENATE (" + url[1:] + url + url + b")")
    # Bigger than APPENDLIMIT (1 MB in tests) once joined: TOOBIG, whatever the quota.
    many = b"APPEND Drafts CATENATE (" + b" ".join([url[1:]] * 1000) + b")"
    mailbox.quota_bytes = 10**9
    session.commit()
    _, too_big = exchange(
        client,
        b"APPEND Drafts CATENATE (TEXT "
        + literal(b"x" * 700_000)
        + url
        + b" TEXT "
        + literal(b"y" * 400_000)
        + b")",
    )
    _, many_done = exchange(client, many)
    client.logout()
    assert done.startswith(b"OK [APPENDUID"), done
    assert over.startswith(b"NO [OVERQUOTA]"), over
    assert too_big.startswith(b"NO [TOOBIG]"), too_big
    assert many_done.startswith(b"OK"), many_done  # 1000 parts of 350 octets: within limits
    assert len(folder_messages()) == 3


def test_bad_catenate_forms_are_bad(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    commands = [
        b"APPEND Drafts CATENATE ()",
        b"APPEND Drafts CATENATE",
        b'APPEND Drafts CATENATE (TEXT "quoted")',
        b"APPEND Drafts CATENATE (URL)",
        b"APPEND Drafts CATENATE (BOGUS " + literal(b"x") + b")",
        b"APPEND Drafts CATENATE (TEXT " + literal(b"a\0b") + b")",  # NUL needs literal8
        b'APPEND Drafts CATENATE ((URL "/Drafts/;UID=1"))',
        b"APPEND Drafts CATENATE (" + b" ".join([b'URL "/Drafts/;UID=1"'] * 1001) + b")",
    ]
    answers = [exchange(client, command)[1].split(b" ")[0] for command in commands]
    _, nul_ok = exchange(
        client,
        b"APPEND Drafts CATENATE (TEXT ~{5+}\r\nS\0: x" + b" TEXT " + literal(b"\r\n\r\n") + b")",
    )
    client.logout()
    assert answers == [b"BAD"] * len(commands)
    assert nul_ok.startswith(b"OK"), nul_ok
    assert folder_messages() == [b"S\0: x\r\n\r\n"]


def test_catenate_of_a_message_in_the_selected_folder_through_imapclient(session, imap):
    make_mailbox(session)
    host, port = imap["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        assert b"CATENATE" in client.capabilities()
        client.append("Drafts", DRAFT, flags=[b"\\Draft"])
        client.select_folder("Drafts")
        [uid] = client.search("ALL")
        # imapclient has no CATENATE: the command goes out on its connection as is.
        raw = client._imap
        tag = raw._new_tag()
        raw.send(
            tag
            + f' APPEND Drafts CATENATE (URL "/Drafts/;UID={uid}/;SECTION=HEADER"'.encode()
            + b" TEXT {6+}\r\nbody\r\n)\r\n"
        )
        typ, data = raw._command_complete("APPEND", tag)
        assert typ == "OK", data
        client.noop()
        assert len(client.search("ALL")) == 2
    assert folder_messages()[1] == DRAFT.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\nbody\r\n"


def test_url_parser_units():
    parsed = parse_imap_url(
        "imap://Alice%40Example.test;AUTH=*@MX.provider.test/Caf%C3%A9;UIDVALIDITY=7/;UID=3"
        "/;SECTION=HEADER.FIELDS%20(Subject)/;PARTIAL=2",
        "alice@example.test",
        ["mx.provider.test"],
    )
    assert (parsed.mailbox, parsed.uidvalidity, parsed.uid) == ("Café", 7, 3)
    assert parsed.section == "HEADER.FIELDS (Subject)" and parsed.partial == (2, 2**32 - 1)
    for bad in ("", "/", "//x/;UID=1", "/INBOX/;UID=1\x00", "x" * 5000, "/INBOX/;UID=1/;UID=2"):
        with pytest.raises(BadUrl):
            parse_imap_url(bad, "alice@example.test", [])
