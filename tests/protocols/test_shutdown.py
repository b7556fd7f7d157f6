"""Shutdown says goodbye (issue 11 item 17): IMAP `* BYE`, POP3 `-ERR`, SMTP/LMTP `421`, and
never a traceback, also with sessions that went through STARTTLS."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from provider.protocols.lmtp import SessionMixin
from provider.protocols.server import ProtocolRunner
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.conftest import RawClient
from tests.protocols.pop3.conftest import insecure_context


@pytest.fixture
def app_config(app_config):
    app_config.update(
        IMAP_PORT=0, IMAPS_PORT=0, POP3_PORT=0, POP3S_PORT=0, LOGIN_FAILURE_DELAY_SECONDS=0
    )
    return app_config


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def test_smtp_session_after_starttls_gets_421_and_stop_logs_no_traceback(session, app, caplog):
    """The Ctrl-C traceback of issue 11 item 17 (AttributeError ... _get_extra_info in
    socket_open): aiosmtpd calls connection_made again after STARTTLS."""
    runner = ProtocolRunner(app, ["smtp", "lmtp"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    clients = []
    try:
        for name in ("smtp", "lmtp"):
            client = RawClient(bound[name])
            clients.append(client)
            assert client.reply()[0] == 220
            client.send(b"EHLO me\r\n")
            client.reply_lines()
            assert client.command("STARTTLS")[0] == 220
            client.start_tls()
            client.send(b"EHLO me\r\n")
            client.reply_lines()
    finally:
        with caplog.at_level(logging.INFO):
            runner.stop()
    for client in clients:
        assert client.reply() == (421, "4.3.2 Service shutting down")
        assert client.file.readline() == b""
        client.close()
    no_tracebacks(caplog)


def test_idle_imap_client_reads_bye_at_shutdown(session, app, caplog):
    make_mailbox(session)
    runner = ProtocolRunner(app, ["imap"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        plain = socket.create_connection(bound["imap"], timeout=10)
        reader = plain.makefile("rb")
        reader.readline()
        plain.sendall(f'a LOGIN alice@example.test "{MAILBOX_PASSWORD}"\r\n'.encode())
        assert reader.readline().startswith(b"a OK")
        plain.sendall(b"b SELECT INBOX\r\n")
        while not reader.readline().startswith(b"b OK"):
            pass
        plain.sendall(b"c IDLE\r\n")
        assert reader.readline().startswith(b"+ ")
        tls = insecure_context().wrap_socket(
            socket.create_connection(bound["imaps"], timeout=10), server_hostname="localhost"
        )
        tls_reader = tls.makefile("rb")
        tls_reader.readline()
    finally:
        with caplog.at_level(logging.INFO):
            runner.stop()
    assert reader.readline() == b"* BYE Server shutting down\r\n"
    assert reader.readline() == b""
    assert tls_reader.readline() == b"* BYE Server shutting down\r\n"
    for stream in (reader, plain, tls_reader, tls):
        stream.close()
    no_tracebacks(caplog)


def test_idle_pop3_client_reads_err_at_shutdown(session, app, caplog):
    make_mailbox(session, protocols="pop3")
    runner = ProtocolRunner(app, ["pop3"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        sock = socket.create_connection(bound["pop3"], timeout=10)
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"STLS\r\n")
        assert reader.readline().startswith(b"+OK")
        tls = insecure_context().wrap_socket(sock, server_hostname="localhost")
        tls_reader = tls.makefile("rb")
        tls.sendall(f"USER alice@example.test\r\nPASS {MAILBOX_PASSWORD}\r\n".encode())
        assert tls_reader.readline().startswith(b"+OK")
        assert tls_reader.readline().startswith(b"+OK Logged in")
    finally:
        with caplog.at_level(logging.INFO):
            runner.stop()
    assert tls_reader.readline() == b"-ERR server shutting down\r\n"
    assert tls_reader.readline() == b""
    for stream in (tls_reader, tls, reader, sock):
        stream.close()
    no_tracebacks(caplog)


def test_the_socket_transport_is_kept_when_aiosmtpd_reports_the_tls_one():
    """aiosmtpd calls connection_made again after STARTTLS with the TLS transport; once that
    was closed twice (shutdown closes both), socket_open() raised AttributeError
    ('NoneType' object has no attribute '_get_extra_info')."""

    class Probe(SessionMixin, asyncio.Protocol):
        pass

    class Transport(asyncio.Transport):
        def get_extra_info(self, name, default=None):
            return None

    async def scenario() -> None:
        probe = Probe()
        raw, tls = Transport(), Transport()
        probe.connection_made(raw)
        first = probe.closed
        probe.connection_made(tls)
        assert probe.socket_transport is raw and probe.closed is first
        assert probe.socket_open() is False

    asyncio.run(scenario())
