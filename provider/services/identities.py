"""Identities: the addresses a mailbox may send as (its own, its aliases, extra identities)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provider.errors import AlreadyExists, InvalidInput, NotFound
from provider.models import AdminUser, Alias, Domain, Identity, Mailbox
from provider.services import audit, provisioning
from provider.services.audit import Actor
from provider.services.clock import now

DISPLAY_NAME_MAX = 200
# C0 controls (CR, LF, NUL, TAB …) and DEL: a display name goes into a From: header, where a
# CR or LF would start a header of the sender's choosing.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
POP3_ONLY_REASON = (
    "POP3-only mailboxes send only as their own address and aliases; identities need IMAP"
)


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


def sender_address_set(session: Session, mailbox: Mailbox) -> frozenset[str]:
    """The addresses of sender_addresses(), for checking many addresses against them."""
    return frozenset(sender.address for sender in sender_addresses(session, mailbox))


def may_send_as(session: Session, mailbox: Mailbox, address: str) -> bool:
    """Whether `address` (any case) is one of the mailbox's sender addresses."""
    return address.strip().lower() in sender_address_set(session, mailbox)


# --- managing extra identities ---------------------------------------------------------------


def extras_unavailable_reason(mailbox: Mailbox) -> str | None:
    """Why `mailbox` may not have extra identities, or None when it may."""
    return None if mailbox.imap_enabled else POP3_ONLY_REASON


def normalize_display_name(display_name: str | None) -> str:
    """The display name as kept: trimmed, at most 200 characters, no control characters."""
    cleaned = (display_name or "").strip()
    if CONTROL_CHARACTERS.search(cleaned):
        raise InvalidInput(
            "the display name may not contain line breaks or control characters", "display_name"
        )
    if len(cleaned) > DISPLAY_NAME_MAX:
        raise InvalidInput(
            f"the display name may have at most {DISPLAY_NAME_MAX} characters", "display_name"
        )
    return cleaned


def _normalize_address(address: str) -> str:
    if CONTROL_CHARACTERS.search(address):
        # Checked before anything reaches the database: PostgreSQL refuses NUL in text.
        raise InvalidInput("an address may not contain control characters", "address")
    if len(address.strip()) > 320:
        raise InvalidInput("an address may have at most 320 characters", "address")
    local_part, domain_name = provisioning.split_address(address)
    return f"{local_part}@{domain_name}"


def _who_owns(session: Session, mailbox: Mailbox, address: str) -> str | None:
    """Why `address` cannot become an extra identity of `mailbox`, when another row owns it."""
    if address == mailbox.address:
        return f"{address} is this mailbox's own address: it may always send as it"
    owner = session.scalar(select(Mailbox.address).where(Mailbox.address == address))
    if owner is not None:
        return f"{address} is another mailbox: only that mailbox may send as it"
    alias_target = session.scalar(select(Alias.mailbox_id).where(Alias.address == address).limit(1))
    if alias_target == mailbox.id:
        return f"{address} is an alias of this mailbox: it may already send as it"
    if alias_target is not None:
        return (
            f"{address} is an alias of another mailbox: only that mailbox may send as it "
            "(move the alias to give it to this one)"
        )
    return None


def add_identity(
    session: Session,
    mailbox: Mailbox,
    address: str,
    display_name: str = "",
    *,
    actor: Actor,
    admin: AdminUser | None = None,
) -> Identity:
    """Allow `mailbox` to send as `address` (with `display_name`). `admin` is the admin who
    asks (a domain admin may only name their own domains); None is the operator at the CLI,
    who may name any hosted domain. Every check runs before anything is written. Audited;
    the caller commits."""
    reason = extras_unavailable_reason(mailbox)
    if reason:
        raise InvalidInput(reason, "address")
    # Another tenant's mailbox or domain reads as a missing one (404), and a domain admin gets
    # the same words for a domain that is not hosted at all: nothing about others leaks.
    scope = admin.managed_domain_ids() if admin is not None else None
    if scope is not None and mailbox.domain_id not in scope:
        raise NotFound(provisioning.OUT_OF_SCOPE, "address")
    wanted = _normalize_address(address)
    name = normalize_display_name(display_name)
    domain_name = wanted.rpartition("@")[2]
    provisioning.require_domain_in_scope(session, scope, domain_name)
    domain = session.scalar(select(Domain).where(Domain.name == domain_name))
    if domain is None:
        raise NotFound(f"domain {domain_name} is not hosted here", "address")
    taken = _who_owns(session, mailbox, wanted)
    if taken:
        raise AlreadyExists(taken, "address")
    duplicate = AlreadyExists(f"{wanted} is already an identity of {mailbox.address}", "address")
    if _identity_id(session, mailbox, wanted) is not None:
        raise duplicate
    identity = Identity(
        mailbox=mailbox,
        domain=domain,
        address=wanted,
        display_name=name,
        enabled=True,
        created_at=now(),
    )
    session.add(identity)
    try:
        session.flush()
    except IntegrityError:
        # Another request added it since the check above (the unique constraint decides).
        session.rollback()
        raise duplicate from None
    audit.record(
        session,
        actor,
        "identity.create",
        wanted,
        domain=mailbox.domain.name,
        after=identity.to_dict(),
    )
    return identity


