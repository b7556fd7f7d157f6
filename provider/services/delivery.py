"""Local delivery: resolve a recipient, check and reserve quota, store the message, warn.

The protocol listeners (LMTP, inbound SMTP) call these functions from a worker thread with an
app context; everything here is blocking (database, fsync) by design.
"""

from __future__ import annotations

import email.utils
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.errors import (
    InvalidInput,
    MailboxDisabled,
    ProviderError,
    QuotaExceeded,
    RelayDenied,
    TemporaryFailure,
    UnknownRecipient,
)
from provider.mailstore import (
    INBOX,
    Folder,
    FolderExists,
    FolderNotFound,
    InvalidFolderName,
    Maildir,
    MailStore,
    StoredMessage,
)
from provider.models import AdminUser, Alias, Domain, Mailbox, MailboxStatus, admin_domains
from provider.services import (
    daily_stats,
    quota,
    sieve_actions,
    sieve_delivery,
    sieve_duplicates,
    sieve_scripts,
)
from provider.services.clock import now
from provider.services.provisioning import split_address

log = logging.getLogger(__name__)

POSTMASTER = "postmaster"
# Postmaster mail nobody here can receive waits in DATA_DIR/postmaster/<domain>/Maildir; the
# cap keeps anyone on the Internet from filling the disk through it.
POSTMASTER_SPOOL_MAX_BYTES = 256 * 1024 * 1024
SERVER_SPOOL = "_server"  # the spool of RCPT TO:<postmaster> without a domain


class PostmasterSpoolFull(TemporaryFailure):
    """The postmaster spool reached its cap: the sender keeps the message and retries."""

    smtp_reply = "452 4.3.1"


class SieveRejected(ProviderError):
    """The recipient's Sieve script rejected the message (RFC 5429): a permanent refusal, so
    LMTP/SMTP answer 550 and the outbound queue returns a DSN."""

    smtp_reply = "550 5.7.1"


@dataclass(frozen=True)
class Destination:
    """The mailbox a recipient address resolves to."""

    mailbox_id: int
    address: str
    domain: str


@dataclass(frozen=True)
class Route:
    """Where one accepted recipient's mail goes: its mailbox (the usual case), or for
    postmaster@ the domain's postmaster target, with the postmaster spool as the last resort
    (`spool` names it; None for ordinary recipients, which are refused instead)."""

    address: str
    destinations: tuple[Destination, ...]
    spool: str | None = None
    # The RCPT address as the client gave it (plus tag, alias, case): a Sieve script's
    # envelope "to" (RFC 5228 §5.4), as Pigeonhole sees it. None: the mailbox's address.
    recipient: str | None = None


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


def resolve_route(session: Session, recipient: str) -> Route:
    """What a RCPT address delivers to. Like resolve(), but postmaster@ (any case, and bare
    `postmaster`, RFC 5321 §4.1.1.3) is never refused for a domain we host (RFC 5321 §4.5.1):
    a mailbox or alias of that name wins, otherwise the domain's postmaster target."""
    cleaned = recipient.strip().strip("<>").strip()
    if cleaned.lower() == POSTMASTER:
        return postmaster_route(session, None)
    try:
        destination = resolve(session, recipient)
    except (UnknownRecipient, MailboxDisabled):
        local = cleaned.rpartition("@")[0]
        if local.split("+", 1)[0].lower() != POSTMASTER:
            raise
        return postmaster_route(session, _normalize_recipient(recipient)[1])
    return Route(destination.address, (destination,), recipient=cleaned or None)


def _hosted_destination(session: Session, address: str) -> Destination | None:
    """The active mailbox an address delivers to, if it is hosted here (never a postmaster
    target itself, so targets cannot loop)."""
    try:
        return resolve(session, address)
    except ProviderError:
        return None


