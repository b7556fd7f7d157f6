"""Provisioning: create, change and delete domains, mailboxes and aliases — every rule once."""

from __future__ import annotations

import re
import shutil
from collections.abc import Collection, Iterable
from datetime import timedelta
from typing import Any

from flask import current_app, has_app_context
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.errors import AlreadyExists, DomainNotEmpty, InvalidInput, NotFound, ProviderError
from provider.models import Alias, Domain, Mailbox, MailboxStatus, Plan, Protocol
from provider.models.mailbox import Pop3Action
from provider.services import audit, auth, dkim, quota, storage, webhooks
from provider.services.aftercommit import on_commit
from provider.services.audit import Actor
from provider.services.clock import now
from provider.services.contacts import parse_optional_contact_email

# Local parts end up as directory names under DATA_DIR/mail/<domain>/, so they are held to a
# conservative alphabet; '+' is excluded because it separates plus-address tags.
LOCAL_PART = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
PROTOCOL_CHOICES = {
    "imap": {Protocol.IMAP.value},
    "pop3": {Protocol.POP3.value},
    "both": {Protocol.IMAP.value, Protocol.POP3.value},
}


def normalize_domain_name(name: str) -> str:
    """Lower-case, IDNA-encode and check a domain name; raise InvalidInput if it is not one."""
    cleaned = name.strip().rstrip(".").lower()
    try:
        ascii_name = cleaned.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInput(f"{name!r} is not a valid domain name", "name") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2 or not all(map(DOMAIN_LABEL.match, labels)):
        raise InvalidInput(f"{name!r} is not a valid domain name", "name")
    if labels[-1].isdigit():
        raise InvalidInput(f"{name!r} is not a valid domain name", "name")
    return ascii_name


def normalize_local_part(local_part: str, field: str = "local_part") -> str:
    cleaned = local_part.strip().lower()
    if not cleaned or len(cleaned) > 64 or not LOCAL_PART.match(cleaned):
        raise InvalidInput(
            f"{local_part!r} is not allowed before the @: use letters, digits, '.', '-' or '_'",
            field,
        )
    return cleaned


OUT_OF_SCOPE = "you can only use addresses in the domains you manage"


def require_domain_in_scope(
    session: Session, domain_ids: Collection[int] | None, domain_name: str, field: str = "address"
) -> None:
    """Refuse a domain outside `domain_ids` (a domain admin's domains; None = every domain).
    A domain hosted nowhere gets the same words, so nothing is learnt of other tenants."""
    if domain_ids is None:
        return
    domain_id = session.scalar(select(Domain.id).where(Domain.name == domain_name))
    if domain_id is None or domain_id not in domain_ids:
        raise NotFound(OUT_OF_SCOPE, field)


