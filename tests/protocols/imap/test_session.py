"""The IMAP server on real sockets, driven by imaplib."""

from __future__ import annotations

import asyncio
import imaplib
import socket
import ssl
import time

from provider.services import provisioning
from provider.services.mail_access import (
    FailureDelay,
    LoginTurns,
    guards,
    plaintext_login_allowed,
)
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_mailbox, wait_until

MESSAGE = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: Hello\r\n\r\nBody text.\r\n"


def connect(imap) -> imaplib.IMAP4:
    return imaplib.IMAP4(*imap["imap"], timeout=10)


def logged_in(imap, address="alice@example.test") -> imaplib.IMAP4:
    client = connect(imap)
    client.login(address, MAILBOX_PASSWORD)
    return client


def test_greeting_capabilities_and_loopback_rule(session, imap):
    client = connect(imap)
    assert b"[CAPABILITY IMAP4rev1" in client.welcome
    assert "STARTTLS" in client.capabilities and "AUTH=PLAIN" in client.capabilities
    client.logout()
    assert plaintext_login_allowed(False, "192.0.2.1") is False
    assert plaintext_login_allowed(False, "::1") and plaintext_login_allowed(True, "192.0.2.1")


def test_wrong_password_and_unknown_user_get_identical_answers(session, imap):
    make_mailbox(session)
    answers = []
    for user in ("alice@example.test", "nobody@example.test"):
        client = connect(imap)
        try:
            client.login(user, "wrong password")
        except imaplib.IMAP4.error as error:
            answers.append(str(error))
        client.logout()
    assert (
        answers[0] == answers[1] and "[AUTHENTICATIONFAILED] Authentication failed." in answers[0]
    )


def test_pop3_only_mailbox_is_refused_with_contactadmin(session, imap):
    make_mailbox(session, protocols="pop3")
    client = connect(imap)
    try:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        raise AssertionError("login should fail")
    except imaplib.IMAP4.error as error:
        assert "[CONTACTADMIN] IMAP access is not enabled" in str(error)
    client.logout()


def test_failure_delay_escalates_with_fake_clock():
    moment = [0.0]
    delay = FailureDelay(2, clock=lambda: moment[0])
    got = [delay.failed("192.0.2.7", "u", f"p{i}") for i in range(5)]
    assert got == [2, 4, 8, 15, 15]
    assert delay.failed("192.0.2.7", "u", "p4") == 15
    assert delay.failed("198.51.100.1", "u", "x") == 2


def test_starttls_discards_pipelined_commands(session, imap):
    make_mailbox(session)
    sock = socket.create_connection(imap["imap"], timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"a STARTTLS\r\nb LOGIN alice@example.test x\r\n")
    assert reader.readline().startswith(b"a OK")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(sock, server_hostname="localhost")
    tls.sendall(b"c CAPABILITY\r\n")
    tls_reader = tls.makefile("rb")
    lines = [tls_reader.readline(), tls_reader.readline()]
    assert lines[0].startswith(b"* CAPABILITY") and b"STARTTLS" not in lines[0]
    assert lines[1].startswith(b"c OK")
    tls.close()


def test_imaps_and_starttls_refused_there(session, imap):
    make_mailbox(session)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = imaplib.IMAP4_SSL(*imap["imaps"], ssl_context=context, timeout=10)
    tag = client._new_tag()
    client.send(tag + b" STARTTLS\r\n")
    assert client.readline().startswith(tag + b" BAD")
    client.login("alice@example.test", MAILBOX_PASSWORD)
    client.logout()


def test_bad_commands_before_login_end_the_session(session, imap):
    sock = socket.create_connection(imap["imap"], timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"a FOO\r\nb BAR\r\nc BAZ\r\n")
    lines = [reader.readline() for _ in range(4)]
    assert lines[3].startswith(b"* BYE")
    assert reader.readline() == b""
    sock.close()


