"""Submission fixtures: both submission listeners on port 0, a mailbox with an alias and an
extra identity, and smtplib clients that log in over STARTTLS or implicit TLS."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import Domain, Identity, Mailbox
from provider.protocols.server import ProtocolRunner
from provider.services import provisioning
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_domain, make_mailbox

ADDRESS = "alice@example.test"
ALIAS = "sales@example.test"
IDENTITY = "alice@other.test"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        SUBMISSION_PORT=0,
        SUBMISSIONS_PORT=0,
        HOSTNAME="smtp.provider.test",
        LOGIN_FAILURE_DELAY_SECONDS=0,
        MAX_MESSAGE_MB=1,
    )
    return app_config


def insecure_context() -> ssl.SSLContext:
    """The development certificate is self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Submission:
    """The running listeners of one app and ways to reach them."""

    runner: ProtocolRunner
    starttls: tuple[str, int]
    implicit: tuple[str, int]
    running: bool = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.runner.stop()

    def connect(self) -> smtplib.SMTP:
        """A plain connection to the STARTTLS port, EHLO said."""
        client = smtplib.SMTP(*self.starttls, timeout=10)
        client.ehlo("client.test")
        return client

    def connect_tls(self) -> smtplib.SMTP:
        """STARTTLS done, EHLO said again."""
        client = self.connect()
        client.starttls(context=insecure_context())
        client.ehlo("client.test")
        return client

    def connect_implicit(self) -> smtplib.SMTP_SSL:
        client = smtplib.SMTP_SSL(*self.implicit, timeout=10, context=insecure_context())
        client.ehlo("client.test")
        return client

    def login(
        self, address: str = ADDRESS, password: str = MAILBOX_PASSWORD, *, implicit: bool = False
    ) -> smtplib.SMTP:
        client = self.connect_implicit() if implicit else self.connect_tls()
        client.login(address, password)
        return client


@contextmanager
def running_submission(app: Flask) -> Iterator[Submission]:
    """Both submission listeners of `app` on the ports its settings name, until the end."""
    runner = ProtocolRunner(app, ["submission"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    served = Submission(runner, bound["submission"], bound["submissions"])
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def submission(app: Flask) -> Iterator[Submission]:
    with running_submission(app) as served:
        yield served


def add_identity(session: Session, mailbox: Mailbox, address: str, name: str = "") -> Identity:
    """An extra identity row, as the identities service will make it (domain hosted here)."""
    domain_name = address.rpartition("@")[2]
    domain = session.scalar(select(Domain).where(Domain.name == domain_name))
    if domain is None:
        domain = make_domain(session, domain_name)
    identity = Identity(
        mailbox_id=mailbox.id, domain_id=domain.id, address=address, display_name=name
    )
    session.add(identity)
    session.commit()
    return identity


def make_sender(session: Session) -> Mailbox:
    """alice@example.test (IMAP) with the alias sales@ and the extra identity alice@other.test."""
    mailbox = make_mailbox(session, ADDRESS)
    provisioning.create_alias(session, ALIAS, mailbox, actor=TEST_ACTOR)
    session.commit()
    add_identity(session, mailbox, IDENTITY, "Alice Other")
    return mailbox


@pytest.fixture
def sender(session: Session) -> Mailbox:
    return make_sender(session)


def message(sender: str = ADDRESS, to: str = "bob@remote.test", body: str = "Hello.") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: <{to}>\r\nSubject: Test\r\n"
        f"Message-ID: <m1@client.test>\r\nDate: Sun, 06 Dec 2026 12:00:00 +0000\r\n\r\n"
        f"{body}\r\n"
    ).encode()
