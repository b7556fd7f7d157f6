"""Sieve redirect and vacation carried out at delivery: both leave through the outbound queue."""

from __future__ import annotations

import email.utils
import hashlib
import logging
import re
from collections.abc import Iterable
from datetime import timedelta
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import SMTP
from email.policy import default as default_policy
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from provider.errors import ProviderError
from provider.models import Mailbox, VacationResponse
from provider.services import identities, outbound, sending
from provider.services.clock import now
from provider.sieve import Action

log = logging.getLogger(__name__)

# Pigeonhole's sieve_max_redirects is 4: more redirects in one run are not carried out.
MAX_REDIRECTS = 4
# A message that has been delivered this many times already is in a loop somewhere.
MAX_DELIVERED_TO = 8
# :days is unbounded in the script; the period is kept to ten years so a date fits anywhere.
VACATION_MAX_SECONDS = 3650 * 86400
HEADER_TEXT_MAX = 200
# RFC 3834 §2 / Pigeonhole: senders that are software, never people.
_ROBOT_LOCALS = {"mailer-daemon", "listserv", "majordomo"}
_LIST_HEADERS = (
    "list-id",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-post",
    "list-owner",
    "list-archive",
)
_RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}>")


def _headers(message: bytes) -> Message:
    return BytesHeaderParser(policy=default_policy).parsebytes(message[:262144])


def _header_values(headers: Message, name: str) -> list[str]:
    """Every value of a header as text; a header the parser cannot read counts as empty."""
    values: list[str] = []
    for value in headers.get_all(name, []) or []:
        try:
            values.append(str(value))
        except Exception:  # a broken encoded word must not stop the delivery
            values.append("")
    return values


def _bare(address: str) -> str:
    """`User+Tag@Example.TEST` → `user@example.test`: the form compared for loops and To/Cc."""
    local, at, domain = address.strip().strip("<>").strip().rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{local.split('+', 1)[0]}@{domain}".lower()


