"""Real submission clients (issue 12): swaks and msmtp send through STARTTLS and implicit TLS,
with the test's self-signed certificate, as the mailbox, its alias and its extra identity; any
other From is refused with 553 5.7.1.

A missing binary skips, unless PROVIDER_REQUIRE_CLIENTS=1 (CI), then it fails.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from provider.models import Mailbox, OutboundMessage
from provider.tls import certificate_paths
from tests.clients.test_sync_clients import required
from tests.conftest import MAILBOX_PASSWORD
from tests.protocols.submission.conftest import (
    ADDRESS,
    ALIAS,
    IDENTITY,
    Submission,
    make_sender,
    running_submission,
)

CLIENT_TIMEOUT = 60  # seconds; a client that takes longer has hung
RECIPIENT = "bob@remote.test"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        SUBMISSION_PORT=0,
        SUBMISSIONS_PORT=0,
        HOSTNAME="localhost",  # the name the self-signed certificate is made for
        LOGIN_FAILURE_DELAY_SECONDS=0,
    )
    return app_config


@pytest.fixture
def submission(app: Flask) -> Iterator[Submission]:
    with running_submission(app) as served:
        yield served


@pytest.fixture
def sender(session: Session) -> Mailbox:
    return make_sender(session)


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        required(f"{name} is not installed (apt-get install -y {name})")
    assert found is not None
    return found


def queued(session: Session) -> list[OutboundMessage]:
    session.expire_all()
    return list(
        session.scalars(select(OutboundMessage).options(selectinload(OutboundMessage.recipients)))
    )


def swaks(submission: Submission, mode: str, sender_address: str, mechanism: str) -> str:
    """Send one message with swaks; its whole transcript. `mode` is starttls or implicit."""
    host, port = submission.starttls if mode == "starttls" else submission.implicit
    command = [
        binary("swaks"),
        "--server",
        host,
        "--port",
        str(port),
        "--tls" if mode == "starttls" else "--tlsc",
        "--auth",
        mechanism,
        "--auth-user",
        ADDRESS,
        "--auth-password",
        MAILBOX_PASSWORD,
        "--from",
        sender_address,
        "--to",
        RECIPIENT,
        "--header",
        f"Subject: swaks {mode} {sender_address}",
        "--ehlo",
        "client.test",
        "--timeout",
        "30",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL
    )
    transcript = result.stdout + result.stderr
    return f"exit {result.returncode}\n{transcript}"


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize(
    ("sender_address", "mechanism"),
    [(ADDRESS, "PLAIN"), (ALIAS, "LOGIN"), (IDENTITY, "PLAIN")],
    ids=["mailbox", "alias", "identity"],
)
def test_swaks_sends_as_each_identity(
    session: Session,
    sender: Mailbox,
    submission: Submission,
    mode: str,
    sender_address: str,
    mechanism: str,
):
    transcript = swaks(submission, mode, sender_address, mechanism)
    assert transcript.startswith("exit 0\n"), transcript
    assert "<~  250 2.0.0 Ok: queued as " in transcript
    assert "<~  235 2.7.0 Authentication successful" in transcript  # "~": over TLS
    [message] = queued(session)
    assert message.sender == sender_address
    assert [r.address for r in message.recipients] == [RECIPIENT]
    assert message.subject == f"swaks {mode} {sender_address}"


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_swaks_is_refused_another_sender(
    session: Session,
    sender: Mailbox,
    submission: Submission,
    mode: str,
):
    transcript = swaks(submission, mode, "ceo@bank.test", "PLAIN")
    assert not transcript.startswith("exit 0\n"), transcript
    assert (
        "<~* 553 5.7.1 Sender address not allowed: <ceo@bank.test> is not one of your identities"
        in transcript
    )
    assert queued(session) == []


def msmtp(
    submission: Submission,
    tmp_path: Path,
    app: Flask,
    mode: str,
    envelope_from: str,
    header_from: str,
) -> subprocess.CompletedProcess[str]:
    """Send one message with msmtp, the certificate checked against the test's own."""
    host, port = submission.starttls if mode == "starttls" else submission.implicit
    cert, _ = certificate_paths(app.config)
    config = tmp_path / "msmtprc"
    config.write_text(
        "\n".join(
            [
                "account default",
                "host localhost",  # in the certificate; 127.0.0.1 is where it listens
                f"port {port}",
                "auth plain",
                f"user {ADDRESS}",
                f"password {MAILBOX_PASSWORD}",
                f"from {envelope_from}",
                "tls on",
                f"tls_starttls {'on' if mode == 'starttls' else 'off'}",
                f"tls_trust_file {cert}",
                "timeout 30",
                "",
            ]
        )
    )
    config.chmod(0o600)
    assert host == "127.0.0.1"
    content = (
        f"From: {header_from}\r\nTo: {RECIPIENT}\r\nSubject: msmtp {mode} {header_from}\r\n"
        "\r\nSent with msmtp.\r\n"
    )
    return subprocess.run(
        [binary("msmtp"), "-C", str(config), RECIPIENT],
        input=content,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("sender_address", [ADDRESS, ALIAS, IDENTITY])
def test_msmtp_sends_as_each_identity(
    app: Flask,
    session: Session,
    sender: Mailbox,
    submission: Submission,
    tmp_path: Path,
    mode: str,
    sender_address: str,
):
    result = msmtp(submission, tmp_path, app, mode, sender_address, sender_address)
    assert result.returncode == 0, result.stderr
    [message] = queued(session)
    assert message.sender == sender_address
    assert message.subject == f"msmtp {mode} {sender_address}"


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_msmtp_is_refused_another_from_header(
    app: Flask,
    session: Session,
    sender: Mailbox,
    submission: Submission,
    tmp_path: Path,
    mode: str,
):
    result = msmtp(submission, tmp_path, app, mode, ADDRESS, "ceo@bank.test")
    assert result.returncode != 0
    assert "553 5.7.1 Sender address not allowed: From: <ceo@bank.test>" in result.stderr
    assert queued(session) == []
