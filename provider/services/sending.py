"""Sending limits: recipients per mailbox per hour and per day, the burst rule, sending stats."""

from __future__ import annotations

from sqlalchemy.orm import Session

from provider.models import Mailbox


def check_recipient(session: Session, mailbox: Mailbox, pending: int) -> None:
    """At RCPT TO: may `mailbox` add one more recipient, with `pending` already accepted in
    this transaction? Raises SendingLimited (451 4.7.1) or SendingSuspended (550 5.7.1); counts
    a refused attempt (and may suspend sending, the burst rule). Commits what it records."""


def record_accepted(session: Session, mailbox_id: int, recipients: int) -> None:
    """Count `recipients` sent by the mailbox now, in the caller's transaction (the one that
    queues the message, so a message and its count commit together)."""
