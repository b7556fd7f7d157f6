"""Trials: public signup rules and the lifecycle (remind, expire, delete after grace, convert)."""

from __future__ import annotations

import email.utils
import logging
import math
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from flask import current_app, has_app_context
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provider.errors import InvalidInput, ProviderError
from provider.mailstore import MailStore
from provider.models import (
    Alias,
    Domain,
    Mailbox,
    MailboxStatus,
    Plan,
    Trial,
    TrialOutcome,
    TrialReminder,
    UpgradeRequest,
    UpgradeStatus,
)
from provider.services import audit, auth, outbound, provisioning, webhooks
from provider.services.audit import Actor
from provider.services.clock import now
from provider.services.contacts import FIELD, parse_contact_email
from provider.services.delivery import deliver_notice

log = logging.getLogger(__name__)

SIGNUP_ACTOR_NAME = "signup"
# One text for every refusal that could tell a stranger something about other people's
# addresses or contacts: reserved, taken, alias, contact already holding a trial.
SIGNUP_REFUSED = "This address cannot be signed up. Check your details or choose another address."
# Role addresses (RFC 2142 and common practice) and names that would confuse customers or
# could be used to impersonate the provider. Compared with '.', '-' and '_' removed, so
# "post.master" and "no_reply" are refused too.
RESERVED_LOCAL_PARTS = frozenset(
    name.replace(".", "").replace("-", "").replace("_", "")
    for name in [
        "postmaster",
        "abuse",
        "admin",
        "administrator",
        "hostmaster",
        "root",
        "webmaster",
        "noreply",
        "no-reply",
        "donotreply",
        "do-not-reply",
        "mailer-daemon",
        "maildaemon",
        "daemon",
        "security",
        "support",
        "info",
        "help",
        "contact",
        "sales",
        "billing",
        "marketing",
        "office",
        "mail",
        "email",
        "webmail",
        "noc",
        "ftp",
        "www",
        "news",
        "usenet",
        "uucp",
        "list",
        "lists",
        "listmaster",
        "majordomo",
        "nobody",
        "operator",
        "sysadmin",
        "system",
        "staff",
        "team",
        "test",
        "trial",
        "bounce",
        "bounces",
        "dmarc",
        "autoconfig",
        "autodiscover",
        "ssladmin",
        "ssladministrator",
        "wpad",
        "api",
        "account",
        "accounts",
        "signup",
        "register",
        "privacy",
        "legal",
        "compliance",
        "spam",
        "phishing",
        "owner",
        "manager",
    ]
)
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
DEFAULT_REMINDER_DAYS = (7, 3, 1)


class SignupRefused(InvalidInput):
    """A signup refused for a reason that must not be told apart from the others."""

    def __init__(self) -> None:
        super().__init__(SIGNUP_REFUSED, "local_part")


# --- settings ------------------------------------------------------------------------------


def _setting(name: str, default: Any) -> Any:
    return current_app.config.get(name, default) if has_app_context() else default


def reminder_days() -> list[int]:
    """TRIAL_REMINDER_DAYS ("7,3,1"), most distant first; empty = no reminders."""
    raw = str(_setting("TRIAL_REMINDER_DAYS", "7,3,1"))
    days = {int(part) for part in raw.replace(" ", "").split(",") if part}
    if any(day <= 0 for day in days):
        raise InvalidInput(f"TRIAL_REMINDER_DAYS must be positive whole days, not {raw!r}")
    return sorted(days, reverse=True)


def grace_period() -> timedelta:
    return timedelta(days=float(_setting("TRIAL_GRACE_DAYS", 30)))


def trial_quota_gb() -> object:
    return _setting("TRIAL_QUOTA_GB", 8)


def public_hostname() -> str:
    """HOSTNAME, or the machine's FQDN (the same name the mail servers greet with)."""
    return str(_setting("HOSTNAME", "") or socket.getfqdn())


def account_url() -> str:
    """Where a customer logs in to see their mailbox (PUBLIC_WEB_URL, else https://HOSTNAME)."""
    base = str(_setting("PUBLIC_WEB_URL", "") or f"https://{public_hostname()}")
    return base.rstrip("/") + "/account/"


# --- contacts ------------------------------------------------------------------------------


def normalize_contact(contact_email: str) -> str:
    """The identity a contact address stands for: lower-case, `+tag` removed, and for Gmail
    dots ignored and googlemail.com read as gmail.com (RELIABILITY T3). The address is parsed
    strictly first (services/contacts), so `me@example.org\n1` is no other identity."""
    local, _, domain = parse_contact_email(contact_email).lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", ""), "gmail.com"
    if not local:
        raise InvalidInput("This is not a valid e-mail address: nothing before the +tag.", FIELD)
    return f"{local}@{domain}"


