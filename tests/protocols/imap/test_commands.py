"""IMAP commands on real sockets with imaplib: authentication, APPEND limits, folders, quota."""

from __future__ import annotations

import base64
import socket

from provider.models import Mailbox
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.test_session import MESSAGE, connect, logged_in

ADDRESS = "alice@example.test"
PLAIN = base64.b64encode(f"\0{ADDRESS}\0{MAILBOX_PASSWORD}".encode())


def raw_session(imap) -> tuple[socket.socket, object]:
    """A plain socket and a reader on it; closing the socket also closes the reader."""
    sock = socket.create_connection(imap["imap"], timeout=10)
    reader = sock.makefile("rb")
    sock.close()  # the reader keeps the connection open until it is closed
    assert reader.readline().startswith(b"* OK")
    return sock, reader


def raw_login(sock: socket.socket, reader) -> None:
    sock.sendall(b"l AUTHENTICATE PLAIN " + PLAIN + b"\r\n")
    assert reader.readline().startswith(b"l OK")


def used_bytes(session, mailbox: Mailbox) -> int:
    session.expire_all()
    return session.get(Mailbox, mailbox.id).used_bytes


def folder_files(name: str) -> list[str]:
    path = mail_store().open(ADDRESS).folder(name).path
    return sorted(p.name for sub in ("tmp", "new", "cur") for p in (path / sub).iterdir())


def test_authenticate_plain_with_initial_response(session, imap):
    make_mailbox(session)
    sock, reader = raw_session(imap)
    sock.sendall(b"a AUTHENTICATE PLAIN " + PLAIN + b"\r\n")
    line = reader.readline()
    assert line.startswith(b"a OK [CAPABILITY ") and b"APPENDLIMIT=" in line
    reader.close()


def test_authenticate_plain_with_continuation(session, imap):
    make_mailbox(session)
    client = connect(imap)
    typ, _ = client.authenticate("PLAIN", lambda _: f"\0{ADDRESS}\0{MAILBOX_PASSWORD}".encode())
    assert typ == "OK" and client.state == "AUTH"
    client.logout()


def test_authenticate_plain_bad_base64_is_refused(session, imap):
    make_mailbox(session)
    sock, reader = raw_session(imap)
    sock.sendall(b"a AUTHENTICATE PLAIN !!!notbase64\r\n")
    assert reader.readline().startswith(b"a BAD")
    sock.sendall(b"b AUTHENTICATE PLAIN\r\n")
    assert reader.readline().startswith(b"+")
    sock.sendall(b"%%%\r\n")
    assert reader.readline().startswith(b"b BAD")
    sock.sendall(b"c CAPABILITY\r\n")
    assert reader.readline().startswith(b"* CAPABILITY")
    assert reader.readline().startswith(b"c OK")
    reader.close()


