"""The protocol runner: bound ports, a port in use, and a shutdown that lets deliveries finish."""

from __future__ import annotations

import gc
import imaplib
import logging
import socket
import ssl
import threading

import pytest

from provider.protocols.server import ProtocolRunner
from provider.services import delivery
from tests.conftest import MAILBOX_PASSWORD, make_mailbox, wait_until
from tests.protocols.conftest import RawClient


def test_port_in_use_is_reported_by_start(app, app_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app.config["LMTP_PORT"] = taken.getsockname()[1]
        runner = ProtocolRunner(app, ["lmtp"])
        with pytest.raises(OSError):
            runner.start()


def test_shutdown_waits_for_a_delivery_in_progress(app, session, monkeypatch):
    make_mailbox(session, "alice@example.test")
    inside, release = threading.Event(), threading.Event()
    real_store = delivery.store_message

    def slow_store(*args, **kwargs):
        inside.set()
        assert release.wait(30)
        return real_store(*args, **kwargs)

    monkeypatch.setattr(delivery, "store_message", slow_store)
    runner = ProtocolRunner(app, ["lmtp"])
    [bound] = runner.start()
    replies: list[tuple[int, str]] = []

    def transaction() -> None:
        with RawClient((bound.host, bound.port)) as raw:
            raw.reply()
            raw.command("LHLO mta.test")
            raw.command("MAIL FROM:<s@outside.test>")
            raw.command("RCPT TO:<alice@example.test>")
            raw.command("DATA")
            raw.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
            replies.append(raw.reply())

    client = threading.Thread(target=transaction)
    client.start()
    assert inside.wait(30)
    stopper = threading.Thread(target=runner.stop)
    stopper.start()

    # The listener stops accepting at once, while the delivery is still being written.
    def refused() -> bool:
        try:
            socket.create_connection((bound.host, bound.port), timeout=1).close()
        except OSError:
            return True
        return False

    assert wait_until(refused, timeout=10)
    assert stopper.is_alive()
    release.set()
    client.join(30)
    stopper.join(30)
    assert not stopper.is_alive()
    assert replies and replies[0][0] == 250


def _idle_session(address: tuple[str, int], implicit_tls: bool) -> imaplib.IMAP4:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if implicit_tls:
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL(*address, ssl_context=context, timeout=10)
    else:
        client = imaplib.IMAP4(*address, timeout=10)
        client.starttls(context)
    client.login("alice@example.test", MAILBOX_PASSWORD)
    client.select("INBOX")
    client.send(client._new_tag() + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    return client


def test_shutdown_with_idle_clients_says_goodbye_and_logs_no_traceback(
    app, app_config, session, monkeypatch, caplog
):
    """Ctrl-C with IDLE clients (issue 11, item 17): each live session is asked to say goodbye
    (`say_goodbye()`, which writes BYE) before its connection is closed, the clients see the
    connection end, and nothing is logged as a warning or an error (once: two tracebacks)."""
    from provider.protocols import streams

    farewells: list[object] = []

    def say_goodbye(protocol: object) -> None:
        farewells.append(protocol)

    monkeypatch.setattr(streams.SessionProtocol, "say_goodbye", say_goodbye, raising=False)
    app.config.update(IMAP_PORT=0, IMAPS_PORT=0, LOGIN_FAILURE_DELAY_SECONDS=0)
    make_mailbox(session, "alice@example.test")
    runner = ProtocolRunner(app, ["imap"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    clients = [
        _idle_session(bound["imap"], implicit_tls=False),
        _idle_session(bound["imaps"], implicit_tls=True),
    ]
    with caplog.at_level(logging.WARNING):
        runner.stop()
    assert len(farewells) == 2
    for client in clients:
        while client.readline():  # the BYE, when the session writes one, then the end
            pass
        client.shutdown()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_shutdown_with_smtp_and_lmtp_clients_after_starttls_logs_nothing(app, caplog):
    """Ctrl-C with SMTP/LMTP sessions that went through STARTTLS: nothing logged, and their
    sockets really closed (aiosmtpd keeps the socket's own transport aside after STARTTLS; it
    was left for the garbage collector)."""
    app.config.update(LMTP_PORT=0, SMTP_PORT=0)
    runner = ProtocolRunner(app, ["lmtp", "smtp"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    clients: list[RawClient] = []
    for name, hello in (("smtp", "EHLO"), ("lmtp", "LHLO")):
        client = RawClient(bound[name])
        clients.append(client)
        client.reply()
        client.command(f"{hello} client.test")
        assert client.command("STARTTLS")[0] == 220
        client.start_tls()
        assert client.command(f"{hello} client.test")[0] == 250
    with caplog.at_level(logging.WARNING):
        runner.stop()
    for client in clients:
        while client.file.readline():  # a 421 where the session says one, then the end
            pass
        client.close()
    gc.collect()  # a server socket left open would be reported (ResourceWarning) right here
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
