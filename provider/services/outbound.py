"""The outbound queue: accept a message durably (spool file fsynced, rows committed), and the
queue's admin operations (list, show, retry, delete). The queue runner delivers it."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from provider.errors import InvalidInput, NotFound, TemporaryFailure
from provider.mailstore.diskio import is_disk_full, write_all
from provider.mailstore.uidlist import fsync_directory
from provider.models import OutboundMessage, OutboundRecipient, RecipientState
from provider.models.sending import FINAL_STATES
from provider.services import audit, sending
from provider.services.aftercommit import on_commit
from provider.services.audit import Actor
from provider.services.clock import now

log = logging.getLogger(__name__)

QUEUE_FOLDER = "queue"
SPOOL_SUFFIX = ".eml"
OPEN_STATES = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value, "sending")


class QueueFull(TemporaryFailure):
    """The disk holding the queue is full: the client keeps the message and retries."""

    smtp_reply = "452 4.3.1"


@dataclass(frozen=True)
class QueuedRecipient:
    """A recipient as the client gave it, with its RFC 3461 options."""

    address: str
    notify: str | None = None
    orcpt: str | None = None


def queue_dir() -> Path:
    """DATA_DIR/queue: one file per queued message, named by its queue id."""
    return Path(current_app.config["DATA_DIR"]) / QUEUE_FOLDER


def spool_path(queue_id: str) -> Path:
    return queue_dir() / f"{queue_id}{SPOOL_SUFFIX}"


def new_queue_id() -> str:
    return secrets.token_hex(8).upper()


def write_spool(queue_id: str, content: bytes) -> Path:
    """Write the message to the queue: into tmp/, fsync, rename into place, fsync the
    directory. Either the whole file is there afterwards or nothing is."""
    directory = queue_dir()
    tmp_dir = directory / "tmp"
    os.makedirs(tmp_dir, mode=0o700, exist_ok=True)
    draft = tmp_dir / f"{queue_id}{SPOOL_SUFFIX}"
    final = spool_path(queue_id)
    try:
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(draft, final)
        fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            draft.unlink()
        if is_disk_full(exc):
            raise QueueFull("the mail queue's disk is full; try again later") from exc
        log.exception("could not write %s to the queue", queue_id)
        raise TemporaryFailure("temporary failure queueing the message; try again later") from exc
    return final


def read_spool(queue_id: str) -> bytes:
    return spool_path(queue_id).read_bytes()


def remove_spool(queue_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        spool_path(queue_id).unlink()


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower()


def _subject_of(content: bytes) -> str:
    try:
        headers = BytesHeaderParser(policy=default_policy).parsebytes(content[:65536])
        return str(headers.get("Subject", "") or "")[:200]
    except Exception:  # a broken header must never stop a message from being queued
        return ""


def enqueue(
    session: Session,
    *,
    sender: str,
    recipients: Sequence[QueuedRecipient | str],
    content: bytes,
    mailbox_id: int | None,
    envid: str | None = None,
    ret: str | None = None,
) -> OutboundMessage:
    """Queue a message durably and commit: once this returns, the message survives a crash
    (answer 250 only after it). `mailbox_id` is the authenticated sender's mailbox (its sending
    count goes up in the same transaction; DSNs go to its INBOX); None for system mail."""
    wanted = [r if isinstance(r, QueuedRecipient) else QueuedRecipient(r) for r in recipients]
    if not wanted:
        raise InvalidInput("a message needs at least one recipient")
    queue_id = new_queue_id()
    write_spool(queue_id, content)
    try:
        message = OutboundMessage(
            queue_id=queue_id,
            sender=sender,
            mailbox_id=mailbox_id,
            size=len(content),
            envid=envid,
            ret=ret,
            subject=_subject_of(content),
            created_at=now(),
        )
        moment = now()
        message.recipients = [
            OutboundRecipient(
                address=r.address,
                domain=_domain_of(r.address),
                state=RecipientState.QUEUED.value,
                next_attempt_at=moment,
                notify=r.notify,
                orcpt=r.orcpt,
            )
            for r in wanted
        ]
        session.add(message)
        if mailbox_id is not None:
            sending.record_accepted(session, mailbox_id, len(wanted))
        on_commit(session, wake_runner)
        session.commit()
    except BaseException:
        session.rollback()
        remove_spool(queue_id)
        raise
    return message


def _wake_address() -> str:
    """The abstract Unix socket the queue runner of this installation listens on for "new mail
    queued" (Linux abstract namespace: no file to clean up, no path-length limit)."""
    tag = hashlib.sha256(str(queue_dir()).encode()).hexdigest()[:24]
    return f"\0provider-outbound-{tag}"