def _addresses_in(headers: Message, names: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for name in names:
        for _, address in email.utils.getaddresses(_header_values(headers, name)):
            if "@" in address:
                found.add(_bare(address))
    return found


def _reverse_path(sender: str) -> str:
    """The envelope sender as an address; '' for the null sender (aiosmtpd gives "<>")."""
    return sender.strip().strip("<>").strip()


def _clean(text: str, limit: int = HEADER_TEXT_MAX) -> str:
    return _CONTROL.sub(" ", text).strip()[:limit].strip()


# --- redirect (RFC 5228 §4.2, RFC 3894) ------------------------------------------------------


def _without_return_path(message: bytes) -> bytes:
    """The message as forwarded: our Return-Path goes (the next MDA writes its own); the
    Delivered-To and Received lines stay, they are what stops a loop further on."""
    while message[:12].lower() == b"return-path:":
        end = message.find(b"\n")
        if end < 0:
            return message
        message = message[end + 1 :]
        while message[:1] in (b" ", b"\t"):  # a folded continuation
            end = message.find(b"\n")
            message = message[end + 1 :] if end >= 0 else b""
    return message


def _room_to_send(session: Session, mailbox: Mailbox, count: int) -> str | None:
    """Why the mailbox may not forward `count` more recipients now, or None. A forward counts
    like a submitted recipient, but a refusal here is not counted toward the burst rule: mail
    others send to the mailbox must not get its sending suspended."""
    if mailbox.sending_suspended_at is not None:
        return "sending is suspended for this mailbox"
    limits = sending.limits_for(mailbox)
    counts = sending.window_counts(session, mailbox.id)
    if counts.hour_accepted + count > limits.per_hour:
        return f"sending limit reached ({limits.per_hour} recipients per hour)"
    if counts.day_accepted + count > limits.per_day:
        return f"sending limit reached ({limits.per_day} recipients per day)"
    return None


def redirect(
    session: Session,
    mailbox_id: int,
    recipient: str,
    message: bytes,
    sender: str,
    targets: list[tuple[str, bool]],
    notes: list[str],
) -> bool:
    """Queue the message to each (address, copy) target. Envelope sender: the mailbox's own
    address (SPF passes for our domain, failures come back to the owner as DSNs), or <> when
    the message came with <> (RFC 5228 §4.2: a bounce stays a bounce). Returns True when a
    redirect without :copy was not queued: the caller keeps the message in INBOX."""
    mailbox = session.get(Mailbox, mailbox_id)
    if mailbox is None or not targets:
        return False
    sender = _reverse_path(sender)
    headers = _headers(message)
    delivered_to = [_bare(value) for value in _header_values(headers, "delivered-to")]
    own = _bare(recipient)
    keep = False
    queued = 0
    for address, copy in targets:
        target = _bare(address)
        refusal: str | None = None
        if queued >= MAX_REDIRECTS:
            refusal = f"more than {MAX_REDIRECTS} redirects in one run"
        elif target == own or target in delivered_to:
            refusal = f"the message was already delivered to {address} (a forwarding loop)"
        elif delivered_to.count(own) > 1 or len(delivered_to) >= MAX_DELIVERED_TO:
            refusal = "the message has been forwarded too often (a forwarding loop)"
        else:
            refusal = _room_to_send(session, mailbox, 1)
        if refusal is None:
            try:
                outbound.enqueue(
                    session,
                    sender=mailbox.address if sender else "",
                    recipients=[address],
                    content=_without_return_path(message),
                    mailbox_id=mailbox.id,
                )
                queued += 1
                continue
            except ProviderError as error:
                refusal = f"it could not be queued ({error.message})"
            except Exception as error:
                log.exception("redirect of a message for %s failed", recipient)
                refusal = f"it could not be queued ({error!r})"
        keep = keep or not copy
        notes.append(f"redirect to {address} not done: {refusal}; the message was kept in INBOX")
    return keep


# --- vacation (RFC 5230, RFC 3834) -----------------------------------------------------------


def _why_no_reply(
    headers: Message, sender: str, ours: set[str], addresses: Iterable[str]
) -> str | None:
    """Why RFC 5230 §4.5 / RFC 3834 §2 forbid a reply to this message, or None."""
    if not sender or "@" not in sender:
        return "null sender"
    local = sender.rpartition("@")[0].lower()
    if local in _ROBOT_LOCALS or local.startswith("owner-") or local.endswith("-request"):
        return "the sender is a mailing list or mailer daemon"
    if _bare(sender) in ours:
        return "the sender is the mailbox itself"
    for value in _header_values(headers, "auto-submitted"):
        if value.split(";", 1)[0].strip().lower() != "no":
            return "the message is auto-submitted"
    if any(headers.get(name) is not None for name in _LIST_HEADERS):
        return "the message comes from a mailing list"
    for value in _header_values(headers, "precedence"):
        if value.strip().lower() in ("bulk", "list", "junk"):
            return "the message is bulk mail"
    wanted = ours | {_bare(address) for address in addresses}
    if not wanted & _addresses_in(headers, _RECIPIENT_HEADERS):
        return "none of the mailbox's addresses is in To or Cc"
    return None


def _first_ours(headers: Message, ours: set[str], fallback: str) -> str:
    for name in _RECIPIENT_HEADERS:
        for _, address in email.utils.getaddresses(_header_values(headers, name)):
            if _bare(address) in ours:
                return address.strip().lower()
    return fallback


def _claim(session: Session, mailbox_id: int, handle: str, sender: str, seconds: int) -> bool:
    """Record the reply to `sender` unless one was sent within the period: one INSERT … ON
    CONFLICT DO UPDATE … WHERE expired, so of two deliveries at once exactly one wins."""
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    moment = now()
    statement = insert(VacationResponse).values(
        mailbox_id=mailbox_id,
        handle=hashlib.sha256(handle.encode("utf-8", "replace")).hexdigest(),
        sender=sender[:320],
        sent_at=moment,
        expires_at=moment + timedelta(seconds=seconds),
    )
    statement = statement.on_conflict_do_update(
        index_elements=["mailbox_id", "handle", "sender"],
        set_={"sent_at": statement.excluded.sent_at, "expires_at": statement.excluded.expires_at},
        where=VacationResponse.expires_at <= moment,
    ).returning(VacationResponse.mailbox_id)
    return session.execute(statement).first() is not None


def _reply(
    action: Action, headers: Message, from_address: str, to_address: str, domain: str
) -> bytes:
    details = action.vacation
    reply = EmailMessage(policy=SMTP)
    reply["From"] = from_address
    reply["To"] = to_address
    reply["Subject"] = _clean(str(details.get("reply_subject") or "Auto: "), 250)
    reply["Date"] = email.utils.format_datetime(now())
    reply["Message-ID"] = email.utils.make_msgid(domain=domain)
    message_ids = _MESSAGE_ID.findall(" ".join(_header_values(headers, "message-id")))[:1]
    if message_ids:
        references = _MESSAGE_ID.findall(" ".join(_header_values(headers, "references")))
        reply["In-Reply-To"] = message_ids[0]
        reply["References"] = " ".join([*references[-10:], message_ids[0]])
    reply["Auto-Submitted"] = "auto-replied (vacation)"
    if not details.get("mime"):
        reply.set_content(action.text)
        return reply.as_bytes()
    # :mime: the reason is a MIME entity (its own Content-* headers and body), used as given.
    reply["MIME-Version"] = "1.0"
    entity = action.text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    if not entity.startswith(b"\r\n") and b"\r\n\r\n" not in entity:
        entity = b"\r\n" + entity  # no header block: all body
    return reply.as_bytes().rstrip(b"\r\n") + b"\r\n" + entity.lstrip(b"\r\n")


def vacation(
    session: Session,
    mailbox_id: int,
    recipient: str,
    message: bytes,
    sender: str,
    action: Action,
    notes: list[str],
) -> bool:
    """Send the vacation reply if RFC 5230/3834 allow it and none went to this sender for this
    handle within the period; True when one was queued. Never raises: a reply that cannot be
    sent is a note, the delivery stands."""
    sender = _reverse_path(sender)
    try:
        mailbox = session.get(Mailbox, mailbox_id)
        if mailbox is None:
            return False
        headers = _headers(message)
        ours = {_bare(address) for address in identities.sender_address_set(session, mailbox)}
        ours.add(_bare(recipient))
        addresses = [str(a) for a in action.vacation.get("addresses") or []]
        why = _why_no_reply(headers, sender, ours, addresses)
        if why is not None:
            log.info("no vacation reply from %s to <%s>: %s", recipient, sender, why)
            return False
        from_address = _first_ours(headers, ours | {_bare(a) for a in addresses}, mailbox.address)
        wanted_from = action.vacation.get("from")
        if wanted_from:
            parsed = email.utils.parseaddr(_clean(str(wanted_from), 320))[1]
            if _bare(parsed) in ours:
                from_address = _clean(str(wanted_from), 320)
            else:
                notes.append(
                    f"vacation :from {parsed or wanted_from!r} is not one of this mailbox's "
                    f"addresses; the reply is from {from_address}"
                )
        seconds = min(int(str(action.vacation.get("seconds") or 0)), VACATION_MAX_SECONDS)
        handle = str(action.vacation.get("handle") or "")
        content = _reply(action, headers, from_address, sender, mailbox.address.rpartition("@")[2])
        if not _claim(session, mailbox.id, handle, sender.lower(), seconds):
            session.rollback()
            return False
        # The claim commits with the queued reply (enqueue commits): both or neither.
        outbound.enqueue(session, sender="", recipients=[sender], content=content, mailbox_id=None)
        return True
    except Exception as error:
        session.rollback()
        log.exception("vacation reply of %s to <%s> failed", recipient, sender)
        notes.append(f"vacation reply to {sender} not sent: {error}")
        return False


def prune_responses(session: Session) -> int:
    """Forget vacation replies whose period is over (the outbound-cleanup job)."""
    result = session.execute(delete(VacationResponse).where(VacationResponse.expires_at <= now()))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
