"""Trial upgrade requests: the owner asks, the domain's admins are e-mailed, an admin answers."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.errors import InvalidInput
from provider.models import Mailbox, Plan, UpgradeRequest, UpgradeStatus
from provider.services import audit, outbound, trials
from provider.services.audit import Actor
from provider.services.clock import now
from provider.services.sending_alerts import admin_notice, admin_page_url, alert_recipients

log = logging.getLogger(__name__)

UPGRADE_REQUESTED = "trial.upgrade_requested"
UPGRADE_DECLINED = "trial.upgrade_declined"
DECLINE_MESSAGE_MAX = 2000


def pending_request(session: Session, mailbox: Mailbox) -> UpgradeRequest | None:
    """The mailbox's request still waiting for an admin, if any."""
    return session.scalar(
        select(UpgradeRequest)
        .where(
            UpgradeRequest.mailbox_id == mailbox.id,
            UpgradeRequest.status == UpgradeStatus.PENDING.value,
        )
        .order_by(UpgradeRequest.id.desc())
        .limit(1)
    )


def latest_request(session: Session, mailbox: Mailbox) -> UpgradeRequest | None:
    """The mailbox's newest request, answered or not (the owner reads a decline here)."""
    return session.scalar(
        select(UpgradeRequest)
        .where(UpgradeRequest.mailbox_id == mailbox.id)
        .order_by(UpgradeRequest.requested_at.desc(), UpgradeRequest.id.desc())
        .limit(1)
    )


def pending_requests(session: Session, domain_ids: set[int] | None = None) -> list[UpgradeRequest]:
    """Requests waiting for an answer, oldest first, optionally within some domains."""
    query = (
        select(UpgradeRequest)
        .join(Mailbox, Mailbox.id == UpgradeRequest.mailbox_id)
        .where(UpgradeRequest.status == UpgradeStatus.PENDING.value)
        .order_by(UpgradeRequest.requested_at, UpgradeRequest.id)
    )
    if domain_ids is not None:
        query = query.where(Mailbox.domain_id.in_(domain_ids))
    return list(session.scalars(query))


def pending_mailbox_ids(session: Session, mailbox_ids: list[int]) -> set[int]:
    """Which of these mailboxes have a request waiting (the mailbox list's badge)."""
    if not mailbox_ids:
        return set()
    return set(
        session.scalars(
            select(UpgradeRequest.mailbox_id).where(
                UpgradeRequest.mailbox_id.in_(mailbox_ids),
                UpgradeRequest.status == UpgradeStatus.PENDING.value,
            )
        )
    )


def request_message(mailbox: Mailbox, request: UpgradeRequest) -> bytes:
    """The e-mail to the domain's admins (in the envelope only, as the sending alert does)."""
    notice = admin_notice(mailbox, f"Upgrade requested for {mailbox.address}")
    ends = (
        mailbox.trial_expires_at.strftime("%Y-%m-%d at %H:%M UTC")
        if mailbox.trial_expires_at
        else "no end date"
    )
    notice.set_content(
        f"The owner of the trial mailbox {mailbox.address} asked on\n"
        f"{request.requested_at:%Y-%m-%d at %H:%M UTC} to keep it as a paid mailbox.\n\n"
        f"Trial ends: {ends}.\n"
        f"Contact address: {mailbox.contact_email or '(none given)'}\n\n"
        "Answer on the mailbox's page (convert it to paid, or decline with a message the\n"
        "owner reads when logging in):\n"
        f"    {admin_page_url(mailbox.id)}\n"
        f"or convert with: provider mailbox set {mailbox.address} --plan paid\n"
    )
    return notice.as_bytes()


def request_upgrade(session: Session, mailbox: Mailbox, actor: Actor) -> UpgradeRequest | None:
    """Record the owner's wish to keep the trial mailbox, audit it and e-mail the domain's
    admins through the outbound queue (commits). None when it is not a trial or a request is
    already waiting; after a decline the owner may ask again."""
    if mailbox.plan != Plan.TRIAL.value or pending_request(session, mailbox) is not None:
        return None
    request = UpgradeRequest(
        mailbox_id=mailbox.id, requested_at=now(), status=UpgradeStatus.PENDING.value
    )
    session.add(request)
    audit.record(
        session,
        actor,
        UPGRADE_REQUESTED,
        mailbox.address,
        domain=mailbox.domain.name,
        after={
            "status": mailbox.status,
            "trial_expires_at": (
                mailbox.trial_expires_at.isoformat() if mailbox.trial_expires_at else None
            ),
            "contact_email": mailbox.contact_email,
        },
    )
    session.flush()
    recipients = alert_recipients(session, mailbox.domain_id)
    if recipients:
        outbound.enqueue(
            session,
            sender="",
            recipients=recipients,
            content=request_message(mailbox, request),
            mailbox_id=None,
        )  # commits the request and its audit event with the queued message
    else:
        log.warning("upgrade requested for %s; no admin to tell", mailbox.address)
        session.commit()
    return request


def get_request(session: Session, mailbox: Mailbox, request_id: int) -> UpgradeRequest:
    request = session.get(UpgradeRequest, request_id)
    if request is None or request.mailbox_id != mailbox.id:
        raise InvalidInput("no such upgrade request for this mailbox", "request")
    return request


def _still_pending(request: UpgradeRequest) -> None:
    if not request.pending:
        raise InvalidInput(f"this request was already answered ({request.status})", "request")


def convert(session: Session, request: UpgradeRequest, *, actor: Actor) -> Mailbox:
    """Answer yes: the trial conversion (which marks the request converted, trials.plan_changed)."""
    _still_pending(request)
    return trials.convert_to_paid(session, request.mailbox.address, actor=actor)


def decline(session: Session, request: UpgradeRequest, message: str, *, actor: Actor) -> None:
    """Answer no, with a message the owner reads in /account; audited. The trial runs on."""
    _still_pending(request)
    text = message.strip()
    if not text:
        raise InvalidInput("Say why, in a few words: the customer reads this.", "message")
    if len(text) > DECLINE_MESSAGE_MAX:
        raise InvalidInput(f"At most {DECLINE_MESSAGE_MAX} characters.", "message")
    request.status = UpgradeStatus.DECLINED.value
    request.answered_at = now()
    request.answered_by = actor.name
    request.message = text
    mailbox = request.mailbox
    audit.record(
        session,
        actor,
        UPGRADE_DECLINED,
        mailbox.address,
        domain=mailbox.domain.name,
        after={"requested_at": request.requested_at.isoformat(), "message": text},
    )