def is_reserved(local_part: str) -> bool:
    return local_part.lower().replace(".", "").replace("-", "").replace("_", "") in (
        RESERVED_LOCAL_PARTS
    )


# --- trial records ---------------------------------------------------------------------------


def current_trial(session: Session, mailbox: Mailbox) -> Trial | None:
    return session.scalar(
        select(Trial)
        .where(Trial.mailbox_id == mailbox.id, Trial.outcome == TrialOutcome.OPEN.value)
        .order_by(Trial.id.desc())
        .limit(1)
    )


def ensure_trial(session: Session, mailbox: Mailbox, *, source: str = "admin") -> Trial:
    """The mailbox's open trial record, made now if it has none (admin-made trials get theirs
    from the first service that needs it: the lifecycle job, a conversion or a deletion)."""
    trial = current_trial(session, mailbox)
    if trial is None:
        trial = Trial(
            mailbox_id=mailbox.id,
            address=mailbox.address,
            domain=mailbox.address.rpartition("@")[2],
            contact_key=_contact_key_or_none(mailbox.contact_email),
            source=source,
            started_at=mailbox.created_at or now(),
            outcome=TrialOutcome.OPEN.value,
        )
        session.add(trial)
        session.flush()
    return trial


def _contact_key_or_none(contact_email: str | None) -> str | None:
    if not contact_email:
        return None
    try:
        return normalize_contact(contact_email)
    except InvalidInput:
        return None


def plan_changed(session: Session, mailbox: Mailbox, old_plan: str, actor: Actor) -> None:
    """Bookkeeping when provisioning changes a mailbox's plan: trial → paid ends the trial as
    converted; paid → trial opens a new trial period (its reminders start afresh)."""
    if old_plan == Plan.TRIAL.value and mailbox.plan == Plan.PAID.value:
        trial = ensure_trial(session, mailbox)
        trial.end(TrialOutcome.CONVERTED, now())
        _answer_pending_requests(session, mailbox, actor)
        audit.record(
            session,
            actor,
            "trial.convert",
            mailbox.address,
            domain=mailbox.domain.name,
            after={"trial_started_at": trial.started_at.isoformat()},
        )
        _announce(
            session,
            "trial.converted",
            mailbox.address,
            {"trial_started_at": trial.started_at.isoformat()},
        )
    elif old_plan == Plan.PAID.value and mailbox.plan == Plan.TRIAL.value:
        session.add(
            Trial(
                mailbox_id=mailbox.id,
                address=mailbox.address,
                domain=mailbox.address.rpartition("@")[2],
                contact_key=_contact_key_or_none(mailbox.contact_email),
                source=actor.name,
                started_at=now(),
                outcome=TrialOutcome.OPEN.value,
            )
        )
    session.flush()


def _answer_pending_requests(session: Session, mailbox: Mailbox, actor: Actor) -> None:
    """A conversion answers the owner's waiting upgrade request, whoever converted it."""
    waiting = select(UpgradeRequest).where(
        UpgradeRequest.mailbox_id == mailbox.id,
        UpgradeRequest.status == UpgradeStatus.PENDING.value,
    )
    for request in session.scalars(waiting):
        request.status = UpgradeStatus.CONVERTED.value
        request.answered_at = now()
        request.answered_by = actor.name


def mailbox_deleted(session: Session, mailbox: Mailbox) -> None:
    """Bookkeeping before provisioning deletes a trial mailbox: its trial ends as deleted."""
    trial = current_trial(session, mailbox)
    if trial is not None:
        trial.end(TrialOutcome.DELETED, now())
        trial.mailbox_id = None
        session.flush()


# --- signup ----------------------------------------------------------------------------------


def signup_domains(session: Session) -> list[Domain]:
    """Domains the admins opened for public signup, by name."""
    return list(
        session.scalars(select(Domain).where(Domain.signup_enabled.is_(True)).order_by(Domain.name))
    )


