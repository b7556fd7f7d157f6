"""POP3 transaction and update states: listings, RETR/TOP bytes, stable UIDLs, DELE and QUIT,
quota, and the per-mailbox download action."""

from __future__ import annotations

import poplib
import socket

import pytest

from provider.extensions import db
from provider.mailstore import forget_cached_state
from provider.models import Mailbox
from provider.protocols.pop3 import top_form, uidl_for, wire_form
from provider.services import provisioning
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_mailbox
from tests.protocols.pop3.conftest import ADDRESS, deliver, message


def inbox():
    return mail_store().open(ADDRESS).folder("INBOX")


def uidls(client: poplib.POP3) -> list[str]:
    return [line.decode().split()[1] for line in client.uidl()[1]]


def used_bytes(session) -> int:
    session.expire_all()
    return session.scalar(db.select(Mailbox.used_bytes).where(Mailbox.address == ADDRESS))


# --- pure functions


def test_wire_form_gives_crlf_and_dot_stuffing():
    assert wire_form(b"a\nb\r\n.c\n..d") == b"a\r\nb\r\n..c\r\n...d\r\n"
    assert wire_form(b".first\r\n") == b"..first\r\n"
    assert wire_form(b"x\r\r\ny") == b"x\r\r\ny\r\n"


def test_top_form_gives_header_blank_line_and_n_body_lines():
    data = b"A: 1\nB: 2\n\nl1\nl2\n.l3\n"
    assert top_form(data, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert top_form(data, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
    assert top_form(data, 10) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n..l3\r\n"
    assert top_form(b"A: 1\r\n", 3) == b"A: 1\r\n"


def test_uidl_is_the_basename_or_a_fixed_length_digest():
    short = "1764290000.M1P2Q3.host,S=10,W=12"
    assert uidl_for(short) == short
    long = "1764290000.M1P2Q3." + "h" * 80 + ",S=10,W=12"
    digest = uidl_for(long)
    assert digest == uidl_for(long) and len(digest) == 49 and digest.startswith("~")
    for odd in ("with space", "caf\u00e9", ""):
        value = uidl_for(odd)
        assert 1 <= len(value) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in value)


# --- over the wire


def test_stat_list_uidl_retr_top_match_the_stored_messages(session, pop3):
    make_mailbox(session, protocols="pop3")
    deliver(session, message(1))
    # A file with bare LF line ends and a line starting with a dot, as another MDA may write.
    odd = b"Subject: odd\n\n.dotted\nplain\n"
    inbox().deliver(odd)
    client = pop3.login()
    count, total = client.stat()
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    assert count == 2 and total == sum(sizes)
    assert sizes == [len(message(1)), len(odd) + odd.count(b"\n")]
    response, lines, _ = client.retr(2)
    # poplib removes the dot-stuffing and the CRLFs: the lines are the message's own lines.
    assert lines == [b"Subject: odd", b"", b".dotted", b"plain"]
    assert response == b"+OK %d octets" % sizes[1]
    response, lines, _ = client.top(1, 0)
    assert lines[-1] == b"" and b"Subject: Message 1" in lines
    assert client.list(2).split()[1:] == [b"2", str(sizes[1]).encode()]
    assert client.uidl(1).split()[2].decode() == uidls(client)[0]
    assert all(1 <= len(u) <= 70 for u in uidls(client))
    client.quit()


def test_retr_bytes_on_the_wire_are_exact(session, pop3):
    make_mailbox(session, protocols="pop3")
    inbox().deliver(b"Subject: x\n\n.\nend")
    client = pop3.login()
    client._putcmd("RETR 1")
    wire = b""
    while not wire.endswith(b"\r\n.\r\n"):
        wire += client.sock.recv(65536)
    assert wire == b"+OK 20 octets\r\nSubject: x\r\n\r\n..\r\nend\r\n.\r\n"
    client.quit()


def test_message_number_errors(session, pop3):
    make_mailbox(session, protocols="pop3")
    deliver(session, message(1))
    client = pop3.login()
    for command in ("RETR 2", "RETR 0", "RETR x", "LIST 9", "DELE 5", "UIDL 3"):
        with pytest.raises(poplib.error_proto):
            client._shortcmd(command)
    client.dele(1)
    with pytest.raises(poplib.error_proto, match="deleted"):
        client.retr(1)
    assert client.stat() == (0, 0) and client.list()[1] == []
    client.rset()
    assert client.stat()[0] == 1
    client.quit()


def test_uidls_survive_restart_flag_renames_and_a_lost_uidlist(session, pop3):
    make_mailbox(session, protocols="imap,pop3")
    for number in range(3):
        deliver(session, message(number))
    client = pop3.login()
    before = uidls(client)
    client.quit()
    assert len(set(before)) == 3

    # IMAP reads one message: new/ → cur/ with a flag, a new file name but the same basename.
    folder = inbox()
    first = folder.messages()[0]
    folder.set_flags(first.uid, {"\\Seen", "\\Flagged"})
    pop3.stop()
    forget_cached_state()  # what a new process would know
    pop3.start()
    client = pop3.login()
    assert uidls(client) == before
    client.quit()

    # The UID list is lost: the store gives new UIDs (and UIDVALIDITY), the UIDLs do not change.
    old_uidvalidity = inbox().uidvalidity
    (mail_store().path_for(ADDRESS) / "dovecot-uidlist").unlink()
    forget_cached_state()
    assert inbox().uidvalidity != old_uidvalidity
    client = pop3.login()
    assert uidls(client) == before
    client.quit()


def test_dele_then_dropped_connection_loses_nothing(session, pop3):
    make_mailbox(session, protocols="pop3")
    for number in range(3):
        deliver(session, message(number))
    usage = used_bytes(session)
    client = pop3.login()
    before = uidls(client)
    client.dele(1)
    client.dele(3)
    client.sock.shutdown(socket.SHUT_RDWR)  # gone without QUIT
    client.close()
    pop3.stop()
    forget_cached_state()
    pop3.start()
    client = pop3.login()
    assert uidls(client) == before and client.stat()[0] == 3
    client.quit()
    assert len(inbox().messages()) == 3 and used_bytes(session) == usage


def test_dele_then_quit_removes_exactly_those_and_releases_their_quota(session, pop3):
    make_mailbox(session, protocols="pop3")
    stored = [deliver(session, message(number, "x" * (100 * number))) for number in range(4)]
    usage = used_bytes(session)
    client = pop3.login()
    before = uidls(client)
    client.dele(2)
    client.dele(4)
    assert client.quit().startswith(b"+OK")
    remaining = inbox().messages()
    assert [info.basename for info in remaining] == [stored[0].basename, stored[2].basename]
    assert used_bytes(session) == usage - stored[1].size - stored[3].size
    client = pop3.login()
    assert uidls(client) == [before[0], before[2]]
    client.quit()


def test_message_expunged_over_imap_during_the_session(session, pop3):
    make_mailbox(session, protocols="imap,pop3")
    deliver(session, message(1))
    deliver(session, message(2))
    client = pop3.login()
    folder = inbox()
    folder.expunge([folder.messages()[0].uid])
    with pytest.raises(poplib.error_proto, match="removed"):
        client.retr(1)
    assert client.retr(2)[1][-1] == b"Body text."
    client.dele(1)
    client.dele(2)
    assert client.quit().startswith(b"+OK")
    assert inbox().messages() == []


def set_protocols(session, protocols: str) -> None:
    mailbox = session.scalar(db.select(Mailbox).where(Mailbox.address == ADDRESS))
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, protocols=protocols)
    session.commit()