def postmaster_targets(session: Session, domain_name: str | None) -> list[Destination]:
    """The mailboxes that receive postmaster@`domain_name` (None: the server's postmaster),
    first match wins: the domain's configured postmaster addresses; else the domain's own
    admins whose e-mail addresses are hosted here; else the first superadmin whose e-mail
    address is hosted here. Empty when none of them has a mailbox here (the spool then)."""
    groups: list[list[str]] = []
    if domain_name is not None:
        domain = session.scalar(select(Domain).where(Domain.name == domain_name))
        if domain is None:
            raise RelayDenied(f"<{POSTMASTER}@{domain_name}>: relay access denied")
        groups.append(domain.postmaster_addresses)
        groups.append(
            list(
                session.scalars(
                    select(AdminUser.email)
                    .join(admin_domains, admin_domains.c.admin_id == AdminUser.id)
                    .where(
                        admin_domains.c.domain_id == domain.id,
                        AdminUser.active.is_(True),
                        AdminUser.is_superadmin.is_(False),
                    )
                    .order_by(AdminUser.id)
                )
            )
        )
    superadmins = session.scalars(
        select(AdminUser.email)
        .where(AdminUser.is_superadmin.is_(True), AdminUser.active.is_(True))
        .order_by(AdminUser.id)
    )
    groups.extend([email] for email in superadmins)
    for group in groups:
        found: dict[int, Destination] = {}
        for address in group:
            destination = _hosted_destination(session, address)
            if destination is not None:
                found.setdefault(destination.mailbox_id, destination)
        if found:
            return list(found.values())
    return []


def postmaster_route(session: Session, domain_name: str | None) -> Route:
    """The route of postmaster@`domain_name` when no active mailbox or alias has that name."""
    targets = postmaster_targets(session, domain_name)
    address = f"{POSTMASTER}@{domain_name}" if domain_name else POSTMASTER
    return Route(address, tuple(targets), spool=domain_name or SERVER_SPOOL)


def postmaster_spool_path(spool: str) -> Path:
    """DATA_DIR/postmaster/<domain>/Maildir: a plain Maildir an operator can read with any
    mail client (mutt -f) or move into a mailbox."""
    return Path(current_app.config["DATA_DIR"]) / "postmaster" / spool / "Maildir"


def _spool_folder(spool: str) -> Maildir:
    path = postmaster_spool_path(spool)
    for directory in (path / "cur", path / "new", path / "tmp"):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    return Maildir(path)


def _spool_room(spool: str, size: int) -> None:
    path = postmaster_spool_path(spool)
    used = Maildir(path).usage_bytes() if (path / "cur").is_dir() else 0
    if used + size > POSTMASTER_SPOOL_MAX_BYTES:
        raise PostmasterSpoolFull(
            f"the postmaster mailbox of {spool} is full; try again later", None
        )


def spool_message(spool: str, message: bytes) -> StoredMessage:
    """Keep postmaster mail nobody here can receive (yet) in the postmaster spool."""
    _spool_room(spool, len(message))
    try:
        stored = _spool_folder(spool).folder(INBOX).deliver(message)
    except Exception as exc:
        log.exception("postmaster spool %s could not store a message", spool)
        raise TemporaryFailure("temporary failure storing the message; try again later") from exc
    log.warning(
        "postmaster mail kept in %s: give the domain a postmaster target (admin domain page "
        "or `provider domain set NAME --postmaster ADDRESS`)",
        postmaster_spool_path(spool),
    )
    return stored


def check_route(session: Session, route: Route, size: int) -> None:
    """Refuse early (at RCPT) what cannot be stored; postmaster mail falls back to the spool."""
    failure: ProviderError | None = None
    for destination in route.destinations:
        try:
            check_room(session, destination, size)
        except QuotaExceeded as exc:
            failure = failure or exc
        else:
            return
    if route.spool is not None:
        _spool_room(route.spool, size)
        return
    if failure is not None:
        raise failure