def sign_up(
    session: Session,
    *,
    local_part: str,
    domain: str,
    password: str,
    contact_email: str,
    protocol: str,
    actor: Actor,
) -> Mailbox:
    """Create a public trial mailbox (flushed, not committed).

    Checks in an order that leaks nothing: first what does not depend on other people's data
    (shape, domain open, password policy), then availability, where every refusal raises the
    same SignupRefused after the same argon2id work as a success (so timing tells nothing
    either). On a lost race with another signup the session is rolled back.
    """
    open_domain = session.scalar(
        select(Domain).where(Domain.name == domain.strip().lower(), Domain.signup_enabled.is_(True))
    )
    if open_domain is None:
        raise InvalidInput("Choose one of the domains offered for signup.", "domain")
    local = provisioning.normalize_local_part(local_part)
    address = f"{local}@{open_domain.name}"
    contact_key = normalize_contact(contact_email)
    contact = provisioning.normalize_contact(contact_email)
    if contact_key == address or (contact and contact.lower() == address):
        raise InvalidInput(
            "The contact address must be one you already have elsewhere.", "contact_email"
        )
    protocols = provisioning.parse_protocols(protocol)
    auth.check_password_policy(password, address=address)

    if (
        is_reserved(local)
        or session.scalar(select(Mailbox.id).where(Mailbox.address == address)) is not None
        or session.scalar(select(Alias.id).where(Alias.address == address)) is not None
        or session.scalar(
            select(Trial.id).where(
                Trial.contact_key == contact_key, Trial.outcome == TrialOutcome.OPEN.value
            )
        )
        is not None
    ):
        auth.hash_password(password)  # the work a success does, so the refusal takes as long
        raise SignupRefused()

    # The contact is claimed (unique while the trial is open) before anything is created, so
    # of two racing signups with one contact, the second fails here with nothing on disk.
    trial = Trial(
        address=address,
        domain=open_domain.name,
        contact_key=contact_key,
        open_contact=contact_key,
        source=SIGNUP_ACTOR_NAME,
        started_at=now(),
        outcome=TrialOutcome.OPEN.value,
    )
    session.add(trial)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise SignupRefused() from None
    mailbox = provisioning.create_mailbox(
        session,
        address,
        password,
        trial_quota_gb(),
        protocols,
        actor=actor,
        plan=Plan.TRIAL.value,
        contact_email=contact,
    )
    trial.mailbox_id = mailbox.id
    session.flush()
    return mailbox


# --- the lifecycle ---------------------------------------------------------------------------


@dataclass
class LifecycleReport:
    """What one run of the trial lifecycle did, by address."""

    reminded: list[dict[str, Any]] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reminded": self.reminded,
            "expired": self.expired,
            "deleted": self.deleted,
            "failed": self.failed,
        }


def run_lifecycle(session: Session, store: MailStore, *, actor: Actor) -> LifecycleReport:
    """One pass over the trials that need something now; each mailbox in its own transaction,
    so one failure neither stops nor undoes the others. Running it twice does nothing more."""
    report = LifecycleReport()
    moment = now()
    days = reminder_days()
    horizon = moment + timedelta(days=max(days, default=0))
    candidates = list(
        session.scalars(
            select(Mailbox.id)
            .where(
                Mailbox.plan == Plan.TRIAL.value,
                Mailbox.trial_expires_at.is_not(None),
                Mailbox.trial_expires_at <= horizon,
            )
            .order_by(Mailbox.trial_expires_at, Mailbox.id)
        )
    )
    session.rollback()
    for mailbox_id in candidates:
        try:
            _advance(session, store, mailbox_id, moment, days, actor, report)
        except Exception as exc:  # one bad mailbox must not stop the lifecycle of the others
            session.rollback()
            log.exception("trial lifecycle failed for mailbox %s", mailbox_id)
            report.failed.append({"mailbox_id": str(mailbox_id), "error": str(exc)})
    return report


def _advance(
    session: Session,
    store: MailStore,
    mailbox_id: int,
    moment: datetime,
    days: list[int],
    actor: Actor,
    report: LifecycleReport,
) -> None:
    mailbox = session.get(Mailbox, mailbox_id, with_for_update=True, populate_existing=True)
    if mailbox is None or mailbox.plan != Plan.TRIAL.value or mailbox.trial_expires_at is None:
        session.rollback()  # converted or deleted since the candidates were read
        return
    expires = mailbox.trial_expires_at
    trial = ensure_trial(session, mailbox)
    if moment >= expires + grace_period():
        _delete_lapsed(session, mailbox, trial, actor)
        report.deleted.append(mailbox.address)
    elif moment >= expires:
        if mailbox.status == MailboxStatus.ACTIVE.value:
            before = mailbox.to_dict()
            mailbox.status = MailboxStatus.EXPIRED.value
            mailbox.session_epoch += 1  # a status change ends /account sessions
            mailbox.updated_at = moment
            trial.expired_at = moment
            session.flush()
            audit.record(
                session,
                actor,
                "trial.expire",
                mailbox.address,
                domain=mailbox.domain.name,
                before=before,
                after=mailbox.to_dict(),
            )
            _announce(
                session,
                "trial.expired",
                mailbox.address,
                {"expired_at": moment.isoformat(), "grace_days": grace_period().days},
            )
            report.expired.append(mailbox.address)
        elif trial.expired_at is None:
            trial.expired_at = moment  # a suspended trial keeps its status; the date is noted
        session.commit()
    else:
        sent = _remind(session, store, mailbox, trial, moment, days, actor)
        if sent is not None:
            report.reminded.append({"address": mailbox.address, "days_before": sent})


