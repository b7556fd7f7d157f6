"""MULTIAPPEND (RFC 3502) on real sockets: several messages in one APPEND, all or nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from imapclient import IMAPClient

from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.exchange import exchange, read_response_line
from tests.protocols.imap.test_session import connect, logged_in

ONE = b"From: a@b.test\r\nSubject: one\r\n\r\n1\r\n"
TWO = b"From: a@b.test\r\nSubject: two\r\n\r\n2\r\n"
THREE = b"From: a@b.test\r\nSubject: three\r\n\r\n3\r\n"


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def inbox_count() -> int:
    return len(mail_store().open("alice@example.test").folder("INBOX").messages())


def test_multiappend_stores_each_with_its_flags_and_date(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    assert b"MULTIAPPEND" in client.capability()[1][0].split()
    command = (
        b"APPEND INBOX (\\Seen) "
        + literal(ONE)
        + b' (\\Flagged $Work) "02-Mar-2024 08:00:00 -0500" '
        + literal(TWO)
        + b" "
        + literal(THREE)
    )
    untagged, done = exchange(client, command)
    assert done.startswith(b"OK [APPENDUID ") and done.split(b"]")[0].endswith(b" 1:3"), done
    client.select("INBOX")
    untagged, _ = exchange(
        client, "FETCH 1:3 (FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
    )
    client.logout()
    flags = [
        set(line.split(b"FLAGS (")[1].split(b")")[0].split()) - {b"\\Recent"} for line in untagged
    ]
    assert flags == [{b"\\Seen"}, {b"\\Flagged", b"$Work"}, set()]
    assert b'"02-Mar-2024 08:00:00 -0500"' in untagged[1]
    assert [line.rsplit(b"Subject: ", 1)[1][:5] for line in untagged] == [
        b"one\r\n",
        b"two\r\n",
        b"three",
    ]


def test_multiappend_is_all_or_nothing_over_quota(session, imap):
    # Two 400-octet messages fit in a 1000-octet quota, a third does not.
    mailbox = make_mailbox(session)
    mailbox.quota_bytes = 1000
    session.commit()
    client = logged_in(imap)
    big = b"Subject: big\r\n\r\n" + b"x" * 400 + b"\r\n"
    _, done = exchange(client, b"APPEND INBOX " + literal(big) + b" " + literal(big))
    assert done.startswith(b"OK [APPENDUID")
    _, done = exchange(client, b"APPEND INBOX " + literal(ONE) + b" " + literal(big))
    assert done.startswith(b"NO [OVERQUOTA]")
    client.logout()
    assert inbox_count() == 2


def test_multiappend_bad_forms_store_nothing(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    commands = [
        b"APPEND INBOX " + literal(ONE) + b" (\\Seen)",  # flags with no message after
        b"APPEND INBOX " + literal(ONE) + b' "01-Jan-2024 00:00:00 +0000"',
        b"APPEND INBOX " + literal(ONE) + b" (\\Bogus) " + literal(TWO),
        b"APPEND INBOX " + literal(ONE) + b' "not a date" ' + literal(TWO),
        b'APPEND INBOX "a quoted message"',
        b"APPEND INBOX (\\Seen)",
        b"APPEND INBOX " + literal(ONE) + b" ATOM",
        b"APPEND INBOX " + literal(ONE) + b" (\\Seen) (\\Seen) " + literal(TWO),
    ]
    answers = [exchange(client, command)[1].split(b" ")[0] for command in commands]
    client.logout()
    assert answers == [b"BAD"] * len(commands)
    assert inbox_count() == 0


def test_too_many_messages_in_one_append(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    body = b"".join(b" " + literal(b"x") for _ in range(999))
    # The 1001st literal is synchronizing: refused before the server asks for it.
    client.send(b"a APPEND INBOX " + literal(b"x") + body + b" {1}\r\n")
    assert read_response_line(client).startswith(b"a NO [LIMIT]")
    client.send(b"b NOOP\r\n")
    assert read_response_line(client).startswith(b"b OK")
    client.logout()
    assert inbox_count() == 0


def test_messages_of_one_append_too_large_together(session, imap):
    # MAX_MESSAGE_MB is 1 here: each message may have 1 MiB, one APPEND 2 MiB in all.
    make_mailbox(session)
    client = connect(imap)
    client.login("alice@example.test", MAILBOX_PASSWORD)
    part = b"Subject: p\r\n\r\n" + b"y" * 900_000
    client.send(b"a APPEND INBOX " + literal(part) + b" " + literal(part) + b" {900000}\r\n")
    assert read_response_line(client).startswith(b"a NO [TOOBIG]")
    # Non-synchronizing, the server cannot refuse the octets any more: it says BYE.
    client.send(b"b APPEND INBOX " + literal(part) + b" " + literal(part) + b" {900000+}\r\n")
    assert read_response_line(client).startswith(b"* BYE [TOOBIG]")
    client.shutdown()


def test_imapclient_multiappend(session, imap):
    make_mailbox(session)
    host, port = imap["imap"]
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    with IMAPClient(host, port=port, ssl=False, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        typ, data = client.multiappend(
            "Drafts", [ONE, {"msg": TWO, "flags": [b"\\Draft"], "date": when}]
        )
        assert typ == "OK" and data[0].startswith(b"[APPENDUID ") and b" 1:2]" in data[0]
        client.select_folder("Drafts")
        fetched = client.fetch([1, 2], ["FLAGS", "INTERNALDATE"])
        client.logout()
    assert len(fetched) == 2
    assert b"\\Draft" in fetched[2][b"FLAGS"]
    moment = fetched[2][b"INTERNALDATE"]  # IMAPClient gives local naive time
    assert moment.astimezone(UTC) == when.astimezone(UTC)