def split_address(address: str, field: str = "address") -> tuple[str, str]:
    """Split and normalize `local@domain`; raise InvalidInput on anything else."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise InvalidInput(f"{address!r} is not an e-mail address", field)
    try:
        return normalize_local_part(local, field), normalize_domain_name(domain)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field) from None


def parse_pop3_action(value: str) -> str:
    """Read a POP3 download action: keep (the default), seen or archive."""
    try:
        return Pop3Action(value.strip().lower()).value
    except ValueError:
        raise InvalidInput(
            f"unknown POP3 download action {value!r}: keep, seen or archive", "pop3_action"
        ) from None


def parse_protocols(value: str | Iterable[str]) -> set[str]:
    """Read a protocol policy: 'imap', 'pop3', 'both', 'imap,pop3' or a list of those."""
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, list | tuple | set | frozenset):
        # str(): a JSON list may hold numbers or null; they are unknown protocols, not a crash.
        names = [str(name) for name in value]
    else:
        raise InvalidInput("choose at least one protocol: imap, pop3 or both", "protocols")
    chosen: set[str] = set()
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        if name not in PROTOCOL_CHOICES:
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise InvalidInput(
                f"unknown protocol {shown!r}: choose imap, pop3 or both", "protocols"
            )
        chosen |= PROTOCOL_CHOICES[name]
    if not chosen:
        raise InvalidInput("choose at least one protocol: imap, pop3 or both", "protocols")
    return chosen


def _setting(name: str, default: Any) -> Any:
    return current_app.config.get(name, default) if has_app_context() else default


# --- domains -------------------------------------------------------------------------------


def get_domain(
    session: Session, name: str, *, allowed_domain_ids: Collection[int] | None = None
) -> Domain:
    """The domain called `name`; with `allowed_domain_ids` (a domain admin's), one outside them
    is refused exactly like a missing one, so other tenants' domains stay invisible."""
    try:
        normalized = normalize_domain_name(name)
    except InvalidInput:
        raise NotFound(f"domain {name!r} does not exist", "name") from None
    domain = session.scalar(select(Domain).where(Domain.name == normalized))
    if domain is None or (allowed_domain_ids is not None and domain.id not in allowed_domain_ids):
        raise NotFound(f"domain {normalized} does not exist", "name")
    return domain


def create_domain(
    session: Session, name: str, *, signup_enabled: bool = False, actor: Actor
) -> Domain:
    normalized = normalize_domain_name(name)
    if session.scalar(select(Domain.id).where(Domain.name == normalized)) is not None:
        raise AlreadyExists(f"domain {normalized} already exists", "name")
    domain = Domain(name=normalized, signup_enabled=signup_enabled, created_at=now())
    session.add(domain)
    session.flush()
    key = dkim.create_key(session, domain)
    audit.record(
        session,
        actor,
        "domain.create",
        normalized,
        domain=normalized,
        after={**domain.to_dict(), "dkim_selector": key.selector},
    )
    return domain


def _update_domain(session: Session, domain: Domain, actor: Actor, **changes: object) -> Domain:
    """Set the domain's columns and audit the change (before and after)."""
    before = domain.to_dict()
    for column, value in changes.items():
        setattr(domain, column, value)
    session.flush()
    audit.record(
        session,
        actor,
        "domain.update",
        domain.name,
        domain=domain.name,
        before=before,
        after=domain.to_dict(),
    )
    return domain


def set_domain_signup(session: Session, domain: Domain, enabled: bool, *, actor: Actor) -> Domain:
    """Open or close public signup; asking for the state it is in already changes (and
    audits) nothing, so a repeated request is harmless."""
    if domain.signup_enabled == enabled:
        return domain
    return _update_domain(session, domain, actor, signup_enabled=enabled)


POSTMASTER_MAX_TARGETS = 10


def parse_postmaster_targets(
    session: Session,
    value: str | Iterable[str] | None,
    *,
    allowed_domain_ids: set[int] | None = None,
) -> list[str]:
    """Read a postmaster target: addresses separated by commas, spaces or new lines (empty =
    the default). Each must be a mailbox or an alias hosted here — in a domain the admin
    manages when `allowed_domain_ids` is given — since mail is never forwarded outside yet."""
    if value is None:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    names = [word for part in parts for word in re.split(r"[\s,;]+", str(part)) if word]
    if len(names) > POSTMASTER_MAX_TARGETS:
        raise InvalidInput(
            f"at most {POSTMASTER_MAX_TARGETS} postmaster addresses, not {len(names)}",
            "postmaster",
        )
    addresses: list[str] = []
    for name in names:
        local, domain_name = split_address(name, "postmaster")
        address = f"{local}@{domain_name}"
        domain_id = session.scalar(select(Mailbox.domain_id).where(Mailbox.address == address))
        if domain_id is None:
            domain_id = session.scalar(select(Alias.domain_id).where(Alias.address == address))
        if domain_id is None or (
            allowed_domain_ids is not None and domain_id not in allowed_domain_ids
        ):
            raise InvalidInput(
                f"{address} is not a mailbox or alias hosted here; postmaster mail can only "
                "go to hosted addresses",
                "postmaster",
            )
        if address not in addresses:
            addresses.append(address)
    return addresses


def set_domain_postmaster(
    session: Session,
    domain: Domain,
    value: str | Iterable[str] | None,
    *,
    actor: Actor,
    allowed_domain_ids: set[int] | None = None,
) -> Domain:
    """Choose where mail to postmaster@DOMAIN goes when no mailbox or alias has that name
    (RFC 5321 §4.5.1); an empty value restores the default (services/delivery)."""
    addresses = parse_postmaster_targets(session, value, allowed_domain_ids=allowed_domain_ids)
    return _update_domain(session, domain, actor, postmaster=", ".join(addresses) or None)


def delete_domain(session: Session, domain: Domain, *, actor: Actor) -> None:
    """Delete an empty domain. A domain that still holds mailboxes or aliases is refused."""
    mailboxes = session.scalar(select(func.count()).where(Mailbox.domain_id == domain.id)) or 0
    aliases = session.scalar(select(func.count()).where(Alias.domain_id == domain.id)) or 0
    if mailboxes or aliases:
        raise DomainNotEmpty(
            f"domain {domain.name} still has {mailboxes} mailbox(es) and {aliases} alias(es); "
            "delete them first",
            "name",
        )
    before = domain.to_dict()
    session.delete(domain)
    session.flush()
    audit.record(session, actor, "domain.delete", domain.name, domain=domain.name, before=before)


# --- mailboxes -----------------------------------------------------------------------------


def get_mailbox(
    session: Session, address: str, *, allowed_domain_ids: Collection[int] | None = None
) -> Mailbox:
    """The mailbox at `address`; outside `allowed_domain_ids` (when given) it does not exist."""
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address.strip().lower()))
    if mailbox is None or (
        allowed_domain_ids is not None and mailbox.domain_id not in allowed_domain_ids
    ):
        raise NotFound(f"mailbox {address.strip()} does not exist", "address")
    return mailbox


