"""The smarthost's certificate: in the `starttls` and `tls` modes of OUTBOUND_RELAY_TLS it is
verified (system CAs or OUTBOUND_RELAY_CA_FILE); a certificate that does not verify defers the
mail with a reply naming the problem. Opportunistic STARTTLS stays unverified."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import Mailbox, OutboundRecipient
from provider.protocols.outbound.runner import QueueRunner
from provider.services import clock, outbound
from provider.tls import _write_self_signed
from tests.conftest import make_mailbox
from tests.outbound.helpers import free_port

SENDER = "a@example.test"
MESSAGE = b"From: a@example.test\r\nTo: bob@example.net\r\nSubject: relayed\r\n\r\nHello.\r\n"


class TlsSmarthost:
    """An aiosmtpd smarthost with a self-signed certificate (for mx.far.test, localhost and
    127.0.0.1): STARTTLS on a plain port, or implicit TLS; keeps what it accepted."""

    def __init__(self, directory: Path, *, implicit: bool, host: str = "127.0.0.1") -> None:
        self.cert, key = directory / "relay-cert.pem", directory / "relay-key.pem"
        _write_self_signed(self.cert, key, "mx.far.test")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.host = host
        self.port = free_port(host)
        self.received: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()
        self.implicit = implicit
        options: dict[str, Any] = {"ssl_context": context} if implicit else {"tls_context": context}
        self.controller = Controller(self, hostname=host, port=self.port, **options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(
                (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 OK"

    def __enter__(self) -> TlsSmarthost:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def sender(session: Session) -> Mailbox:
    return make_mailbox(session, SENDER)


@pytest.fixture
def queue_runner(app: Flask) -> Iterator[QueueRunner]:
    runner = QueueRunner(app)
    try:
        yield runner
    finally:
        runner.stop()
        clock.set_now(None)


def send_through(
    app: Flask, session: Session, sender: Mailbox, runner: QueueRunner, relay: str, **config: Any
) -> OutboundRecipient:
    app.config.update(OUTBOUND_RELAY=relay, **config)
    outbound.enqueue(
        session,
        sender=SENDER,
        recipients=["bob@example.net"],
        content=MESSAGE,
        mailbox_id=sender.id,
    )
    runner.run_until_idle()
    session.expire_all()
    return session.scalars(select(OutboundRecipient)).one()


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_a_self_signed_relay_is_refused_without_its_ca_and_the_mail_deferred(
    app: Flask, session: Session, sender: Mailbox, queue_runner: QueueRunner, tmp_path, mode
) -> None:
    with TlsSmarthost(tmp_path, implicit=mode == "tls") as relay:
        row = send_through(
            app,
            session,
            sender,
            queue_runner,
            f"127.0.0.1:{relay.port}",
            OUTBOUND_RELAY_TLS=mode,
        )
        assert row.state == "deferred", row.last_reply
        assert row.last_reply.startswith("451 4.7.5 TLS certificate of 127.0.0.1 not trusted")
        assert "self-signed certificate" in row.last_reply
        assert "OUTBOUND_RELAY_CA_FILE" in row.last_reply
        assert relay.received == []
        assert outbound.spool_path(row.message.queue_id).exists()  # nothing lost


@pytest.mark.parametrize("mode", ["starttls", "required", "tls"])
def test_a_relay_whose_ca_file_is_given_gets_the_mail(
    app: Flask, session: Session, sender: Mailbox, queue_runner: QueueRunner, tmp_path, mode
) -> None:
    with TlsSmarthost(tmp_path, implicit=mode == "tls") as relay:
        row = send_through(
            app,
            session,
            sender,
            queue_runner,
            f"localhost:{relay.port}",
            OUTBOUND_RELAY_TLS=mode,
            OUTBOUND_RELAY_CA_FILE=str(relay.cert),
        )
        assert row.state == "delivered", row.last_reply
        [(mail_from, rcpts, content)] = relay.received
        assert (mail_from, rcpts) == (SENDER, ["bob@example.net"])
        assert b"Hello." in content


def test_a_certificate_for_another_name_is_refused_even_with_its_ca(
    app: Flask, session: Session, sender: Mailbox, queue_runner: QueueRunner, tmp_path
) -> None:
    # The certificate names mx.far.test, localhost and 127.0.0.1, not 127.0.0.2.
    with TlsSmarthost(tmp_path, implicit=False, host="127.0.0.2") as relay:
        row = send_through(
            app,
            session,
            sender,
            queue_runner,
            f"127.0.0.2:{relay.port}",
            OUTBOUND_RELAY_TLS="starttls",
            OUTBOUND_RELAY_CA_FILE=str(relay.cert),
        )
        assert row.state == "deferred"
        assert "not trusted" in row.last_reply and "mismatch" in row.last_reply
        assert relay.received == []


def test_verification_can_be_switched_off_and_opportunistic_tls_never_verifies(
    app: Flask, session: Session, sender: Mailbox, queue_runner: QueueRunner, tmp_path
) -> None:
    with TlsSmarthost(tmp_path, implicit=False) as relay:
        row = send_through(
            app,
            session,
            sender,
            queue_runner,
            f"127.0.0.1:{relay.port}",
            OUTBOUND_RELAY_TLS="starttls",
            OUTBOUND_RELAY_TLS_VERIFY=False,
        )
        assert row.state == "delivered", row.last_reply
        app.config.update(OUTBOUND_RELAY_TLS="opportunistic", OUTBOUND_RELAY_TLS_VERIFY=True)
        outbound.enqueue(
            session,
            sender=SENDER,
            recipients=["carol@example.net"],
            content=MESSAGE,
            mailbox_id=sender.id,
        )
        queue_runner.run_until_idle()
        assert len(relay.received) == 2


def test_a_broken_ca_file_defers_with_a_clear_reply(
    app: Flask, session: Session, sender: Mailbox, queue_runner: QueueRunner, tmp_path
) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\n\x00\xff not base64\n")
    with TlsSmarthost(tmp_path, implicit=False) as relay:
        row = send_through(
            app,
            session,
            sender,
            queue_runner,
            f"127.0.0.1:{relay.port}",
            OUTBOUND_RELAY_TLS="starttls",
            OUTBOUND_RELAY_CA_FILE=str(garbage),
        )
        assert row.state == "deferred"
        assert row.last_reply.startswith("451 4.7.5 cannot load OUTBOUND_RELAY_CA_FILE")
        assert relay.received == []