def test_overlong_line_gets_bad_and_huge_literal_no_continuation(session, imap):
    sock = socket.create_connection(imap["imap"], timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"a NOOP " + b"x" * 200_000 + b"\r\nb NOOP\r\n")
    assert b"BAD" in reader.readline()
    assert reader.readline().startswith(b"b OK")
    sock.sendall(b"c LOGIN {999999999}\r\n")
    assert reader.readline().startswith(b"* BYE")
    sock.close()


def test_login_timeout_closes(session, imap, app):
    app.config["IMAP_LOGIN_TIMEOUT_SECONDS"] = 0.3
    sock = socket.create_connection(imap["imap"], timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    assert reader.readline().startswith(b"* BYE")
    assert reader.readline() == b""
    sock.close()


def test_select_append_fetch_store_search_expunge(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    typ, data = client.append("INBOX", None, None, MESSAGE)
    assert typ == "OK" and b"[APPENDUID " in data[0]
    typ, data = client.select("INBOX")
    assert data == [b"1"]
    assert client.untagged_responses.get("UIDVALIDITY")
    typ, data = client.fetch("1", "(RFC822.SIZE BODY.PEEK[HEADER.FIELDS (Subject)] FLAGS)")
    assert f"RFC822.SIZE {len(MESSAGE)}".encode() in data[0][0]
    assert data[0][1] == b"Subject: Hello\r\n\r\n"
    typ, data = client.fetch("1", "(BODY[]<0.4>)")
    assert data[0][1] == b"From" and b"BODY[]<0>" in data[0][0]
    typ, data = client.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]
    typ, data = client.search(None, "SUBJECT", "hello")
    assert data == [b"1"]
    typ, data = client.uid("SEARCH", "NOT", "SEEN")
    assert data == [b""]
    typ, data = client.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
    assert b'"Hello"' in data[0] and b'("text" "plain"' in data[0]
    client.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = client.expunge()
    assert data == [b"1"]
    client.logout()


def test_append_over_quota_is_refused(session, imap):
    mailbox = make_mailbox(session)
    mailbox.quota_bytes = 100
    session.commit()
    client = logged_in(imap)
    typ, data = client.append("INBOX", None, None, MESSAGE * 3)
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    typ, data = client.append("Nowhere", None, None, MESSAGE)
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    client.logout()


def test_folders_copy_move_quota(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    assert client.create("Work/Projects")[0] == "OK"
    typ, data = client.create("Work")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    typ, data = client.list()
    assert any(b'"Work/Projects"' in line or b"Work/Projects" in line for line in data)
    assert any(b"\\Sent" in line for line in data)
    client.append("INBOX", None, None, MESSAGE)
    client.select("INBOX")
    typ, data = client.copy("1", "Work")
    assert typ == "OK" and b"[COPYUID " in data[0]
    typ, data = client._simple_command("MOVE", "1", "Trash")
    assert typ == "OK"
    assert any(b"COPYUID" in line for line in client.untagged_responses.get("OK", []))
    typ, data = client.status("Work", "(MESSAGES UNSEEN)")
    assert b"MESSAGES 1" in data[0]
    # MOVE really moved: gone from INBOX (also for a fresh session), present in Trash.
    assert b"MESSAGES 0" in client.status("INBOX", "(MESSAGES)")[1][0]
    assert b"MESSAGES 1" in client.status("Trash", "(MESSAGES)")[1][0]
    other = logged_in(imap)
    assert other.select("INBOX")[1] == [b"0"]
    other.logout()
    typ, data = client.getquotaroot("INBOX")
    assert data[0] == [b'INBOX ""'] and data[1][0].startswith(b'"" (STORAGE ')
    typ, data = client.select("Nope")
    assert typ == "NO"
    client.logout()


def test_flags_and_deliveries_reach_other_sessions(session, imap):
    make_mailbox(session)
    first, second = logged_in(imap), logged_in(imap)
    first.append("INBOX", None, None, MESSAGE)
    first.select("INBOX")
    second.select("INBOX")
    first.store("1", "+FLAGS", "(\\Flagged)")
    second.noop()
    assert any(b"\\Flagged" in line for line in second.untagged_responses.get("FETCH", []))
    tag = second._new_tag()
    second.send(tag + b" IDLE\r\n")
    assert second.readline().startswith(b"+")
    mail_store().open("alice@example.test").folder("INBOX").deliver(MESSAGE)
    assert second.readline() == b"* 2 EXISTS\r\n"
    second.send(b"DONE\r\n")
    assert wait_until(lambda: second.readline().startswith(tag + b" OK"), timeout=5)
    first.logout()
    second.logout()


def test_suspended_mailbox_refused(session, imap):
    mailbox = make_mailbox(session)
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, status="suspended")
    session.commit()
    client = connect(imap)
    try:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        raise AssertionError("login should fail")
    except imaplib.IMAP4.error as error:
        assert "[CONTACTADMIN]" in str(error) and "suspended" in str(error)
    client.logout()


def test_suspending_a_mailbox_ends_its_live_sessions(session, imap, app):
    """RELIABILITY A6: an IDLE session gets BYE within ACCOUNT_RECHECK_SECONDS of the account
    being disabled; a busy one at its next command after that."""
    app.config["ACCOUNT_RECHECK_SECONDS"] = 0.2
    mailbox = make_mailbox(session)
    idler, busy = logged_in(imap), logged_in(imap)
    idler.select("INBOX")
    tag = idler._new_tag()
    idler.send(tag + b" IDLE\r\n")
    assert idler.readline().startswith(b"+")
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, status="suspended")
    session.commit()
    line = idler.readline()  # the socket timeout (10 s) bounds the wait
    assert line.startswith(b"* BYE") and b"suspended" in line
    assert idler.readline() == b""  # and the connection is closed
    reasons: list[str] = []

    def ended() -> bool:
        try:
            busy.noop()
        except imaplib.IMAP4.abort as error:
            reasons.append(str(error))
            return True
        return False

    assert wait_until(ended, timeout=5)
    assert "suspended" in reasons[0]
    idler.shutdown()
    busy.shutdown()


