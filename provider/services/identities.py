"""Identities: the addresses a mailbox may send as (its own, its aliases, extra identities)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import Alias, Identity, Mailbox


@dataclass(frozen=True)
class SenderAddress:
    """One address a mailbox may put in MAIL FROM and From:, and where it comes from."""

    address: str
    kind: str  # "mailbox" (its own address), "alias" or "identity"
    display_name: str = ""


def sender_addresses(session: Session, mailbox: Mailbox) -> list[SenderAddress]:
    """Every address `mailbox` may send as: its own, the aliases delivering to it, and (for
    mailboxes whose policy includes IMAP) its extra identities. POP3-only mailboxes keep their
    identity rows if their policy changed, but may not use them."""
    found = [SenderAddress(mailbox.address, "mailbox")]
    aliases = session.scalars(
        select(Alias.address).where(Alias.mailbox_id == mailbox.id).order_by(Alias.address)
    )
    found.extend(SenderAddress(address, "alias") for address in aliases)
    if mailbox.imap_enabled:
        extra = session.execute(
            select(Identity.address, Identity.display_name)
            .where(Identity.mailbox_id == mailbox.id, Identity.enabled.is_(True))
            .order_by(Identity.address)
        )
        found.extend(SenderAddress(row.address, "identity", row.display_name) for row in extra)
    return found


def may_send_as(session: Session, mailbox: Mailbox, address: str) -> bool:
    """Whether `address` (any case) is one of the mailbox's sender addresses."""
    wanted = address.strip().lower()
    return any(sender.address == wanted for sender in sender_addresses(session, mailbox))