def _address_taken(session: Session, address: str) -> str | None:
    return taken_addresses(session, [address]).get(address)


# Addresses per IN (…) list: far below SQLite's and PostgreSQL's limits on bound parameters.
TAKEN_CHUNK = 500


def taken_addresses(session: Session, addresses: Iterable[str]) -> dict[str, str]:
    """Which of these (normalized) addresses a mailbox or an alias already has, each with the
    reason a new mailbox cannot take it; a few queries for any number (CSV import)."""
    wanted = sorted(set(addresses))
    taken: dict[str, str] = {}
    for start in range(0, len(wanted), TAKEN_CHUNK):
        chunk = wanted[start : start + TAKEN_CHUNK]
        for address in session.scalars(select(Alias.address).where(Alias.address.in_(chunk))):
            taken[address] = f"{address} is already an alias"
        for address in session.scalars(select(Mailbox.address).where(Mailbox.address.in_(chunk))):
            taken[address] = f"mailbox {address} already exists"
    return taken


def create_mailbox(
    session: Session,
    address: str,
    password: str,
    quota_gb: object,
    protocols: str | Iterable[str],
    *,
    actor: Actor,
    plan: str = Plan.PAID.value,
    contact_email: str | None = None,
    pop3_action: str = Pop3Action.KEEP.value,
    allowed_domain_ids: Collection[int] | None = None,
) -> Mailbox:
    """Create a mailbox; every check runs before anything is written, so failure leaves nothing.
    A domain outside `allowed_domain_ids` (a domain admin's, when given) is not hosted here."""
    local_part, domain_name = split_address(address)
    full_address = f"{local_part}@{domain_name}"
    domain = session.scalar(select(Domain).where(Domain.name == domain_name))
    if domain is None or (allowed_domain_ids is not None and domain.id not in allowed_domain_ids):
        raise NotFound(f"domain {domain_name} is not hosted here; add it first", "address")
    taken = _address_taken(session, full_address)
    if taken:
        raise AlreadyExists(taken, "address")
    quota_bytes = quota.quota_bytes_from_gb(quota_gb)
    allowed = parse_protocols(protocols)
    action = parse_pop3_action(pop3_action)
    auth.check_password_policy(password, address=full_address)
    mailbox = new_mailbox(
        domain,
        local_part,
        auth.hash_password(password),
        quota_bytes,
        allowed,
        plan=Plan(plan).value,
        contact_email=normalize_contact(contact_email),
        pop3_action=action,
    )
    session.add(mailbox)
    session.flush()
    # The Maildir (INBOX and the special folders) exists before the mailbox is committed, so
    # mail can be delivered from its first second; creating it is idempotent.
    storage.mail_store().create(full_address)
    record = mailbox.to_dict()
    audit.record(session, actor, "mailbox.create", full_address, domain=domain_name, after=record)
    webhooks.emit(
        session,
        "mailbox.created",
        domain=domain_name,
        object_key=webhooks.mailbox_key(full_address),
        data=record,
    )
    return mailbox