def _identity_id(session: Session, mailbox: Mailbox, address: str) -> int | None:
    return session.scalar(
        select(Identity.id).where(Identity.mailbox_id == mailbox.id, Identity.address == address)
    )


def get_identity(session: Session, mailbox: Mailbox, address: str) -> Identity:
    """The extra identity `address` of `mailbox`, or NotFound."""
    wanted = address.strip().lower()
    identity = None
    if not CONTROL_CHARACTERS.search(wanted) and len(wanted) <= 320:
        identity = session.scalar(
            select(Identity).where(Identity.mailbox_id == mailbox.id, Identity.address == wanted)
        )
    if identity is None:
        raise NotFound(f"{mailbox.address} has no identity {address.strip()}", "address")
    return identity


def list_identities(session: Session, mailbox: Mailbox) -> list[Identity]:
    """The mailbox's extra identities (enabled or not), by address."""
    return list(
        session.scalars(
            select(Identity).where(Identity.mailbox_id == mailbox.id).order_by(Identity.address)
        )
    )


def set_identity(
    session: Session,
    identity: Identity,
    *,
    actor: Actor,
    display_name: str | None = None,
    enabled: bool | None = None,
) -> Identity:
    """Change an identity's display name and/or switch it on or off (None leaves a value as
    it is). Audited when something changed; the caller commits."""
    before = identity.to_dict()
    if display_name is not None:
        identity.display_name = normalize_display_name(display_name)
    if enabled is not None:
        identity.enabled = bool(enabled)
    after = identity.to_dict()
    if after != before:
        session.flush()
        audit.record(
            session,
            actor,
            "identity.update",
            identity.address,
            domain=identity.mailbox.domain.name,
            before=before,
            after=after,
        )
    return identity


def delete_identity(session: Session, identity: Identity, *, actor: Actor) -> None:
    """Take an extra identity away from its mailbox. Audited; the caller commits."""
    before = identity.to_dict()
    domain_name = identity.mailbox.domain.name
    session.delete(identity)
    session.flush()
    audit.record(
        session, actor, "identity.delete", before["address"], domain=domain_name, before=before
    )


@dataclass(frozen=True)
class SenderEntry:
    """One row of a mailbox's sender addresses as the panel, /account and the CLI show it."""

    address: str
    kind: str  # "mailbox" (its own address), "alias" or "identity"
    display_name: str = ""
    enabled: bool = True
    # False for an identity that is switched off or that a POP3-only policy makes unusable.
    usable: bool = True
    identity_id: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "kind": self.kind,
            "display_name": self.display_name,
            "enabled": self.enabled,
            "usable": self.usable,
        }


@dataclass(frozen=True)
class SenderOverview:
    """All of a mailbox's sender addresses, and why extras are unavailable when they are."""

    mailbox: str
    entries: list[SenderEntry] = field(default_factory=list)
    extras_unavailable: str | None = None

    @property
    def identities(self) -> list[SenderEntry]:
        return [entry for entry in self.entries if entry.kind == "identity"]

    def to_dict(self) -> dict[str, object]:
        return {
            "mailbox": self.mailbox,
            "senders": [entry.to_dict() for entry in self.entries],
            "extras_unavailable": self.extras_unavailable,
        }


def sender_overview(session: Session, mailbox: Mailbox) -> SenderOverview:
    """Every sender address of the mailbox with its kind, including switched-off identities
    (and the rows a POP3-only policy keeps but does not let it use)."""
    reason = extras_unavailable_reason(mailbox)
    entries = [SenderEntry(mailbox.address, "mailbox")]
    aliases = session.scalars(
        select(Alias.address).where(Alias.mailbox_id == mailbox.id).order_by(Alias.address)
    )
    entries.extend(SenderEntry(address, "alias") for address in aliases)
    entries.extend(
        SenderEntry(
            identity.address,
            "identity",
            identity.display_name,
            enabled=identity.enabled,
            usable=identity.enabled and reason is None,
            identity_id=identity.id,
        )
        for identity in list_identities(session, mailbox)
    )
    return SenderOverview(mailbox.address, entries, reason)
