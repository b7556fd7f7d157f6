"""Helpers of the time machine web tests: mail with chosen headers and dates, snapshots."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from provider.mailstore import IncomingMessage
from provider.models import Mailbox
from provider.services import backups, quota
from provider.services.storage import mail_store


def mail(subject: str, sender: str = "Bob <bob@example.org>", body: str = "Hello.") -> bytes:
    return (
        f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        f"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{abs(hash(subject))}@x>\r\n"
        f"\r\n{body}\r\n"
    ).encode()


def on(day: str) -> float:
    """An internal date: noon UTC of an ISO day."""
    return datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC).timestamp()


def deliver(
    session: Session,
    mailbox: Mailbox,
    messages: list[bytes],
    folder: str = "INBOX",
    dates: list[float] | None = None,
    flags: list[str] | None = None,
) -> list[int]:
    """Deliver with the quota counted as a delivery would; the UIDs."""
    box = mail_store().open(mailbox.address)
    try:
        target = box.folder(folder)
    except Exception:
        target = box.create_folder(folder)
    incoming = [
        IncomingMessage(data, flags=flags or (), internal_date=(dates or [None] * 99)[i])
        for i, data in enumerate(messages)
    ]
    quota.force_reserve(session, mailbox.id, sum(len(data) for data in messages))
    session.commit()
    return [stored.uid for stored in target.deliver_many(incoming)]


def expunge(session: Session, mailbox: Mailbox, uids: list[int], folder: str = "INBOX") -> None:
    removed = mail_store().open(mailbox.address).folder(folder).expunge(uids)
    quota.release(session, mailbox.id, sum(info.size for info in removed))
    session.commit()


def folder_bodies(mailbox: Mailbox, folder: str = "INBOX") -> list[bytes]:
    target = mail_store().open(mailbox.address).folder(folder)
    return [target.read(info.uid) for info in target.messages()]


def snapshot(session: Session, mailbox: Mailbox) -> str:
    run = backups.run_backups(session, [mailbox.address]).mailboxes[0]
    assert run.error is None, run.error
    assert run.snapshot is not None
    return run.snapshot


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', html
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


def text(response: Any) -> str:
    return response.get_data(as_text=True)
