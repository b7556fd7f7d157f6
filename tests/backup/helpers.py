"""Helpers for the backup tests: deliver mail with its quota counted, look at folders."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from provider.mailstore import IncomingMessage, Maildir, MessageInfo
from provider.models import Mailbox
from provider.services import quota
from provider.services.storage import mail_store


def message(n: int, *, message_id: bool = True, body: str = "") -> bytes:
    lines = [
        f"From: Sender {n} <sender{n}@example.org>",
        "To: alice@example.test",
        f"Subject: message number {n}",
        "Date: Sat, 28 Nov 2026 10:00:00 +0000",
    ]
    if message_id:
        lines.append(f"Message-ID: <m{n}@example.org>")
    return ("\r\n".join(lines) + f"\r\n\r\nBody of message {n}.\r\n{body}").encode()


def maildir(mailbox: Mailbox) -> Maildir:
    return mail_store().open(mailbox.address)


def deliver(
    session: Session,
    mailbox: Mailbox,
    numbers: Iterable[int],
    folder: str = "INBOX",
    **options: object,
) -> list[int]:
    """Deliver messages (counted against the quota as a delivery would); their UIDs."""
    box = maildir(mailbox)
    try:
        target = box.folder(folder)
    except Exception:
        target = box.create_folder(folder)
    incoming = [IncomingMessage(message(n), **options) for n in numbers]  # type: ignore[arg-type]
    quota.force_reserve(session, mailbox.id, sum(len(m.data) for m in incoming))
    session.commit()
    return [s.uid for s in target.deliver_many(incoming)]


def contents(mailbox: Mailbox, folder: str = "INBOX") -> list[tuple[bytes, MessageInfo]]:
    box = maildir(mailbox)
    target = box.folder(folder)
    return [(target.read(info.uid), info) for info in target.messages()]


def bodies(mailbox: Mailbox, folder: str = "INBOX") -> list[bytes]:
    return [data for data, _ in contents(mailbox, folder)]
