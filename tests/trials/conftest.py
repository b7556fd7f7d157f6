"""Trial fixtures: every mail listener on port 0, a trial mailbox made at a frozen moment."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from jobs.trial import trial_lifecycle
from provider.models import Mailbox
from provider.protocols.server import ProtocolRunner
from provider.services import clock
from provider.services.storage import mail_store
from tests.conftest import make_mailbox

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ADDRESS = "trial@example.test"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        IMAP_PORT=0,
        IMAPS_PORT=0,
        POP3_PORT=0,
        POP3S_PORT=0,
        LMTP_PORT=0,
        SMTP_PORT=0,
        HOSTNAME="mail.provider.test",
        LOGIN_FAILURE_DELAY_SECONDS=0,
        MAILBOX_AUTH_CACHE_SECONDS=0,
    )
    return app_config


@pytest.fixture
def frozen() -> Iterator[None]:
    """The clock starts frozen at START; tests move it with clock.set_now."""
    with clock.frozen_at(START):
        yield


@pytest.fixture
def trial(session: Session, frozen: None) -> Mailbox:
    """An IMAP+POP3 trial made at START (so it ends 30 days later), with a contact address."""
    return make_mailbox(
        session,
        ADDRESS,
        plan="trial",
        protocols="both",
        contact_email="Customer+mail@Elsewhere.test",
    )


@pytest.fixture
def servers(app: Flask) -> Iterator[dict[str, tuple[str, int]]]:
    runner = ProtocolRunner(app, ["imap", "pop3", "lmtp", "smtp"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound
    finally:
        runner.stop()


def run_job(app: Flask, session: Session) -> dict[str, Any]:
    """One run of the job as the scheduler makes it; the test's session then reads afresh."""
    summary = trial_lifecycle(app)
    session.expire_all()
    return summary


def inbox_subjects(address: str = ADDRESS) -> list[str]:
    import email
    from email.policy import default

    folder = mail_store().open(address).folder("INBOX")
    subjects = []
    for info in folder.messages():
        parsed = email.message_from_bytes(folder.read(info.uid), policy=default)
        subjects.append(str(parsed["Subject"]))
    return subjects