def test_literal_plus_append_is_stored_without_continuation(session, imap):
    make_mailbox(session)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    sock.sendall(b"a APPEND INBOX (\\Flagged) {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
    line = reader.readline()
    assert line.startswith(b"a OK [APPENDUID "), line
    uid = int(line.split()[4].rstrip(b"]"))
    stored = mail_store().open(ADDRESS).folder("INBOX")
    assert stored.read(uid) == MESSAGE
    reader.close()


def test_append_over_appendlimit_gets_toobig_without_continuation(session, imap, app):
    app.config["MAX_MESSAGE_MB"] = 1 / 1024  # 1024 octets
    make_mailbox(session)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    sock.sendall(b"a APPEND INBOX {1025}\r\n")
    assert reader.readline().startswith(b"a NO [TOOBIG]")
    sock.sendall(b"b STATUS INBOX (MESSAGES)\r\n")
    assert b"MESSAGES 0" in reader.readline()
    assert reader.readline().startswith(b"b OK")
    reader.close()


def test_connection_limit_per_user_and_address(session, imap, app):
    from provider.services.mail_access import guards

    guards(app).imap_connections.limit = 2
    make_mailbox(session)
    first, second = logged_in(imap), logged_in(imap)
    third = connect(imap)
    typ, data = third._simple_command("LOGIN", ADDRESS, third._quote(MAILBOX_PASSWORD))
    assert typ == "NO" and b"[LIMIT]" in data[0]
    first.logout()
    # The slot is given back when the first session ends.
    assert wait_for_login(imap)
    second.logout()
    third.logout()


def wait_for_login(imap) -> bool:
    from tests.conftest import wait_until

    def try_login() -> bool:
        client = connect(imap)
        try:
            password = client._quote(MAILBOX_PASSWORD)
            return client._simple_command("LOGIN", ADDRESS, password)[0] == "OK"
        finally:
            client.logout()

    return wait_until(try_login, timeout=5)


def test_examine_is_read_only(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.append("INBOX", None, None, MESSAGE)
    typ, data = client.select("INBOX", readonly=True)
    assert typ == "OK" and "READ-ONLY" in client.untagged_responses
    typ, data = client.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "NO" and b"READ-ONLY" in data[0]
    typ, data = client.fetch("1", "(BODY[])")
    assert data[0][1] == MESSAGE
    typ, data = client.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    client.logout()


def test_close_expunges_deleted_and_releases_quota_unselect_does_not(session, imap):
    mailbox = make_mailbox(session)
    client = logged_in(imap)
    for _ in range(2):
        client.append("INBOX", "(\\Deleted)", None, MESSAGE)
    client.select("INBOX")
    assert client.unselect()[0] == "OK"
    after_unselect = client.status("INBOX", "(MESSAGES)")[1], used_bytes(session, mailbox)
    client.select("INBOX")
    assert client.close()[0] == "OK"
    after_close = client.status("INBOX", "(MESSAGES)")[1], used_bytes(session, mailbox)
    client.logout()
    assert after_unselect == ([b"INBOX (MESSAGES 2)"], 2 * len(MESSAGE))
    assert after_close == ([b"INBOX (MESSAGES 0)"], 0)


def test_uid_expunge_removes_only_the_given_uids(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    uids = []
    for _ in range(3):
        typ, data = client.append("INBOX", "(\\Deleted)", None, MESSAGE)
        uids.append(int(data[0].split()[2].rstrip(b"]")))
    client.select("INBOX")
    typ, _ = client.uid("EXPUNGE", str(uids[1]))
    assert typ == "OK" and client.untagged_responses.pop("EXPUNGE") == [b"2"]
    typ, data = client.uid("SEARCH", "ALL")
    assert data == [f"{uids[0]} {uids[2]}".encode()]
    client.logout()


def test_rename_moves_children_and_delete_removes_folder(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.create("Work/Projects")
    client.append("Work/Projects", None, None, MESSAGE)
    assert client.rename("Work", "Jobs")[0] == "OK"
    typ, data = client.list('""', "*")
    names = b" ".join(data)
    assert b"Jobs/Projects" in names and b"Work" not in names
    assert b"MESSAGES 1" in client.status("Jobs/Projects", "(MESSAGES)")[1][0]
    assert client.delete("Jobs/Projects")[0] == "OK"
    typ, data = client.list('""', "Jobs*")
    assert b"Jobs/Projects" not in b" ".join(data)
    assert client.select("Jobs/Projects")[0] == "NO"
    typ, data = client.delete("Nowhere")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    client.logout()


def test_subscribe_unsubscribe_lsub(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    client.create("News")
    client.create("Lists")
    assert client.unsubscribe("News")[0] == "OK"
    typ, data = client.lsub('""', "*")
    listed = b" ".join(data)
    assert b"Lists" in listed and b"News" not in listed
    assert client.subscribe("News")[0] == "OK"
    typ, data = client.lsub('""', "News")
    assert typ == "OK" and len(data) == 1 and data[0].endswith(b"News")
    client.logout()


def test_namespace_id_and_getquota(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    typ, data = client.namespace()
    assert typ == "OK" and data == [b'(("" "/")) NIL NIL']
    typ, data = client.xatom("ID", "NIL")
    assert typ == "OK" and client.untagged_responses.pop("ID") == [b'("name" "provider")']
    client.append("INBOX", None, None, MESSAGE * 40)
    typ, data = client.getquota('""')
    assert typ == "OK" and data == [f'"" (STORAGE {len(MESSAGE) * 40 // 1024} 8388608)'.encode()]
    typ, data = client.getquota("other")
    assert typ == "NO"
    client.logout()


def test_copy_that_breaks_quota_leaves_target_and_usage_unchanged(session, imap):
    mailbox = make_mailbox(session)
    client = logged_in(imap)
    for _ in range(10):
        client.append("INBOX", None, None, MESSAGE)
    client.create("Archive")
    used = used_bytes(session, mailbox)
    # Room for five more copies but not the sixth (RELIABILITY P6).
    mailbox = session.get(Mailbox, mailbox.id)
    mailbox.quota_bytes = used + 5 * len(MESSAGE) + len(MESSAGE) // 2
    session.commit()
    client.select("INBOX")
    typ, data = client.copy("1:10", "Archive")
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    assert client.status("Archive", "(MESSAGES)")[1] == [b"Archive (MESSAGES 0)"]
    assert used_bytes(session, mailbox) == used
    assert folder_files("Archive") == []
    typ, data = client.copy("1:5", "Archive")
    assert typ == "OK" and b"[COPYUID " in data[0]
    client.logout()


def test_internaldate_keeps_the_zone_it_was_appended_with(session, imap):
    """The date a client gave stays the date it sees, and searches by (imaptest search-intdate,
    RFC 3501 §6.4.4: dates disregard time and zone)."""
    make_mailbox(session)
    client = logged_in(imap)
    client.create("Other")
    for stamp in ('"25-Mar-2007 00:30:00 +0200"', '"24-Mar-2007 23:30:00 -0500"'):
        assert client.append("INBOX", None, stamp, MESSAGE)[0] == "OK"
    client.select("INBOX")
    _, data = client.fetch("1:2", "(INTERNALDATE)")
    assert b'"25-Mar-2007 00:30:00 +0200"' in data[0] and b'"24-Mar-2007 23:30:00 -0500"' in data[1]
    assert client.search(None, "ON", "25-Mar-2007") == ("OK", [b"1"])
    assert client.search(None, "BEFORE", "25-Mar-2007") == ("OK", [b"2"])
    assert client.copy("1", "Other")[0] == "OK"
    client.select("Other")
    assert b"+0200" in client.fetch("1", "(INTERNALDATE)")[1][0]
    client.logout()


MULTIPART = (
    b"From: =?utf-8?q?J=C3=B6rg?= <j@example.test>\r\nTo: a@x.test, (c) B <b@y.test>\r\n"
    b"Cc: g: c@z.test;\r\nSubject: parts\r\nDate: 1 Feb 2024 10:00 +0100\r\n"
    b"Message-ID: <m1@x.test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--b\r\nContent-Type: application/pdf\r\n\r\n" + b"x" * 40_000 + b"\r\n--b--\r\n"
)


def test_fetch_envelope_alone_reads_the_header_and_never_parses_the_body(
    session, imap, monkeypatch
):
    """A client's message list (ENVELOPE, FLAGS …) needs the header block only; the answer is
    the one the full parse gives, which ENVELOPE with BODYSTRUCTURE still uses."""
    from provider.mailstore import message

    make_mailbox(session, ADDRESS)
    client = logged_in(imap)
    client.append("INBOX", None, None, MULTIPART)
    client.select("INBOX")
    real_parse = message.parse_message

    def no_parse(data: bytes) -> message.ParsedMessage:
        raise AssertionError("the whole message was parsed for ENVELOPE")

    monkeypatch.setattr(message, "parse_message", no_parse)
    status, alone = client.uid("FETCH", "1:*", "(UID FLAGS ENVELOPE)")
    assert status == "OK"
    monkeypatch.setattr(message, "parse_message", real_parse)
    status, with_structure = client.uid("FETCH", "1:*", "(UID FLAGS ENVELOPE BODYSTRUCTURE)")
    assert status == "OK"
    envelope = alone[0][alone[0].index(b"ENVELOPE") :]
    assert envelope.startswith(b'ENVELOPE ("1 Feb 2024 10:00 +0100" "parts" ')
    assert envelope[:-1] in with_structure[0]
    assert b'((NIL NIL "g" NIL) (NIL NIL "c" "z.test") (NIL NIL NIL NIL))' in envelope  # group
    client.logout()
