"""The server through IMAPClient, the library many Python mail tools are built on."""

from __future__ import annotations

import ssl
from datetime import datetime

from imapclient import IMAPClient

from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox

MESSAGE = (
    b"From: Ann <ann@outside.test>\r\nTo: alice@example.test\r\nSubject: Quarterly report\r\n"
    b"Message-ID: <q1@outside.test>\r\nDate: Mon, 02 Feb 2026 10:00:00 +0000\r\n\r\n"
    b"Numbers attached.\r\n"
)


def test_imapclient_session_over_implicit_tls(session, imap):
    make_mailbox(session)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    host, port = imap["imaps"]
    with IMAPClient(host, port=port, ssl=True, ssl_context=context, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        assert b"IDLE" in client.capabilities() and b"MOVE" in client.capabilities()
        folders = {name: flags for flags, _delimiter, name in client.list_folders()}
        assert b"\\Sent" in folders["Sent"] and "INBOX" in folders
        assert client.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 0

        result = client.append(
            "INBOX", MESSAGE, flags=[b"$Important"], msg_time=datetime(2026, 2, 2)
        )
        assert b"APPENDUID" in result
        selected = client.select_folder("INBOX")
        assert selected[b"EXISTS"] == 1 and selected[b"UIDVALIDITY"] > 0

        [uid] = client.search(["SUBJECT", "quarterly", "UNSEEN"])
        fetched = client.fetch([uid], ["ENVELOPE", "RFC822.SIZE", "FLAGS", "BODY.PEEK[]"])[uid]
        assert fetched[b"ENVELOPE"].subject == b"Quarterly report"
        assert fetched[b"ENVELOPE"].from_[0].host == b"outside.test"
        assert fetched[b"RFC822.SIZE"] == len(MESSAGE) and fetched[b"BODY[]"] == MESSAGE
        assert b"$Important" in fetched[b"FLAGS"]

        client.add_flags([uid], [b"\\Seen"])
        assert client.search(["UNSEEN"]) == []
        client.move([uid], "Archive")
        assert client.search(["ALL"]) == []
        client.select_folder("Archive")
        assert len(client.search(["SEEN"])) == 1
        client.logout()
    archive = mail_store().open("alice@example.test").folder("Archive").messages()
    assert len(archive) == 1 and "\\Seen" in archive[0].flags


def test_imapclient_idle_sees_a_delivery(session, imap):
    make_mailbox(session)
    host, port = imap["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        client.select_folder("INBOX")
        client.idle()
        mail_store().open("alice@example.test").folder("INBOX").deliver(MESSAGE)
        responses = client.idle_check(timeout=5)
        client.idle_done()
        assert (1, b"EXISTS") in responses
        client.logout()
