"""The POP3 server on real sockets, driven by poplib: login, policy, TLS, limits, timeouts."""

from __future__ import annotations

import base64
import poplib
import socket
import subprocess
import sys
import threading
import time

import pytest

from provider.protocols.pop3 import BAD_BEFORE_LOGIN, LOCK_FILE, MAX_LINE, MaildropLock
from provider.services import mail_access, provisioning
from provider.services.mail_access import Guards
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_mailbox, wait_until
from tests.protocols.pop3.conftest import ADDRESS, deliver, insecure_context, message


def error_of(call, *args) -> str:
    """The -ERR line a poplib call got (it must fail)."""
    with pytest.raises(poplib.error_proto) as caught:
        call(*args)
    return caught.value.args[0].decode()


def raw(pop3, name: str = "pop3") -> tuple[socket.socket, object]:
    sock = socket.create_connection(pop3.bound[name], timeout=10)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"+OK")
    return sock, reader


def test_greeting_and_capabilities_before_and_after_login(session, pop3):
    make_mailbox(session, protocols="pop3")
    client = pop3.connect()
    assert client.getwelcome().startswith(b"+OK")
    capabilities = client.capa()
    for word in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"):
        assert word in capabilities
    assert capabilities["SASL"] == ["PLAIN"] and capabilities["IMPLEMENTATION"] == ["provider"]
    client.user(ADDRESS)
    client.pass_(MAILBOX_PASSWORD)
    after = client.capa()
    assert "UIDL" in after and "STLS" not in after and "USER" not in after
    client.quit()


def test_user_pass_and_auth_plain_both_log_in(session, pop3):
    make_mailbox(session, protocols="pop3")
    client = pop3.login()
    assert client.stat() == (0, 0)
    client.quit()

    sock, reader = raw(pop3)
    token = base64.b64encode(f"\0{ADDRESS}\0{MAILBOX_PASSWORD}".encode())
    sock.sendall(b"AUTH PLAIN " + token + b"\r\n")
    assert reader.readline().startswith(b"+OK")
    sock.sendall(b"QUIT\r\n")
    assert reader.readline().startswith(b"+OK")
    reader.close()
    sock.close()

    # Without an initial response the server asks for it with "+ " (RFC 5034 §4).
    sock, reader = raw(pop3)
    sock.sendall(b"AUTH PLAIN\r\n")
    assert reader.readline() == b"+ \r\n"
    sock.sendall(b"*\r\n")
    assert reader.readline().startswith(b"-ERR")
    sock.sendall(b"AUTH PLAIN\r\n")
    assert reader.readline() == b"+ \r\n"
    sock.sendall(token + b"\r\n")
    assert reader.readline().startswith(b"+OK")
    reader.close()
    sock.close()


def test_wrong_password_and_unknown_user_get_identical_answers(session, pop3):
    make_mailbox(session, protocols="pop3")
    answers = []
    for user in (ADDRESS, "nobody@example.test", "nobody@elsewhere.test"):
        client = pop3.connect()
        client.user(user)
        answers.append(error_of(client.pass_, "wrong password"))
        client.quit()
    assert answers == ["-ERR [AUTH] Authentication failed."] * 3
    sock, reader = raw(pop3)
    token = base64.b64encode(b"\0nobody@example.test\0wrong password")
    sock.sendall(b"AUTH PLAIN " + token + b"\r\n")
    assert reader.readline() == b"-ERR [AUTH] Authentication failed.\r\n"
    reader.close()
    sock.close()


def test_imap_only_mailbox_is_refused_with_sys_perm_after_the_right_password(session, pop3):
    make_mailbox(session, protocols="imap")
    client = pop3.connect()
    client.user(ADDRESS)
    assert error_of(client.pass_, "wrong password") == "-ERR [AUTH] Authentication failed."
    client.user(ADDRESS)
    assert error_of(client.pass_, MAILBOX_PASSWORD) == (
        "-ERR [SYS/PERM] POP3 access is not enabled for this mailbox; contact your provider"
    )
    client.quit()


def test_suspended_mailbox_has_its_own_reason(session, pop3):
    mailbox = make_mailbox(session, protocols="imap,pop3")
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, status="suspended")
    session.commit()
    client = pop3.connect()
    client.user(ADDRESS)
    assert error_of(client.pass_, MAILBOX_PASSWORD) == (
        "-ERR [SYS/PERM] This mailbox is suspended; contact your provider"
    )
    client.quit()


