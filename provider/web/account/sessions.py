"""Mailbox owner sessions: their own session key and loader, apart from the admins' Flask-Login.

The session holds `<mailbox id>:<epoch>` under ACCOUNT_KEY. The epoch is an HMAC (keyed by the
app's secret key) of the mailbox's password hash, status and session counter, so a new password,
a status change (suspension, expiry, reactivation: the counter moves) or a logout (the counter
moves) voids every cookie issued before, with no server-side session store
(RELIABILITY W2). It is an HMAC rather than a plain digest because the session cookie is signed,
not encrypted: nothing derived from the password hash may be readable or testable offline.
Flask-Login's `current_user` never sees these sessions, so they cannot open /admin.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import current_app, g, session

from provider.extensions import db
from provider.models import Mailbox, MailboxStatus

ACCOUNT_KEY = "account_session"
_MISSING = object()


def session_epoch(mailbox: Mailbox) -> str:
    secret = str(current_app.config["SECRET_KEY"]).encode()
    material = (
        f"account-session\0{mailbox.id}\0{mailbox.password_hash}\0{mailbox.status}"
        f"\0{mailbox.session_epoch}"
    )
    return hmac.new(secret, material.encode(), hashlib.sha256).hexdigest()[:32]


def may_log_in(mailbox: Mailbox) -> bool:
    """A suspended mailbox may not use the portal (an expired trial may: issue 7 shows it)."""
    return mailbox.status != MailboxStatus.SUSPENDED.value


def start_session(mailbox: Mailbox) -> None:
    # A fresh session on login: nothing from before survives (session fixation, ASVS 7.2.4).
    session.clear()
    session.permanent = True
    session[ACCOUNT_KEY] = f"{mailbox.id}:{session_epoch(mailbox)}"
    g.account_mailbox = mailbox


def end_session() -> None:
    """Log out: every session of this mailbox ends (a copied cookie is worthless too)."""
    mailbox = current_mailbox()
    if mailbox is not None:
        mailbox.session_epoch += 1
        db.session.commit()
    session.clear()
    g.account_mailbox = None


def current_mailbox() -> Mailbox | None:
    """The logged-in owner's mailbox, or None (no session, a stale epoch, a suspended mailbox)."""
    cached = g.get("account_mailbox", _MISSING)
    if cached is not _MISSING:
        return cached  # type: ignore[return-value]
    mailbox = _load(session.get(ACCOUNT_KEY))
    g.account_mailbox = mailbox
    return mailbox


def _load(value: object) -> Mailbox | None:
    if not isinstance(value, str):
        return None
    mailbox_id, _, epoch = value.partition(":")
    if not mailbox_id.isdigit() or not epoch:
        return None
    mailbox = db.session.get(Mailbox, int(mailbox_id))
    if mailbox is None or not may_log_in(mailbox):
        return None
    if not hmac.compare_digest(epoch, session_epoch(mailbox)):
        return None
    return mailbox