def deliver_route(
    session: Session,
    store: MailStore,
    route: Route,
    message_for: Callable[[str], bytes],
    *,
    promised: bool = False,
    sender: str = "",
) -> None:
    """Store one copy per destination of the route (`message_for(address)` gives the bytes
    with that copy's trace headers). Succeeds when at least one copy is stored; postmaster mail
    that no target can take for good (full, suspended) goes to the postmaster spool; otherwise
    the first refusal is raised (a temporary one first, so the sender retries).

    `promised`: see store_message; ordinary recipients only (postmaster mail has the spool).
    `sender`: the envelope's reverse path ('' for <>), for the recipient's Sieve script, which
    runs for ordinary recipients only (postmaster mail reaches a person unfiltered).
    """
    failures: list[ProviderError] = []
    delivered = 0
    for destination in route.destinations:
        message = message_for(destination.address)
        try:
            if route.spool is None:
                # SMTP already said yes to this recipient at RCPT: keep the promise.
                filtered_store(
                    session,
                    store,
                    destination,
                    message,
                    sender,
                    promised=promised,
                    envelope_to=route.recipient,
                )
            else:
                store_message(session, store, destination, message)
        except ProviderError as exc:
            failures.append(exc)
            continue
        except Exception:
            log.exception("delivery to %s failed", destination.address)
            failures.append(TemporaryFailure("temporary failure; try again later"))
            continue
        delivered += 1
    if delivered:
        daily_stats.count("deliveries", delivered)
        return
    temporary = [f for f in failures if isinstance(f, TemporaryFailure)]
    if route.spool is not None and not temporary:
        spool_message(route.spool, message_for(route.address))
        return
    raise (temporary or failures or [TemporaryFailure("no destination; try again later")])[0]


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
    folder = store.open(destination.address).folder(INBOX)
    return store_into(session, store, destination, folder, message, promised=promised)


def store_into(
    session: Session,
    store: MailStore,
    destination: Destination,
    folder: Folder,
    message: bytes,
    *,
    flags: tuple[str, ...] = (),
    keywords: tuple[str, ...] = (),
    promised: bool = False,
) -> StoredMessage:
    """store_message into any folder of the mailbox, with flags and keywords."""
    size = len(message)
    held = quota.hold(session, destination.mailbox_id, size, force=promised)
    if held is None:
        raise QuotaExceeded(f"<{destination.address}>: mailbox full")
    try:
        stored = folder.deliver(message, flags=flags, keywords=keywords)
    except Exception as exc:
        log.exception("delivery to %s failed; releasing %d bytes", destination.address, size)
        held.cancel()
        raise TemporaryFailure("temporary failure storing the message; try again later") from exc
    held.confirm()
    if quota.crosses_new_level(held.usage):
        _warn_if_crossed(session, store, destination)
    return stored


def filtered_store(
    session: Session,
    store: MailStore,
    destination: Destination,
    message: bytes,
    sender: str,
    *,
    promised: bool = False,
    envelope_to: str | None = None,
) -> list[StoredMessage]:
    """Deliver as the mailbox's active Sieve script says (INBOX when it has none).
    `envelope_to` is the RCPT address as given (the script's envelope "to"); None: the
    mailbox's own address.

    A rule never loses mail: a script that fails, a folder that is missing (without :create)
    or cannot be made, a copy that cannot be written — each falls back to INBOX, and what went
    wrong goes to the owner's ~/.dovecot.sieve.log. Quota is charged per stored copy; when no
    copy fits, the delivery is refused as over quota like any other. `discard` stores nothing
    and succeeds; `reject` raises SieveRejected (except for a promised SMTP recipient, who can
    no longer be refused alone: kept, with a note).
    """
    home = sieve_scripts.home_of(store, destination.address)
    if not os.path.lexists(home / sieve_scripts.ACTIVE_LINK):  # the usual case: one lstat
        return [store_message(session, store, destination, message, promised=promised)]
    imap_allowed = bool(
        session.scalar(select(Mailbox.imap_enabled).where(Mailbox.id == destination.mailbox_id))
    )
    duplicates = sieve_duplicates.DuplicateTracker(session, destination.mailbox_id)
    plan = sieve_delivery.plan_for(
        home,
        message,
        sender,
        envelope_to or destination.address,
        imap_allowed=imap_allowed,
        context=sieve_delivery.mailbox_context(
            store.open(destination.address), seen=duplicates.seen
        ),
    )
    if plan is None:
        return [store_message(session, store, destination, message, promised=promised)]
    if plan.reject is not None and promised:
        plan.notes.append(
            f"reject ({plan.reject}) is not possible for a message accepted for several "
            "recipients over SMTP; the message was kept in INBOX"
        )
        plan.stores, plan.reject = [sieve_delivery.KEEP], None
    try:
        if plan.reject is not None:
            raise SieveRejected(plan.reject)
        if plan.redirects:
            # Queued before the copies are stored: a redirect that cannot be queued turns
            # into a keep, never a lost message.
            targets = [(r.address, r.copy) for r in plan.redirects]
            if sieve_actions.redirect(
                session,
                destination.mailbox_id,
                destination.address,
                message,
                sender,
                targets,
                plan.notes,
            ):
                sieve_delivery.add_keep(plan)
        stored = _carry_out(session, store, destination, message, plan, promised)
        duplicates.record()  # delivered (or discarded as the script said): RFC 7352 §3
        if plan.vacation is not None:
            sieve_actions.vacation(
                session,
                destination.mailbox_id,
                destination.address,
                message,
                sender,
                plan.vacation,
                plan.notes,
            )
        return stored
    finally:
        _record_notes(home, destination, plan.notes)