def new_mailbox(
    domain: Domain,
    local_part: str,
    password_hash: str,
    quota_bytes: int,
    protocols: set[str],
    *,
    plan: str,
    contact_email: str | None,
    pop3_action: str,
) -> Mailbox:
    """The row of a new mailbox from values already checked (create_mailbox, CSV import): an
    active mailbox, a trial one expiring TRIAL_DAYS from now."""
    created = now()
    mailbox = Mailbox(
        domain=domain,
        local_part=local_part,
        address=f"{local_part}@{domain.name}",
        password_hash=password_hash,
        quota_bytes=quota_bytes,
        used_bytes=0,
        status=MailboxStatus.ACTIVE.value,
        plan=plan,
        contact_email=contact_email,
        pop3_action=pop3_action,
        created_at=created,
        updated_at=created,
        trial_expires_at=(
            created + timedelta(days=int(_setting("TRIAL_DAYS", 30)))
            if plan == Plan.TRIAL.value
            else None
        ),
    )
    mailbox.protocols = protocols
    return mailbox


def normalize_contact(contact_email: str | None) -> str | None:
    """The contact address as kept (services/contacts: strict parse, IDNA lower-case domain);
    None or blank = none."""
    return parse_optional_contact_email(contact_email)


def update_mailbox(
    session: Session,
    mailbox: Mailbox,
    *,
    actor: Actor,
    quota_gb: object | None = None,
    protocols: str | Iterable[str] | None = None,
    status: str | None = None,
    plan: str | None = None,
    password: str | None = None,
    contact_email: str | None = None,
    pop3_action: str | None = None,
) -> Mailbox:
    """Change any of a mailbox's settings; all are checked before any is applied."""
    before = mailbox.to_dict()
    changes: dict[str, Any] = {}
    if quota_gb is not None:
        new_quota = quota.quota_bytes_from_gb(quota_gb)
        if new_quota < mailbox.used_bytes:
            raise InvalidInput(
                f"quota cannot go below what the mailbox already holds "
                f"({quota.format_gb(round(mailbox.used_bytes / quota.GIB, 2))} GB)",
                "quota_gb",
            )
        changes["quota_bytes"] = new_quota
    if protocols is not None:
        changes["protocols"] = parse_protocols(protocols)
    if status is not None:
        try:
            changes["status"] = MailboxStatus(status.strip().lower()).value
        except ValueError:
            raise InvalidInput(
                f"unknown status {status!r}: active or suspended", "status"
            ) from None
    if plan is not None:
        try:
            changes["plan"] = Plan(plan.strip().lower()).value
        except ValueError:
            raise InvalidInput(f"unknown plan {plan!r}: trial or paid", "plan") from None
    if password is not None:
        auth.check_password_policy(password, address=mailbox.address)
        changes["password_hash"] = auth.hash_password(password)
    if contact_email is not None:
        changes["contact_email"] = normalize_contact(contact_email)
    if pop3_action is not None:
        changes["pop3_action"] = parse_pop3_action(pop3_action)

    old_plan = mailbox.plan
    if "plan" in changes and changes["plan"] != mailbox.plan:
        if changes["plan"] == Plan.PAID.value:
            mailbox.trial_expires_at = None
            if mailbox.status == MailboxStatus.EXPIRED.value and "status" not in changes:
                changes["status"] = MailboxStatus.ACTIVE.value
        else:
            mailbox.trial_expires_at = now() + timedelta(days=int(_setting("TRIAL_DAYS", 30)))
    if changes.get("status", mailbox.status) != mailbox.status:
        # Suspending ends the owner's /account sessions; reactivating must not revive them.
        mailbox.session_epoch += 1
    for name, value in changes.items():
        setattr(mailbox, name, value)
    after = mailbox.to_dict()
    if after == before and "password_hash" not in changes:
        return mailbox  # a form saved unchanged: nothing to record
    mailbox.updated_at = now()
    session.flush()
    if mailbox.plan != old_plan:
        # Imported here: the trial service builds on this module.
        from provider.services import trials

        trials.plan_changed(session, mailbox, old_plan, actor)
    action = "mailbox.password" if set(changes) == {"password_hash"} else "mailbox.update"
    audit.record(
        session,
        actor,
        action,
        mailbox.address,
        domain=mailbox.domain.name,
        before=before,
        after=after,
    )
    key = webhooks.mailbox_key(mailbox.address)
    changed = {"mailbox": after, "changed": sorted(k for k in after if after[k] != before.get(k))}
    if "password_hash" in changes:
        changed["changed"].append("password")
    webhooks.emit(
        session, "mailbox.updated", domain=mailbox.domain.name, object_key=key, data=changed
    )
    if after["status"] == MailboxStatus.SUSPENDED.value != before["status"]:
        webhooks.emit(
            session, "mailbox.suspended", domain=mailbox.domain.name, object_key=key, data=after
        )
    return mailbox