def _remind(
    session: Session,
    store: MailStore,
    mailbox: Mailbox,
    trial: Trial,
    moment: datetime,
    days: list[int],
    actor: Actor,
) -> int | None:
    """Send the most urgent reminder that is due and not yet sent; the ones it makes moot (a
    7-day reminder when only 2 days are left) are recorded as not delivered."""
    left = mailbox.trial_expires_at - moment  # type: ignore[operator]
    already = {reminder.days_before for reminder in trial.reminders}
    due = [day for day in days if left <= timedelta(days=day) and day not in already]
    if not due:
        session.commit()  # keeps a trial record made just now
        return None
    urgent = min(due)
    for day in due:
        session.add(
            TrialReminder(
                trial_id=trial.id, days_before=day, sent_at=moment, delivered=day == urgent
            )
        )
    # The record is committed before the message is written: a second run (or a second
    # scheduler) then finds it and sends nothing, so the customer gets it at most once...
    session.commit()
    message = reminder_message(mailbox, max(1, math.ceil(left / timedelta(days=1))))
    try:
        _deliver_notice(session, store, mailbox, message)
    except Exception:
        # ...and if it could not be written, the record goes again so the next run retries.
        session.rollback()
        session.execute(
            delete(TrialReminder).where(
                TrialReminder.trial_id == trial.id, TrialReminder.days_before.in_(due)
            )
        )
        session.commit()
        raise
    audit.record(
        session,
        actor,
        "trial.remind",
        mailbox.address,
        domain=mailbox.domain.name,
        after={"days_before": urgent, "expires_at": mailbox.trial_expires_at.isoformat()},  # type: ignore[union-attr]
    )
    _announce(
        session,
        "trial.reminder",
        mailbox.address,
        {"days_before": urgent, "expires_at": mailbox.trial_expires_at.isoformat()},  # type: ignore[union-attr]
    )
    session.commit()
    if mailbox.contact_email:
        send_to_contact(session, message, mailbox.contact_email)
    return urgent


def _deliver_notice(session: Session, store: MailStore, mailbox: Mailbox, message: bytes) -> None:
    """Into INBOX, counted against the quota but never refused for it (like quota warnings)."""
    deliver_notice(session, store, mailbox.id, mailbox.address, message)


def reminder_message(mailbox: Mailbox, days_left: int) -> bytes:
    """The notice a trial customer finds in their INBOX `days_left` days before the end."""
    domain = mailbox.address.rpartition("@")[2]
    expires = mailbox.trial_expires_at
    assert expires is not None
    ends = expires.strftime("%A %d %B %Y at %H:%M UTC")
    delete_on = (expires + grace_period()).strftime("%d %B %Y")
    when = "tomorrow" if days_left == 1 else f"in {days_left} days"
    notice = EmailMessage(policy=SMTP)
    notice["From"] = f"Mail System <postmaster@{domain}>"
    notice["To"] = mailbox.address
    notice["Subject"] = (
        "Your free trial ends tomorrow"
        if days_left == 1
        else f"Your free trial ends in {days_left} days"
    )
    notice["Date"] = email.utils.format_datetime(now())
    notice["Message-ID"] = email.utils.make_msgid(domain=domain)
    notice["Auto-Submitted"] = "auto-generated"
    notice.set_content(
        f"Hello,\n\n"
        f"thank you for trying your mailbox {mailbox.address}. Your free trial ends {when},\n"
        f"on {ends}.\n\n"
        "To keep the mailbox, upgrade it to a paid plan: log in at\n"
        f"    {account_url()}\n"
        "with your address and password and ask for the upgrade, or write to your provider.\n"
        "Your address, your mail, your folders and your settings all stay exactly as they are.\n\n"
        "If you do nothing, after the trial your mail programs can no longer log in, but mail\n"
        f"sent to you is still received and kept until {delete_on}, and you can upgrade at any\n"
        "time until then. After that date the mailbox, all its mail and its backups are\n"
        "deleted for good.\n"
    )
    return notice.as_bytes()