def set_action(session, action: str) -> None:
    mailbox = session.scalar(db.select(Mailbox).where(Mailbox.address == ADDRESS))
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, pop3_action=action)
    session.commit()


def test_keep_marks_downloads_read_for_imap_clients_only_when_imap_is_on(session, pop3):
    """Issue 5 §2: RETR marks a message \\Seen for the IMAP clients of a mailbox with both
    protocols; for a POP3-only mailbox "keep" changes nothing on the server (§5)."""
    make_mailbox(session, protocols="imap,pop3")
    deliver(session, message(1))
    deliver(session, message(2))
    client = pop3.login()
    client.retr(1)
    client.quit()
    assert ["\\Seen" in info.flags for info in inbox().messages()] == [True, False]
    set_protocols(session, "pop3")
    client = pop3.login()
    client.retr(2)
    client.quit()
    assert ["\\Seen" in info.flags for info in inbox().messages()] == [True, False]


def test_download_action_seen_marks_retrieved_messages_read_at_quit(session, pop3):
    make_mailbox(session, protocols="imap,pop3", pop3_action="seen")
    for number in range(3):
        deliver(session, message(number))
    inbox().set_flags(inbox().messages()[0].uid, {"\\Flagged"})
    client = pop3.login()
    client.retr(1)
    client.retr(2)
    client.top(3, 0)  # TOP is no download
    client.sock.shutdown(socket.SHUT_RDWR)  # no QUIT, no change
    client.close()
    assert all("\\Seen" not in info.flags for info in inbox().messages())

    forget_cached_state()
    client = pop3.login()
    before = uidls(client)
    client.retr(1)
    client.retr(2)
    client.quit()
    flags = [info.flags for info in inbox().messages()]
    assert flags == [{"\\Seen", "\\Flagged"}, {"\\Seen"}, set()]
    client = pop3.login()
    assert uidls(client) == before
    client.quit()


def test_download_action_archive_moves_retrieved_messages_without_changing_usage(session, pop3):
    make_mailbox(session, protocols="imap,pop3")
    set_action(session, "archive")
    stored = [deliver(session, message(number)) for number in range(3)]
    usage = used_bytes(session)
    client = pop3.login()
    client.retr(1)
    client.retr(3)
    client.dele(3)  # deleted wins over archived
    client.quit()
    assert [info.basename for info in inbox().messages()] == [stored[1].basename]
    archived = mail_store().open(ADDRESS).folder("Archive").messages()
    assert len(archived) == 1 and "\\Seen" in archived[0].flags
    assert archived[0].path.read_bytes() == message(0)
    assert used_bytes(session) == usage - len(message(2))
    client = pop3.login()
    assert client.stat()[0] == 1
    client.quit()


def test_policy_and_password_for_pop3_still_apply_with_a_download_action(session, pop3):
    make_mailbox(session, protocols="imap", pop3_action="archive")
    client = pop3.connect()
    client.user(ADDRESS)
    with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\]"):
        client.pass_(MAILBOX_PASSWORD)
    client.quit()