def delete_mailbox(session: Session, mailbox: Mailbox, *, actor: Actor) -> None:
    """Delete the mailbox and its aliases, and its mail and backups on disk once committed."""
    before = mailbox.to_dict()
    domain_name = mailbox.domain.name
    address = mailbox.address
    if mailbox.plan == Plan.TRIAL.value:
        from provider.services import trials

        trials.mailbox_deleted(session, mailbox)
    for alias in list(mailbox.aliases):
        session.delete(alias)
    session.delete(mailbox)
    session.flush()
    # The mail and its backups go only once the deletion is committed; a rolled-back delete
    # keeps them. (The snapshot index rows go with the mailbox row: kept files could never be
    # listed or restored again, only take disk space.)
    from provider.services import backups

    backup_root = backups.store_for(address).root
    on_commit(session, lambda: storage.mail_store().remove(address))
    on_commit(session, lambda: shutil.rmtree(backup_root, ignore_errors=True))
    audit.record(
        session, actor, "mailbox.delete", before["address"], domain=domain_name, before=before
    )
    webhooks.emit(
        session,
        "mailbox.deleted",
        domain=domain_name,
        object_key=webhooks.mailbox_key(address),
        data=before,
    )


# --- aliases -------------------------------------------------------------------------------


def get_alias(
    session: Session, address: str, *, allowed_domain_ids: Collection[int] | None = None
) -> Alias:
    """The alias at `address`; outside `allowed_domain_ids` (when given) it does not exist."""
    alias = session.scalar(select(Alias).where(Alias.address == address.strip().lower()))
    if alias is None or (
        allowed_domain_ids is not None and alias.domain_id not in allowed_domain_ids
    ):
        raise NotFound(f"alias {address.strip()} does not exist", "address")
    return alias


def create_alias(
    session: Session,
    address: str,
    mailbox: Mailbox,
    *,
    actor: Actor,
    allowed_domain_ids: Collection[int] | None = None,
) -> Alias:
    """Add an address in a hosted domain that delivers to `mailbox` and that it may send as;
    a domain outside `allowed_domain_ids` (a domain admin's, when given) is not hosted here."""
    local_part, domain_name = split_address(address)
    full_address = f"{local_part}@{domain_name}"
    domain = session.scalar(select(Domain).where(Domain.name == domain_name))
    if domain is None or (allowed_domain_ids is not None and domain.id not in allowed_domain_ids):
        raise NotFound(f"domain {domain_name} is not hosted here", "address")
    taken = _address_taken(session, full_address)
    if taken:
        raise AlreadyExists(taken, "address")
    alias = Alias(address=full_address, domain=domain, mailbox=mailbox, created_at=now())
    session.add(alias)
    session.flush()
    audit.record(
        session, actor, "alias.create", full_address, domain=domain_name, after=alias.to_dict()
    )
    return alias


def delete_alias(session: Session, alias: Alias, *, actor: Actor) -> None:
    before = alias.to_dict()
    domain_name = alias.domain.name
    session.delete(alias)
    session.flush()
    audit.record(
        session, actor, "alias.delete", before["address"], domain=domain_name, before=before
    )


__all__ = [
    "ProviderError",
    "create_alias",
    "create_domain",
    "create_mailbox",
    "delete_alias",
    "delete_domain",
    "delete_mailbox",
    "get_alias",
    "get_domain",
    "get_mailbox",
    "parse_pop3_action",
    "parse_protocols",
    "set_domain_signup",
    "update_mailbox",
]
