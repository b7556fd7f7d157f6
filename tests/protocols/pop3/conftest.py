"""POP3 fixtures: both POP3 listeners on port 0, a restartable runner, delivery helpers."""

from __future__ import annotations

import poplib
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from provider.mailstore import StoredMessage
from provider.protocols.server import ProtocolRunner
from provider.services import delivery
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD

ADDRESS = "alice@example.test"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(POP3_PORT=0, POP3S_PORT=0, LOGIN_FAILURE_DELAY_SECONDS=0)
    return app_config


class Pop3Server:
    """The POP3 listeners of one app, which a test can stop and start again (a restart)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.runner: ProtocolRunner | None = None
        self.bound: dict[str, tuple[str, int]] = {}

    def start(self) -> None:
        self.runner = ProtocolRunner(self.app, ["pop3"])
        self.bound = {b.name: (b.host, b.port) for b in self.runner.start()}

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            self.runner = None

    def connect(self) -> poplib.POP3:
        return poplib.POP3(*self.bound["pop3"], timeout=10)

    def connect_ssl(self) -> poplib.POP3_SSL:
        return poplib.POP3_SSL(*self.bound["pop3s"], context=insecure_context(), timeout=10)

    def login(self, address: str = ADDRESS, password: str = MAILBOX_PASSWORD) -> poplib.POP3:
        client = self.connect()
        client.user(address)
        client.pass_(password)
        return client


def insecure_context() -> ssl.SSLContext:
    """The development certificate is self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def pop3(app: Flask) -> Iterator[Pop3Server]:
    server = Pop3Server(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def deliver(session: Session, data: bytes, address: str = ADDRESS) -> StoredMessage:
    """Deliver as LMTP does: quota reserved, then written into INBOX."""
    return delivery.store_message(session, mail_store(), delivery.resolve(session, address), data)


def message(number: int, body: str = "Body text.") -> bytes:
    return (
        f"From: sender@example.org\r\nTo: {ADDRESS}\r\nSubject: Message {number}\r\n"
        f"Message-ID: <m{number}@example.org>\r\n\r\n{body}\r\n"
    ).encode()
