"""Hostile ManageSieve clients: huge literals, bad bytes, floods, idling, password guessing."""

from __future__ import annotations

import imaplib
import socket
import ssl

import pytest

from provider.services import mail_access, provisioning, sieve_scripts
from provider.services.mail_access import BanList, guards
from provider.services.storage import mail_store
from tests.conftest import TEST_ACTOR
from tests.protocols.managesieve.conftest import ADDRESS, Client, plain, put


def scripts() -> list[str]:
    with_names = sieve_scripts.home_of(mail_store(), ADDRESS) / "sieve"
    return sorted(p.name for p in with_names.iterdir()) if with_names.exists() else []


def test_huge_literal_announced_ends_the_session_unread(sieve_server, mailbox):
    with Client(sieve_server) as client:
        client.login()
        # Nothing of it is sent: the answer must come without reading (or waiting for) it.
        answer = client.command(b'PUTSCRIPT "big" {99999999999999+}')
        assert answer == [b'BYE (QUOTA/MAXSIZE) "Literal too big"\r\n']
        assert client.closed()
    assert scripts() == []


def test_literal_over_the_limit_is_skipped_and_refused_then_the_session_goes_on(
    sieve_server, app, mailbox
):
    app.config["SIEVE_MAX_SCRIPT_BYTES"] = 1000
    with Client(sieve_server) as client:
        client.login()
        answer = client.command(put("big", b"#" * 5000))
        assert answer[-1].startswith(b"NO (QUOTA/MAXSIZE)")
        assert client.command("NOOP") == [b'OK "Done"\r\n']
        assert client.command(put("small", b"keep;\n"))[-1].startswith(b"OK")
    assert scripts() == ["small.sieve"]


def test_nul_bad_utf8_and_bad_names_are_refused_and_store_nothing(sieve_server, mailbox):
    with Client(sieve_server) as client:
        client.login()
        assert client.command(b'PUTSCRIPT "a\x00b" {6+}\r\nkeep;\n')[-1].startswith(b"NO")
        bad_name = client.command(b'PUTSCRIPT "\xff\xfe" {6+}\r\nkeep;\n')[-1]
        assert bad_name == b'NO "Strings must be valid UTF-8"\r\n'
        assert client.command(put("a/b", b"keep;\n"))[-1].startswith(b"NO")
        assert client.command(put("../x", b"keep;\n"))[-1].startswith(b"NO")
        assert client.command(put(".dovecot", b"keep;\n"))[-1].startswith(b"NO")
        assert client.command(put("tab\tname", b"keep;\n"))[-1].startswith(b"NO")
        assert client.command(put("x" * 129, b"keep;\n"))[-1].startswith(b"NO")
        bad_script = client.command(put("latin1", b'if header :is "a" "\xe9" { keep; }\n'))
        assert b"not valid UTF-8" in bad_script[-1]
        nul_script = client.command(put("nul", b"keep;\x00\n"))
        assert nul_script[-1].startswith(b"NO"), nul_script
        assert client.command('GETSCRIPT "\\"')[-1].startswith(b"NO")
        assert client.command("NOOP") == [b'OK "Done"\r\n']
    assert scripts() == []


def test_ten_thousand_pipelined_commands_answer_in_order(sieve_server, mailbox):
    with Client(sieve_server) as client:
        client.login()
        client.send(b"".join(b'NOOP "%d"\r\n' % n for n in range(10000)))
        for n in range(10000):
            assert client.line() == b'OK (TAG "%d") "Done"\r\n' % n


def test_too_long_line_and_bad_command_budget(sieve_server, mailbox):
    with Client(sieve_server) as client:
        assert client.command(b"NOOP " + b"x" * 100_000)[-1] == b'NO "Line too long"\r\n'
        assert client.command("NOOP")[-1] == b'OK "Done"\r\n'
        for _ in range(3):
            assert client.command("FROB")[-1] == b'NO "Unknown command"\r\n'
        assert client.command("FROB") == [b'NO "Unknown command"\r\n']
        assert client.line() == b'BYE "Too many invalid commands"\r\n'
        assert client.closed()