def send_to_contact(session: Session, message: bytes, contact: str) -> bool:
    """Queue a copy for the customer's contact address: the outbound queue delivers it
    (OUTBOUND_RELAY or the contact domain's MX) and retries it. The null sender: a notice
    never bounces back (no loops), and no DSN is made for it. A failure to queue is logged,
    never raised: the INBOX copy was already delivered."""
    try:
        outbound.enqueue(session, sender="", recipients=[contact], content=message, mailbox_id=None)
    except ProviderError:
        log.exception("trial notice to %s could not be queued", contact)
        return False
    return True


def _delete_lapsed(session: Session, mailbox: Mailbox, trial: Trial, actor: Actor) -> None:
    """The grace period is over: the mailbox, its mail and its backups go (after the commit)."""
    address = mailbox.address
    domain = mailbox.domain.name
    summary = {
        "trial_started_at": trial.started_at.isoformat(),
        "trial_expired_at": mailbox.trial_expires_at.isoformat(),  # type: ignore[union-attr]
        "used_bytes": mailbox.used_bytes,
        "grace_days": grace_period().days,
    }
    provisioning.delete_mailbox(session, mailbox, actor=actor)  # with its mail and backups
    audit.record(session, actor, "trial.delete", address, domain=domain, before=summary)
    _announce(session, "trial.deleted", address, summary)
    session.commit()


def _announce(session: Session, event_type: str, address: str, details: dict[str, Any]) -> None:
    """A trial webhook event, in the transaction of the change it tells about."""
    webhooks.emit(
        session,
        event_type,
        domain=address.rpartition("@")[2],
        object_key=webhooks.mailbox_key(address),
        data={"address": address, **details},
    )


# --- conversion and reports --------------------------------------------------------------------


def convert_to_paid(session: Session, address: str, *, actor: Actor) -> Mailbox:
    """End a mailbox's trial as converted (the admin panel's button; the CLI's --plan paid)."""
    mailbox = provisioning.get_mailbox(session, address)
    if mailbox.plan != Plan.TRIAL.value:
        raise InvalidInput(f"{mailbox.address} is not a trial", "plan")
    return provisioning.update_mailbox(session, mailbox, actor=actor, plan=Plan.PAID.value)


@dataclass(frozen=True)
class TrialStages:
    """Trials by stage for the dashboard; the rate is over trials that have ended."""

    running: int
    reminded: int
    expired_in_grace: int
    converted: int
    lapsed: int

    @property
    def conversion_rate(self) -> float | None:
        ended = self.converted + self.lapsed
        return self.converted / ended if ended else None


def trial_stages(session: Session, domain_ids: set[int] | None = None) -> TrialStages:
    """Counts of trial mailboxes by stage, optionally within some domains (domain admins)."""
    moment = now()
    reminded_ids = (
        select(Trial.mailbox_id)
        .join(TrialReminder, TrialReminder.trial_id == Trial.id)
        .where(Trial.outcome == TrialOutcome.OPEN.value, Trial.mailbox_id.is_not(None))
        .distinct()
    )
    trials = select(func.count(Mailbox.id)).where(Mailbox.plan == Plan.TRIAL.value)
    ended = select(func.count(Trial.id))
    if domain_ids is not None:
        trials = trials.where(Mailbox.domain_id.in_(domain_ids))
        ended = ended.where(Trial.domain.in_(select(Domain.name).where(Domain.id.in_(domain_ids))))
    running_now = (Mailbox.trial_expires_at.is_(None)) | (Mailbox.trial_expires_at > moment)
    return TrialStages(
        running=session.scalar(trials.where(running_now, Mailbox.id.not_in(reminded_ids))) or 0,
        reminded=session.scalar(trials.where(running_now, Mailbox.id.in_(reminded_ids))) or 0,
        expired_in_grace=session.scalar(trials.where(Mailbox.trial_expires_at <= moment)) or 0,
        converted=session.scalar(ended.where(Trial.outcome == TrialOutcome.CONVERTED.value)) or 0,
        lapsed=session.scalar(ended.where(Trial.outcome == TrialOutcome.DELETED.value)) or 0,
    )


__all__ = [
    "SIGNUP_REFUSED",
    "LifecycleReport",
    "SignupRefused",
    "TrialStages",
    "convert_to_paid",
    "normalize_contact",
    "run_lifecycle",
    "sign_up",
    "trial_stages",
]