def _carry_out(
    session: Session,
    store: MailStore,
    destination: Destination,
    message: bytes,
    plan: sieve_delivery.Plan,
    promised: bool,
) -> list[StoredMessage]:
    maildir = store.open(destination.address)
    stored: list[StoredMessage] = []
    over_quota: QuotaExceeded | None = None
    into_inbox = inbox_stored = False
    for planned in plan.stores:
        try:
            folder = _target_folder(maildir, planned)
        except (FolderNotFound, InvalidFolderName) as error:
            plan.notes.append(f"fileinto {planned.folder!r}: {error}; kept in INBOX instead")
            into_inbox = True
            continue
        try:
            copy = store_into(
                session,
                store,
                destination,
                folder,
                message,
                flags=planned.flags,
                keywords=planned.keywords,
                promised=promised,
            )
        except QuotaExceeded as error:
            over_quota = over_quota or error
            plan.notes.append(f"no room for the copy in {planned.folder!r} (mailbox full)")
            continue
        except ProviderError as error:
            plan.notes.append(f"storing into {planned.folder!r} failed: {error.message}")
            into_inbox = True
            continue
        inbox_stored = inbox_stored or folder.name == INBOX
        stored.append(copy)
        if copy.dropped_keywords:
            plan.notes.append(
                f"keywords {', '.join(copy.dropped_keywords)} left out: the folder "
                f"{planned.folder!r} has no room for more keywords"
            )
    if (into_inbox or (plan.stores and not stored)) and not inbox_stored:
        if over_quota is not None and not stored:
            raise over_quota  # the mailbox is full: refused like any over-quota delivery
        stored.append(store_message(session, store, destination, message, promised=promised))
    return stored


def _target_folder(maildir: Maildir, planned: sieve_delivery.PlannedStore) -> Folder:
    """The folder to store into; with :create, made when missing (RFC 5490 §3.2)."""
    try:
        return maildir.folder(planned.folder)
    except FolderNotFound:
        if not planned.create:
            raise
    try:
        return maildir.create_folder(planned.folder)
    except FolderExists:  # made by someone else meanwhile
        return maildir.folder(planned.folder)


def _record_notes(home: Path, destination: Destination, notes: list[str]) -> None:
    """Tell the owner (~/.dovecot.sieve.log) and the operator (the log) what the script could
    not do; a failure to write the note never fails the delivery."""
    for note in notes:
        log.warning("sieve %s: %s", destination.address, note)
        try:
            sieve_scripts.record_error(home, note, now())
        except OSError:
            log.exception("could not write the Sieve error log of %s", destination.address)


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
    try:
        deliver_notice(session, store, destination.mailbox_id, destination.address, warning)
    except Exception:
        log.exception("quota warning to %s could not be stored", destination.address)


def deliver_notice(
    session: Session, store: MailStore, mailbox_id: int, address: str, message: bytes
) -> None:
    """A notice of ours (quota warning, trial reminder) into INBOX: counted against the quota
    but never refused for it (it is small, and it is what tells the customer), journaled like
    every write (a kill -9 meanwhile is settled at start). Raises what storing raised."""
    held = quota.hold(session, mailbox_id, len(message), force=True)
    if held is None:
        return  # the mailbox was deleted meanwhile
    try:
        store.open(address).folder("INBOX").deliver(message)
    except BaseException:
        held.cancel()
        raise
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
