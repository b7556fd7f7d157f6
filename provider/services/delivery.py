"""Local delivery: resolve a recipient, check and reserve quota, store the message, warn.

The protocol listeners (LMTP, inbound SMTP) call these functions from a worker thread with an
app context; everything here is blocking (database, fsync) by design.
"""

from __future__ import annotations

import email.utils
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP

from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.errors import (
    InvalidInput,
    MailboxDisabled,
    QuotaExceeded,
    RelayDenied,
    TemporaryFailure,
    UnknownRecipient,
)
from provider.mailstore import MailStore, StoredMessage
from provider.models import Alias, Domain, Mailbox, MailboxStatus
from provider.services import quota
from provider.services.clock import now
from provider.services.provisioning import split_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """The mailbox a recipient address resolves to."""

    mailbox_id: int
    address: str
    domain: str


def _normalize_recipient(recipient: str) -> tuple[str, str]:
    """`User+Tag@Example.TEST` → (`user`, `example.test`); RelayDenied when it is no address."""
    cleaned = recipient.strip().strip("<>").strip()
    local, at, domain = cleaned.rpartition("@")
    if not at or not local:
        raise UnknownRecipient(f"<{cleaned}> is not a mailbox address")
    local = local.split("+", 1)[0]
    try:
        return split_address(f"{local}@{domain}")
    except InvalidInput:
        raise UnknownRecipient(f"<{cleaned}>: no such mailbox here") from None


def resolve(session: Session, recipient: str) -> Destination:
    """The mailbox for a recipient: direct or through an alias, case-insensitively, with the
    plus tag dropped. Refuses other domains (never a relay), unknown and suspended mailboxes.
    """
    local, domain_name = _normalize_recipient(recipient)
    address = f"{local}@{domain_name}"
    row = session.execute(
        select(Mailbox.id, Mailbox.address, Mailbox.status).where(Mailbox.address == address)
    ).first()
    if row is None:
        row = session.execute(
            select(Mailbox.id, Mailbox.address, Mailbox.status)
            .join(Alias, Alias.mailbox_id == Mailbox.id)
            .where(Alias.address == address)
        ).first()
    if row is None:
        if session.scalar(select(Domain.id).where(Domain.name == domain_name)) is None:
            raise RelayDenied(f"<{recipient.strip('<> ')}>: relay access denied")
        raise UnknownRecipient(f"<{address}>: no such mailbox here")
    if row.status == MailboxStatus.SUSPENDED.value:
        raise MailboxDisabled(f"<{address}>: mailbox disabled")
    # An expired trial keeps receiving during its grace period: nothing is lost while the
    # customer decides (DESIGN.md §5).
    return Destination(row.id, row.address, row.address.rpartition("@")[2])


def check_room(session: Session, destination: Destination, size: int) -> None:
    """Refuse early (at RCPT) when `size` more bytes would not fit the quota."""
    if not quota.fits(session, destination.mailbox_id, size):
        raise QuotaExceeded(f"<{destination.address}>: mailbox full")


def store_message(
    session: Session,
    store: MailStore,
    destination: Destination,
    message: bytes,
    *,
    promised: bool = False,
) -> StoredMessage:
    """Reserve quota, then write the message into INBOX; on any failure nothing stays behind.

    `promised`: the recipient was already accepted at RCPT and the protocol cannot refuse it
    alone any more (SMTP with several recipients), so the message is stored even if it takes
    the mailbox past its quota by this one message — losing mail is worse (Dovecot's
    quota_grace does the same).
    """
    size = len(message)
    held = quota.hold(session, destination.mailbox_id, size, force=promised)
    if held is None:
        raise QuotaExceeded(f"<{destination.address}>: mailbox full")
    try:
        stored = store.open(destination.address).folder("INBOX").deliver(message)
    except Exception as exc:
        log.exception("delivery to %s failed; releasing %d bytes", destination.address, size)
        held.cancel()
        raise TemporaryFailure("temporary failure storing the message; try again later") from exc
    held.confirm()
    if quota.crosses_new_level(held.usage):
        _warn_if_crossed(session, store, destination)
    return stored


def _warn_if_crossed(session: Session, store: MailStore, destination: Destination) -> None:
    """Deliver one warning message when usage has just crossed a warning threshold."""
    level = quota.update_warning_level(session, destination.mailbox_id)
    session.commit()
    if level is None:
        return
    row = session.execute(
        select(Mailbox.used_bytes, Mailbox.quota_bytes).where(Mailbox.id == destination.mailbox_id)
    ).one()
    warning = quota_warning_message(destination, level, row.used_bytes, row.quota_bytes)
    # The warning itself must never be refused: it is small and it is what tells the customer.
    held = quota.hold(session, destination.mailbox_id, len(warning), force=True)
    if held is None:
        return  # the mailbox was deleted meanwhile
    try:
        store.open(destination.address).folder("INBOX").deliver(warning)
    except Exception:
        log.exception("quota warning to %s could not be stored", destination.address)
        held.cancel()
        return
    held.confirm()


def quota_warning_message(
    destination: Destination, percent: int, used_bytes: int, quota_bytes: int
) -> bytes:
    """The notice a customer finds in their INBOX when the mailbox is `percent` % full."""
    used = quota.format_gb(round(used_bytes / quota.GIB, 2))
    limit = quota.format_gb(round(quota_bytes / quota.GIB, 2))
    notice = EmailMessage(policy=SMTP)
    notice["From"] = f"Mail System <postmaster@{destination.domain}>"
    notice["To"] = destination.address
    notice["Subject"] = f"Your mailbox is {percent}% full"
    notice["Date"] = email.utils.format_datetime(now())
    notice["Message-ID"] = email.utils.make_msgid(domain=destination.domain)
    notice["Auto-Submitted"] = "auto-generated"
    notice.set_content(
        f"Your mailbox {destination.address} now holds {used} GB of its {limit} GB.\n\n"
        "When it is full, new mail to you will be refused and returned to its senders.\n"
        "Delete messages you no longer need (and empty the Trash), or ask your provider\n"
        "for a larger mailbox.\n"
    )
    return notice.as_bytes()
