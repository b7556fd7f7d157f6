"""LIST-STATUS (RFC 5819) and STATUS=SIZE (RFC 8438) on real sockets."""

from __future__ import annotations

from pathlib import Path

from imapclient import IMAPClient

from provider.mailstore import FolderInfo
from provider.protocols.imap.commands import list_lines, pattern_regex
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.exchange import exchange
from tests.protocols.imap.test_session import logged_in

SMALL = b"From: a@b.test\r\nSubject: one\r\n\r\nHi.\r\n"
BARE_LF = b"From: a@b.test\nSubject: two\n\nBare line ends.\n"


def test_list_return_status_follows_each_selectable_mailbox(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.append("INBOX", None, None, SMALL)
    client.append("INBOX", "(\\Seen)", None, SMALL)
    client.create("Projects/Alpha")
    caps = client.capability()[1][0].split()
    assert b"LIST-STATUS" in caps and b"STATUS=SIZE" in caps
    untagged, done = exchange(client, 'LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN SIZE))')
    assert done.startswith(b"OK")
    # Every LIST line of a folder is followed directly by its STATUS line.
    for index, line in enumerate(untagged):
        if line.startswith(b"* LIST"):
            name = line.rsplit(b" ", 1)[1]
            assert (
                untagged[index + 1] == b"* STATUS " + name + untagged[index + 1][9 + len(name) :]
            ), untagged
    statuses = {
        line.split(b" (")[0][9:]: line.split(b" (", 1)[1] for line in untagged if b"STATUS" in line
    }
    assert statuses[b"INBOX"] == b"MESSAGES 2 UNSEEN 1 SIZE %d)" % (2 * len(SMALL))
    assert statuses[b"Projects/Alpha"] == b"MESSAGES 0 UNSEEN 0 SIZE 0)"
    assert b"Trash" in statuses
    client.logout()


def test_list_status_skips_non_existent_and_child_info_only_mailboxes(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.create("foo/bar")
    client.subscribe("foo/bar")
    client.unsubscribe("foo")
    client.subscribe("gone")  # subscribed, never created: \NonExistent, no STATUS
    untagged, done = exchange(
        client, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (STATUS (MESSAGES))'
    )
    assert done.startswith(b"OK")
    assert untagged[-2:] == [
        b'* LIST (\\HasChildren) "/" foo ("CHILDINFO" ("SUBSCRIBED"))',
        b'* LIST (\\NonExistent \\Subscribed) "/" gone',
    ]
    status_names = [line.split()[2] for line in untagged if line.startswith(b"* STATUS")]
    assert status_names == [b"INBOX", b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash"]
    client.logout()


def test_status_size_counts_crlf_octets(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.append("INBOX", None, None, SMALL)
    # A message written by other software with bare LFs: SIZE is its size on the wire.
    mail_store().open("alice@example.test").folder("INBOX").deliver(BARE_LF)
    typ, data = client.status("INBOX", "(SIZE MESSAGES)")
    wire = len(BARE_LF.replace(b"\n", b"\r\n"))
    assert (typ, data) == ("OK", [b"INBOX (SIZE %d MESSAGES 2)" % (len(SMALL) + wire)])
    client.select("INBOX")
    typ, data = client.fetch("1:2", "(RFC822.SIZE)")
    sizes = [int(part.split(b"RFC822.SIZE ")[1].rstrip(b")")) for part in data]
    assert sum(sizes) == len(SMALL) + wire
    client.logout()


def test_bad_list_status_forms(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    commands = [
        'LIST "" "*" RETURN (STATUS)',
        'LIST "" "*" RETURN (STATUS ())',
        'LIST "" "*" RETURN (STATUS (BOGUS))',
        'LIST "" "*" RETURN (STATUS MESSAGES)',
        'LIST "" "*" RETURN (STATUS (MESSAGES) STATUS (UNSEEN))',
        'LIST "" "*" RETURN (STATUS ((MESSAGES)))',
        'LSUB "" "*" RETURN (STATUS (MESSAGES))',
        "STATUS INBOX (SIZE BOGUS)",
        "STATUS INBOX SIZE",
        "STATUS INBOX ()",
    ]
    answers = {}
    for command in commands:
        untagged, done = exchange(client, command)
        answers[command] = (done.split()[0], untagged)
    client.logout()
    assert answers == {command: (b"BAD", []) for command in commands}


def test_list_status_highestmodseq_enables_condstore(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.append("INBOX", None, None, SMALL)
    untagged, done = exchange(client, 'LIST "" "INBOX" RETURN (STATUS (HIGHESTMODSEQ))')
    assert done.startswith(b"OK")
    assert untagged[0].startswith(b"* LIST") and untagged[1].startswith(
        b"* STATUS INBOX (HIGHESTMODSEQ "
    )
    client.logout()


def test_imapclient_list_status_like_aerc(session, imap):
    """aerc and iOS Mail list the folders with their counts in one command."""
    make_mailbox(session)
    host, port = imap["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        client.append("INBOX", SMALL)
        assert b"LIST-STATUS" in client.capabilities()
        typ, _ = client._imap._simple_command(  # IMAPClient has no LIST-STATUS call
            "LIST", '""', '"*"', "RETURN", "(SPECIAL-USE STATUS (MESSAGES UIDNEXT))"
        )
        assert typ == "OK"
        statuses = client._imap.untagged_responses.pop("STATUS")
        listed = client._imap.untagged_responses.pop("LIST")
        assert len(statuses) == len(listed) and b"INBOX (MESSAGES 1 UIDNEXT 2)" in statuses
        client.logout()


def test_a_folder_gone_between_list_and_status_is_listed_noselect_without_status():
    folders = {
        name: FolderInfo(name, None, Path("/nonexistent") / name) for name in ("INBOX", "Old")
    }

    def status(name: str) -> bytes | None:
        return None if name == "Old" else b"* STATUS INBOX (MESSAGES 0)\r\n"

    lines = list_lines(folders, set(folders), [pattern_regex("", "*")], set(), set(), status)
    assert lines == [
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
        b"* STATUS INBOX (MESSAGES 0)\r\n",
        b'* LIST (\\HasNoChildren \\Noselect) "/" Old\r\n',
    ]