def test_taking_imap_away_ends_the_session_with_the_policy_reason(session, imap, app):
    app.config["ACCOUNT_RECHECK_SECONDS"] = 0
    mailbox = make_mailbox(session)
    client = logged_in(imap)
    assert client.noop()[0] == "OK"
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, protocols="pop3")
    session.commit()
    try:
        client.noop()
        raise AssertionError("the session should have ended")
    except imaplib.IMAP4.abort as error:
        assert "IMAP access is not enabled" in str(error)
    client.shutdown()


def test_login_turns_let_one_address_check_only_so_many_at_once():
    turns = LoginTurns(limit=2)
    inside = []
    most = []

    async def attempt(remote: str) -> None:
        async with turns.turn(remote):
            inside.append(remote)
            most.append(len(inside))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            inside.remove(remote)

    async def main() -> None:
        await asyncio.gather(*(attempt("192.0.2.7") for _ in range(6)), attempt("198.51.100.1"))

    asyncio.run(main())
    assert max(most) == 3  # two from 192.0.2.7 and the other address, never three from one
    assert not turns._turns and not turns._waiting  # nothing kept once everyone is done


def test_parallel_failed_logins_from_one_address_wait_for_each_other(session, imap, app):
    """With one login at a time per address, three parallel wrong passwords are answered one
    after another, each after its own escalating delay (0.2 + 0.4 + 0.8 s)."""
    shared = guards(app)
    shared.logins, shared.failures = LoginTurns(1), FailureDelay(0.2)
    make_mailbox(session)
    sockets = [socket.create_connection(imap["imap"], timeout=10) for _ in range(3)]
    readers = [sock.makefile("rb") for sock in sockets]
    for reader in readers:
        assert reader.readline().startswith(b"* OK")
    started = time.monotonic()
    for n, sock in enumerate(sockets):
        sock.sendall(b"a LOGIN alice@example.test wrong-password-%d\r\n" % n)
    for reader in readers:
        assert reader.readline().startswith(b"a NO [AUTHENTICATIONFAILED]")
    assert time.monotonic() - started >= 1.4
    for sock, reader in zip(sockets, readers, strict=True):
        reader.close()
        sock.close()
