"""Hashes brought by a CSV import ({SHA512-CRYPT}, {BLF-CRYPT}, {SSHA512}) log in over real IMAP,
POP3 and submission, and the first good login replaces them with argon2id at the set cost."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import poplib
import smtplib
import ssl
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import Mailbox
from provider.protocols.server import ProtocolRunner
from provider.services import auth
from provider.services.mailbox_csv import import_mailboxes
from tests.conftest import TEST_ACTOR, make_domain

PASSWORD = "the old server's passphrase"
ARGON2ID_AT_SET_COST = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"


def crypt_hash(setting: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt", reason="no crypt module on this Python")
    return str(crypt.crypt(PASSWORD, setting))


def ssha512(salt: bytes) -> str:
    digest = hashlib.sha512(PASSWORD.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        IMAP_PORT=0,
        IMAPS_PORT=0,
        POP3_PORT=0,
        POP3S_PORT=0,
        SUBMISSION_PORT=0,
        SUBMISSIONS_PORT=0,
        HOSTNAME="mail.provider.test",
        LOGIN_FAILURE_DELAY_SECONDS=0,
    )
    return app_config


@pytest.fixture
def servers(app: Flask) -> Iterator[dict[str, tuple[str, int]]]:
    runner = ProtocolRunner(app, ["imap", "pop3", "submission"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound
    finally:
        runner.stop()


def stored_hash(session: Session, address: str) -> str:
    session.expire_all()
    value = session.scalar(select(Mailbox.password_hash).where(Mailbox.address == address))
    session.rollback()
    assert value is not None
    return value


def imported(session: Session, rows: dict[str, str]) -> None:
    make_domain(session, "example.test")
    text = "address,quota,protocols,password\r\n" + "".join(
        f"{address},8,both,{value}\r\n" for address, value in rows.items()
    )
    report = import_mailboxes(session, text.encode(), scope=None, actor=TEST_ACTOR)
    assert report.applied, report.error_lines()
    assert report.passwords == []  # nothing made up: every row brought its hash
    session.commit()


def imap_login(servers: dict[str, tuple[str, int]], address: str, password: str) -> bool:
    client = imaplib.IMAP4(*servers["imap"], timeout=10)
    try:
        client.login(address, password)
    except imaplib.IMAP4.error:
        client.shutdown()
        return False
    client.logout()
    return True


def test_imported_sha512_crypt_logs_in_over_imap_and_is_rehashed_to_argon2id(session, servers):
    address = "moved@example.test"
    old = "{SHA512-CRYPT}" + crypt_hash("$6$rounds=5000$saltsalt")
    imported(session, {address: old})
    assert stored_hash(session, address) == old  # kept as it came

    assert not imap_login(servers, address, PASSWORD + "!")
    assert stored_hash(session, address) == old  # a wrong password changes nothing

    assert imap_login(servers, address, PASSWORD)
    upgraded = stored_hash(session, address)
    assert upgraded.startswith(ARGON2ID_AT_SET_COST)
    assert auth.verify_password(upgraded, PASSWORD).ok
    # The new hash is the one checked from now on, and needs no further upgrade.
    assert imap_login(servers, address, PASSWORD)
    assert stored_hash(session, address) == upgraded


def test_imported_hashes_log_in_over_pop3_and_submission_and_are_rehashed(session, servers):
    by_pop3, by_submission = "pop@example.test", "smtp@example.test"
    imported(
        session,
        {
            by_pop3: "{BLF-CRYPT}" + crypt_hash("$2y$05$abcdefghijklmnopqrstuu"),
            by_submission: ssha512(b"8 bytes!"),
        },
    )

    pop = poplib.POP3(*servers["pop3"], timeout=10)
    pop.user(by_pop3)
    assert pop.pass_(PASSWORD).startswith(b"+OK")
    pop.quit()
    assert stored_hash(session, by_pop3).startswith(ARGON2ID_AT_SET_COST)

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(*servers["submission"], timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=context)
        smtp.ehlo("client.test")
        assert smtp.login(by_submission, PASSWORD)[0] == 235
    upgraded = stored_hash(session, by_submission)
    assert upgraded.startswith(ARGON2ID_AT_SET_COST)
    assert auth.verify_password(upgraded, PASSWORD).ok