def wake_runner() -> None:
    """Tell a queue runner on this machine to look now (it also looks every few seconds)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"!", _wake_address())
    except OSError:
        pass  # no runner listening (or its buffer is full: it is awake anyway)


def wake_listener() -> socket.socket:
    """The socket a queue runner reads wake-ups from (non-blocking)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(_wake_address())
    sock.setblocking(False)
    return sock


# Admin operations (CLI `provider queue …`, /admin/queue): each change is audited.


def find(session: Session, queue_id: str) -> OutboundMessage:
    message = session.scalar(
        select(OutboundMessage)
        .where(OutboundMessage.queue_id == queue_id.strip().upper())
        .options(selectinload(OutboundMessage.recipients))
    )
    if message is None:
        raise NotFound(f"no queued message {queue_id}", "queue_id")
    return message


def list_open(session: Session, *, search: str | None = None) -> list[OutboundMessage]:
    """Messages with at least one recipient not yet delivered, bounced or deleted, oldest first."""
    open_ids = select(OutboundRecipient.message_id).where(OutboundRecipient.state.in_(OPEN_STATES))
    query = (
        select(OutboundMessage)
        .where(OutboundMessage.id.in_(open_ids))
        .options(selectinload(OutboundMessage.recipients))
        .order_by(OutboundMessage.created_at, OutboundMessage.id)
    )
    if search:
        pattern = f"%{search.strip().lower()}%"
        matching = select(OutboundRecipient.message_id).where(
            OutboundRecipient.address.like(pattern)
        )
        query = query.where(OutboundMessage.sender.like(pattern) | OutboundMessage.id.in_(matching))
    return list(session.scalars(query))


def open_count(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count(func.distinct(OutboundRecipient.message_id))).where(
                OutboundRecipient.state.in_(OPEN_STATES)
            )
        )
        or 0
    )


def message_record(message: OutboundMessage) -> dict[str, Any]:
    """A queued message as the CLI's --json and the panel show it."""
    return {
        "queue_id": message.queue_id,
        "sender": message.sender,
        "size": message.size,
        "subject": message.subject,
        "created_at": message.created_at.isoformat(),
        "recipients": [
            {
                "address": r.address,
                "state": r.state,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at.isoformat()
                if r.state in OPEN_STATES
                else None,
                "last_attempt_at": r.last_attempt_at.isoformat() if r.last_attempt_at else None,
                "last_reply": r.last_reply,
            }
            for r in message.recipients
        ],
    }


def retry(session: Session, queue_id: str | None, *, actor: Actor) -> int:
    """Make deferred recipients due now (one message, or all with `queue_id` None); returns
    how many recipients were made due. Audited."""
    query = select(OutboundRecipient).where(
        OutboundRecipient.state.in_((RecipientState.QUEUED.value, RecipientState.DEFERRED.value))
    )
    target = "all"
    if queue_id is not None:
        message = find(session, queue_id)
        query = query.where(OutboundRecipient.message_id == message.id)
        target = message.queue_id
    moment = now()
    count = 0
    for recipient in session.scalars(query):
        recipient.next_attempt_at = moment
        count += 1
    audit.record(session, actor, "queue.retry", target, after={"recipients": count})
    on_commit(session, wake_runner)
    session.commit()
    return count


def delete(session: Session, queue_id: str, *, actor: Actor) -> int:
    """Take a message's undelivered recipients out of the queue (no DSN: an admin decided);
    returns how many. The spool file goes once no recipient is left open. Audited."""
    message = find(session, queue_id)
    moment = now()
    count = 0
    for recipient in message.recipients:
        if recipient.state in (RecipientState.QUEUED.value, RecipientState.DEFERRED.value):
            recipient.state = RecipientState.DELETED.value
            recipient.finished_at = moment
            count += 1
    if count == 0 and not any(r.state == "sending" for r in message.recipients):
        raise InvalidInput(f"message {message.queue_id} has nothing left to deliver", "queue_id")
    audit.record(
        session,
        actor,
        "queue.delete",
        message.queue_id,
        before={"sender": message.sender, "recipients": count},
    )
    if all(r.state in {state.value for state in FINAL_STATES} for r in message.recipients):
        spooled = message.queue_id
        on_commit(session, lambda: remove_spool(spooled))
    session.commit()
    return count
