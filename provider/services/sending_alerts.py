"""The admins' alert when the burst rule suspends a mailbox's sending: one e-mail, queued."""

from __future__ import annotations

import email.utils
import logging
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from provider.models import AdminUser, Mailbox, admin_domains
from provider.services import outbound, sending
from provider.services.clock import now
from provider.services.trials import public_hostname

log = logging.getLogger(__name__)


def alert_recipients(session: Session, domain_id: int) -> list[str]:
    """The active admins of the domain and every active superadmin, each address once."""
    manages = select(admin_domains.c.admin_id).where(admin_domains.c.domain_id == domain_id)
    addresses = session.scalars(
        select(AdminUser.email).where(
            AdminUser.active.is_(True),
            or_(AdminUser.is_superadmin.is_(True), AdminUser.id.in_(manages)),
        )
    )
    return sorted(set(addresses))


def admin_page_url(mailbox_id: int) -> str:
    base = str(sending._setting("PUBLIC_WEB_URL", "") or f"https://{public_hostname()}")
    return f"{base.rstrip('/')}/admin/mailboxes/{mailbox_id}"


def admin_notice(mailbox: Mailbox, subject: str) -> EmailMessage:
    """The headers of a notice to a domain's admins about one of its mailboxes, from its
    postmaster; the admins are in the envelope only (alert_recipients)."""
    domain = mailbox.domain.name
    notice = EmailMessage(policy=SMTP)
    notice["From"] = f"Mail System <postmaster@{domain}>"
    notice["To"] = "undisclosed-recipients:;"
    notice["Subject"] = subject
    notice["Date"] = email.utils.format_datetime(now())
    notice["Message-ID"] = email.utils.make_msgid(domain=domain)
    notice["Auto-Submitted"] = "auto-generated"
    return notice


def alert_message(mailbox: Mailbox, reason: str) -> bytes:
    """The alert. The admins are in the envelope only: a domain admin is not shown the
    superadmins' addresses, and an admin address that is not plain ASCII (admin e-mails are
    checked loosely) cannot break the header."""
    suspended_at = mailbox.sending_suspended_at or now()
    notice = admin_notice(mailbox, f"Sending suspended for {mailbox.address}")
    notice.set_content(
        f"Sending from the mailbox {mailbox.address} was suspended on\n"
        f"{suspended_at.strftime('%Y-%m-%d at %H:%M UTC')}.\n\n"
        f"Why: {reason}.\n\n"
        "A burst this far past the limit usually means the mailbox's password was stolen\n"
        "and a spammer is using it. The mailbox still receives mail and its owner can still\n"
        "log in; only sending is stopped.\n\n"
        "What to do: change the mailbox's password, tell its owner, then let it send again\n"
        '("Resume sending") on its page:\n'
        f"    {admin_page_url(mailbox.id)}\n"
        f"or with: provider mailbox set {mailbox.address} --sending active\n"
    )
    return notice.as_bytes()


def alert_admins(session: Session, *, mailbox_id: int, reason: str, **_: Any) -> None:
    """Queue the alert to the domain's admins and the superadmins (null sender: never
    bounced; no sending mailbox: it counts against nobody's limits)."""
    mailbox = session.get(Mailbox, mailbox_id)
    if mailbox is None:
        return
    recipients = alert_recipients(session, mailbox.domain_id)
    if not recipients:
        log.warning("sending of %s suspended; no admin to tell", mailbox.address)
        return
    outbound.enqueue(
        session,
        sender="",
        recipients=recipients,
        content=alert_message(mailbox, reason),
        mailbox_id=None,
    )
    log.warning("sending of %s suspended (%s); told %s", mailbox.address, reason, recipients)


def connect() -> None:
    """Subscribe the alert to the burst rule (create_app calls this once per app; blinker
    keeps one connection per receiver, so calling it again changes nothing)."""
    sending.sending_suspended.connect(_receiver, weak=False)


def _receiver(session: Session, **kwargs: Any) -> None:
    alert_admins(session, **kwargs)