def test_unauthenticated_idle_client_is_disconnected(sieve_server, app):
    app.config["MANAGESIEVE_LOGIN_TIMEOUT_SECONDS"] = 0.3
    with Client(sieve_server) as client:
        assert client.response() == [b'BYE "Disconnected for inactivity"\r\n']
        assert client.closed()


def test_commands_pipelined_after_starttls_are_not_run(sieve_server, mailbox):
    with Client(sieve_server) as client:
        client.send(b"STARTTLS\r\nLOGOUT\r\n")
        assert client.response() == [b'OK "Begin TLS negotiation now"\r\n']
        # The LOGOUT came in plaintext: it must be dropped, not run over TLS.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.file.close()
        client.sock = context.wrap_socket(client.sock, server_hostname="localhost")
        client.file = client.sock.makefile("rb")
        assert client.response()[-1] == b'OK "TLS negotiation successful"\r\n'
        assert client.command("NOOP") == [b'OK "Done"\r\n']


def test_plaintext_needs_tls_off_loopback(sieve_server, mailbox, monkeypatch):
    monkeypatch.setattr(mail_access, "is_loopback", lambda peer: False)
    with Client(sieve_server) as client:
        assert b'"SASL" ""\r\n' in client.greeting
        refused = client.command(f'AUTHENTICATE "PLAIN" "{plain()}"')
        assert refused[-1].startswith(b"NO (ENCRYPT-NEEDED)")
        assert b'"SASL" "PLAIN"\r\n' in client.start_tls()
        client.login()


def test_suspended_mailbox_is_refused_and_its_session_ended(sieve_server, app, session, mailbox):
    app.config["ACCOUNT_RECHECK_SECONDS"] = 0
    with Client(sieve_server) as client:
        client.login()
        provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, status="suspended")
        session.commit()
        answer = client.command("LISTSCRIPTS")
        assert answer == [b'BYE "This mailbox is suspended; contact your provider"\r\n']
        assert client.closed()
    with Client(sieve_server) as client:
        refused = client.command(f'AUTHENTICATE "PLAIN" "{plain()}"')
        assert refused == [b'NO "This mailbox is suspended; contact your provider"\r\n']


@pytest.fixture
def with_imap(app):
    from provider.protocols.server import ProtocolRunner

    guards(app).bans = BanList(3)
    runner = ProtocolRunner(app, ["managesieve", "imap"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound
    finally:
        runner.stop()


def test_failed_logins_ban_the_address_from_imap_too(with_imap, mailbox):
    with Client(with_imap["managesieve"]) as client:
        wrong = f'AUTHENTICATE "PLAIN" "{plain(password="guess")}"'
        assert client.command(wrong)[-1].startswith(b"NO")
        assert client.command(wrong)[-1].startswith(b"NO")
        banned = client.command(wrong)
        assert banned == [b'BYE (TRYLATER) "Too many failed logins from your address"\r\n']
        assert client.closed()
    with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, ConnectionError, OSError)):
        imaplib.IMAP4(*with_imap["imap"], timeout=10)
    with Client(with_imap["managesieve"]) as client:
        assert client.greeting == [b'BYE (TRYLATER) "Too many failed logins from your address"\r\n']


def test_a_ban_earned_on_imap_holds_on_managesieve(with_imap, mailbox):
    for _ in range(3):
        imap = imaplib.IMAP4(*with_imap["imap"], timeout=10)
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(ADDRESS, "guess")
        imap.shutdown()
    with socket.create_connection(with_imap["managesieve"], timeout=10) as sock:
        assert sock.makefile("rb").readline().startswith(b"BYE (TRYLATER)")


def test_client_gone_in_the_middle_of_a_literal_stores_nothing(sieve_server, mailbox):
    with Client(sieve_server) as client:
        client.login()
        client.send(b'PUTSCRIPT "half" {100+}\r\nkeep;')
    with Client(sieve_server) as client:
        client.login()
        assert client.command("LISTSCRIPTS") == [b'OK "Listscripts completed"\r\n']
    assert scripts() == []