def test_plaintext_login_is_refused_off_loopback_until_stls(session, pop3, monkeypatch):
    make_mailbox(session, protocols="pop3")
    assert mail_access.plaintext_login_allowed(False, "192.0.2.1") is False
    # Make the server treat this loopback client as a remote one.
    monkeypatch.setattr(mail_access, "is_loopback", lambda peer: False)
    client = pop3.connect()
    capabilities = client.capa()
    assert "USER" not in capabilities and "SASL" not in capabilities and "STLS" in capabilities
    assert error_of(client.user, ADDRESS).startswith("-ERR [AUTH] Plaintext")
    client.stls(insecure_context())
    capabilities = client.capa()
    assert "USER" in capabilities and "STLS" not in capabilities
    client.user(ADDRESS)
    client.pass_(MAILBOX_PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


def test_stls_discards_commands_pipelined_in_plaintext(session, pop3):
    make_mailbox(session, protocols="pop3")
    sock, reader = raw(pop3)
    sock.sendall(f"STLS\r\nUSER {ADDRESS}\r\n".encode())
    assert reader.readline().startswith(b"+OK")
    tls = insecure_context().wrap_socket(sock, server_hostname="localhost")
    tls_reader = tls.makefile("rb")
    # Had the plaintext USER run, PASS would now log in.
    tls.sendall(f"PASS {MAILBOX_PASSWORD}\r\n".encode())
    assert tls_reader.readline().startswith(b"-ERR Send USER first")
    tls.sendall(b"STLS\r\n")
    assert tls_reader.readline().startswith(b"-ERR TLS is already active")
    tls_reader.close()
    tls.close()
    reader.close()


def test_pop3s_is_implicit_tls_and_refuses_stls(session, pop3):
    make_mailbox(session, protocols="pop3")
    client = pop3.connect_ssl()
    assert "STLS" not in client.capa()
    assert error_of(client._shortcmd, "STLS").startswith("-ERR")
    client.user(ADDRESS)
    client.pass_(MAILBOX_PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


def test_second_session_gets_in_use_until_the_first_ends(session, pop3):
    make_mailbox(session, protocols="pop3")
    first = pop3.login()
    second = pop3.connect()
    second.user(ADDRESS)
    assert error_of(second.pass_, MAILBOX_PASSWORD).startswith("-ERR [IN-USE]")
    second.quit()
    # The first session dies without QUIT: the lock goes with it.
    first.sock.close()
    first.file.close()

    def can_log_in() -> bool:
        try:
            pop3.login().quit()
        except poplib.error_proto:
            return False
        return True

    assert wait_until(can_log_in)


def test_lock_held_by_another_process_gives_in_use_and_dies_with_it(session, pop3, app):
    make_mailbox(session, protocols="pop3")
    lock_path = mail_store().path_for(ADDRESS) / LOCK_FILE
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys\n"
            f"f = open({str(lock_path)!r}, 'a')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            client = pop3.connect()
            client.user(ADDRESS)
            assert error_of(client.pass_, MAILBOX_PASSWORD).startswith("-ERR [IN-USE]")
            client.quit()
        finally:
            holder.kill()  # a process that dies: the kernel drops its flock
    client = pop3.login()
    client.quit()


def test_connection_limit_per_user_and_address(session, pop3, app):
    make_mailbox(session, protocols="pop3")
    app.config["POP3_MAX_CONNECTIONS_PER_USER_IP"] = 0
    app.extensions["mail_access_guards"] = Guards(app)
    client = pop3.connect()
    client.user(ADDRESS)
    assert error_of(client.pass_, MAILBOX_PASSWORD) == (
        "-ERR [IN-USE] Maximum number of connections from user+IP exceeded"
    )
    client.quit()


def test_bad_commands_before_login_end_the_session(session, pop3):
    sock, reader = raw(pop3)
    sock.sendall(b"FOO\r\nSTAT\r\nBAR\r\n")
    lines = [reader.readline() for _ in range(BAD_BEFORE_LOGIN + 1)]
    assert all(line.startswith(b"-ERR") for line in lines)
    assert b"Too many invalid commands" in lines[-1]
    assert reader.readline() == b""
    reader.close()
    sock.close()


def test_overlong_line_is_refused_and_skipped_and_8192_octets_are_fine(session, pop3):
    sock, reader = raw(pop3)
    sock.sendall(b"USER " + b"x" * 8192 + b"\r\n")
    assert reader.readline().startswith(b"+OK")
    chunk = b"y" * MAX_LINE
    sock.sendall(b"USER ")
    for _ in range(64):  # 1 MB without a line end: refused while it is still arriving
        sock.sendall(chunk)
    assert reader.readline() == b"-ERR Line too long\r\n"
    sock.sendall(b"\r\nCAPA\r\n")
    assert reader.readline().startswith(b"+OK Capability")
    reader.close()
    sock.close()


def test_login_timeout_and_autologout_close_the_connection(session, pop3, app):
    make_mailbox(session, protocols="pop3")
    app.config["POP3_LOGIN_TIMEOUT_SECONDS"] = 0.3
    sock, reader = raw(pop3)
    assert reader.readline().startswith(b"-ERR Autologout")
    assert reader.readline() == b""
    reader.close()
    sock.close()

    app.config["POP3_LOGIN_TIMEOUT_SECONDS"] = 30
    app.config["POP3_AUTOLOGOUT_SECONDS"] = 0.3
    client = pop3.login()
    assert client.file.readline().startswith(b"-ERR Autologout")
    assert client.file.readline() == b""
    client.close()
    # The lock was released with the session.
    assert wait_until(lambda: _logs_in(pop3))


def _logs_in(pop3) -> bool:
    try:
        client = pop3.login()
    except poplib.error_proto:
        return False
    client.quit()
    return True


def test_commands_out_of_state_are_refused(session, pop3):
    make_mailbox(session, protocols="pop3")
    sock, reader = raw(pop3)
    sock.sendall(b"RETR 1\r\nPASS x\r\n")
    assert reader.readline().startswith(b"-ERR RETR is not allowed")
    assert reader.readline().startswith(b"-ERR Send USER first")
    reader.close()
    sock.close()
    client = pop3.login()
    assert error_of(client.user, ADDRESS).startswith("-ERR USER is not allowed")
    client.quit()


def test_failed_login_is_delayed_and_the_penalty_is_shared_with_imap(session, pop3, app):
    make_mailbox(session, protocols="pop3")
    app.config["LOGIN_FAILURE_DELAY_SECONDS"] = 0.3
    guards = app.extensions["mail_access_guards"] = Guards(app)
    client = pop3.connect()
    client.user(ADDRESS)
    started = time.monotonic()
    error_of(client.pass_, "wrong password")
    assert time.monotonic() - started >= 0.3
    client.quit()
    # The same table IMAP uses: the next failure from this address waits twice as long.
    assert guards.failures.failed("127.0.0.1", ADDRESS, "another guess") == 0.6


def test_shutdown_with_a_session_open_deletes_nothing_and_frees_the_mailbox(session, pop3):
    make_mailbox(session, protocols="pop3")
    deliver(session, message(1))
    client = pop3.login()
    client.dele(1)
    pop3.stop()
    assert client.file.readline() == b"-ERR server shutting down\r\n"
    assert client.file.readline() == b""  # the server closed the connection
    client.close()
    pop3.start()
    client = pop3.login()
    assert client.stat()[0] == 1
    client.quit()


def test_mailbox_is_unlocked_before_quit_is_answered(session, pop3, monkeypatch):
    make_mailbox(session, protocols="pop3")
    released = []
    original = MaildropLock.release

    def slow_release(lock: MaildropLock) -> None:
        # A slow unlock widens the window in which a client that reconnects at once (it has
        # its +OK) would find its own old session still holding the mailbox.
        threading.Event().wait(0.2)
        original(lock)
        released.append(lock.key)

    monkeypatch.setattr(MaildropLock, "release", slow_release)
    client = pop3.login()
    client.quit()
    assert len(released) == 1
    pop3.login().quit()


def test_suspending_a_mailbox_ends_its_pop3_session_without_deleting(session, pop3, app):
    """RELIABILITY A6, as for IMAP: the next command after ACCOUNT_RECHECK_SECONDS gets the
    reason and the connection ends, without the UPDATE state (a DELE is not carried out)."""
    app.config["ACCOUNT_RECHECK_SECONDS"] = 0
    mailbox = make_mailbox(session, protocols="pop3")
    deliver(session, message(1))
    client = pop3.login()
    client.dele(1)
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, status="suspended")
    session.commit()
    with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\].*suspended"):
        client.stat()
    assert client.file.readline() == b""  # closed
    client.close()
    assert len(mail_store().open(ADDRESS).folder("INBOX").messages()) == 1
