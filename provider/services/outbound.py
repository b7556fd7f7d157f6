"""The outbound queue: accept a message durably (spool file fsynced, rows committed), and the
queue's admin operations (list, show, retry, delete). The queue runner delivers it."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import Select, func, insert, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.orm import Session, make_transient_to_detached, selectinload

from provider.errors import InvalidInput, NotFound, TemporaryFailure
from provider.mailstore.diskio import is_disk_full, write_all
from provider.mailstore.uidlist import fsync_directory
from provider.models import Domain, Mailbox, OutboundMessage, OutboundRecipient, RecipientState
from provider.models.sending import FINAL_STATES
from provider.services import audit, reports, sending
from provider.services.aftercommit import on_commit
from provider.services.audit import Actor
from provider.services.clock import now

log = logging.getLogger(__name__)

QUEUE_FOLDER = "queue"
SPOOL_SUFFIX = ".eml"
OPEN_STATES = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value, "sending")
# Queue ids are new_queue_id()'s 16 hex digits; anything else (NUL, 10 kB of text) names no
# message and is answered "not found" before it reaches the database.
QUEUE_ID = re.compile(r"^[0-9A-Fa-f]{1,32}$")


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
    moment = now()
    fields = {
        "queue_id": queue_id,
        "sender": sender,
        "mailbox_id": mailbox_id,
        "size": len(content),
        "envid": envid,
        "ret": ret,
        "subject": _subject_of(content),
        "created_at": moment,
    }
    try:
        # Core INSERTs, not ORM objects: the unit of work cost more than the statements here
        # (a quarter of submission's CPU per message, bench/RESULTS.md).
        message_id = session.execute(
            insert(OutboundMessage.__table__).values(fields).returning(OutboundMessage.id)
        ).scalar_one()
        session.execute(
            insert(OutboundRecipient.__table__),
            [
                {
                    "message_id": message_id,
                    "address": r.address,
                    "domain": _domain_of(r.address),
                    "state": RecipientState.QUEUED.value,
                    "attempts": 0,
                    "next_attempt_at": moment,
                    "notify": r.notify,
                    "orcpt": r.orcpt,
                    "delay_notified": False,
                }
                for r in wanted
            ],
        )
        if mailbox_id is not None:
            sending.record_accepted(session, mailbox_id, len(wanted))
        on_commit(session, wake_runner)
        session.commit()
    except BaseException:
        session.rollback()
        remove_spool(queue_id)
        raise
    # The row as committed, without reading it back: its recipients load when asked for.
    message = OutboundMessage(id=message_id, **fields)
    make_transient_to_detached(message)
    session.add(message)
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
    try:
        sock.bind(_wake_address())
    except OSError:  # another runner of this installation listens already
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# Admin operations (CLI `provider queue …`, /admin/queue): each change is audited.


def find(session: Session, queue_id: str) -> OutboundMessage:
    wanted = queue_id.strip()
    message = None
    if QUEUE_ID.match(wanted):
        message = session.scalar(
            select(OutboundMessage)
            .where(OutboundMessage.queue_id == wanted.upper())
            .options(selectinload(OutboundMessage.recipients))
        )
    if message is None:
        shown = wanted if QUEUE_ID.match(wanted) else repr(wanted[:40])
        raise NotFound(f"no queued message {shown}", "queue_id")
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


def retry(
    session: Session,
    queue_id: str | None,
    *,
    actor: Actor,
    domain_ids: set[int] | None = None,
) -> int:
    """Make deferred recipients due now (one message, or all with `queue_id` None); returns
    how many recipients were made due. `domain_ids` limits "all" to the messages of those
    domains' mailboxes (a domain admin); None is every message. Audited."""
    query = select(OutboundRecipient).where(
        OutboundRecipient.state.in_((RecipientState.QUEUED.value, RecipientState.DEFERRED.value))
    )
    target = "all"
    domain: str | None = None
    if queue_id is not None:
        message = find(session, queue_id)
        query = query.where(OutboundRecipient.message_id == message.id)
        target = message.queue_id
        domain = sender_domain(session, message)
    elif domain_ids is not None:
        query = query.where(OutboundRecipient.message_id.in_(_messages_of(domain_ids)))
        if len(domain_ids) == 1:
            domain = session.scalar(select(Domain.name).where(Domain.id.in_(domain_ids)))
    moment = now()
    addresses = []
    for recipient in session.scalars(query):
        recipient.next_attempt_at = moment
        addresses.append(recipient.address)
    audit.record(
        session,
        actor,
        "queue.retry",
        target,
        domain=domain,
        after={"recipients": len(addresses), "addresses": addresses[:100]},
    )
    on_commit(session, wake_runner)
    session.commit()
    return len(addresses)


def delete(session: Session, queue_id: str, *, actor: Actor) -> int:
    """Take a message's undelivered recipients out of the queue (no DSN: an admin decided);
    returns how many. The spool file goes once no recipient is left open. Audited."""
    message = find(session, queue_id)
    moment = now()
    deleted = []
    for recipient in message.recipients:
        if recipient.state in (RecipientState.QUEUED.value, RecipientState.DEFERRED.value):
            recipient.state = RecipientState.DELETED.value
            recipient.finished_at = moment
            deleted.append(recipient.address)
    if not deleted and not any(r.state == "sending" for r in message.recipients):
        raise InvalidInput(f"message {message.queue_id} has nothing left to deliver", "queue_id")
    audit.record(
        session,
        actor,
        "queue.delete",
        message.queue_id,
        domain=sender_domain(session, message),
        before={
            "sender": message.sender,
            "subject": message.subject,
            "size": message.size,
            "recipients": len(deleted),
            "addresses": deleted[:100],
        },
    )
    if all(r.state in {state.value for state in FINAL_STATES} for r in message.recipients):
        spooled = message.queue_id
        on_commit(session, lambda: remove_spool(spooled))
    session.commit()
    return len(deleted)


# Read-only helpers of the admin surfaces: a domain admin sees the messages submitted by the
# mailboxes of their domains (the sender mailbox's domain); system mail only a superadmin sees.


def _messages_of(domain_ids: set[int]) -> Select[tuple[int]]:
    return (
        select(OutboundMessage.id)
        .join(Mailbox, Mailbox.id == OutboundMessage.mailbox_id)
        .where(Mailbox.domain_id.in_(sorted(domain_ids)))
    )


def sender_domain(session: Session, message: OutboundMessage) -> str | None:
    """The domain of the mailbox that submitted `message` (None for system mail)."""
    if message.mailbox_id is None:
        return None
    return session.scalar(
        select(Domain.name)
        .join(Mailbox, Mailbox.domain_id == Domain.id)
        .where(Mailbox.id == message.mailbox_id)
    )


def visible(session: Session, message: OutboundMessage, domain_ids: set[int] | None) -> bool:
    """Whether an admin limited to `domain_ids` (None: all) may see and manage `message`."""
    if domain_ids is None:
        return True
    if message.mailbox_id is None:
        return False
    domain_id = session.scalar(select(Mailbox.domain_id).where(Mailbox.id == message.mailbox_id))
    return domain_id in domain_ids


def list_visible(
    session: Session,
    *,
    domain_ids: set[int] | None,
    search: str | None = None,
    limit: int | None = None,
) -> list[OutboundMessage]:
    """Open messages, oldest first, that an admin limited to `domain_ids` (None: all) sees;
    `search` is a piece of the sender or of a recipient address (case-insensitive)."""
    query = visible_select(domain_ids=domain_ids, search=search)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def visible_select(
    *, domain_ids: set[int] | None, search: str | None = None
) -> Select[tuple[OutboundMessage]]:
    """The select of list_visible, ordered by (created_at, id), for paging in SQL."""
    open_ids = select(OutboundRecipient.message_id).where(OutboundRecipient.state.in_(OPEN_STATES))
    query = (
        select(OutboundMessage)
        .where(OutboundMessage.id.in_(open_ids))
        .options(selectinload(OutboundMessage.recipients))
        .order_by(OutboundMessage.created_at, OutboundMessage.id)
    )
    if domain_ids is not None:
        query = query.where(OutboundMessage.id.in_(_messages_of(domain_ids)))
    needle = clean_search(search)
    if needle:
        matching = select(OutboundRecipient.message_id).where(
            func.lower(OutboundRecipient.address).contains(needle, autoescape=True)
        )
        query = query.where(
            func.lower(OutboundMessage.sender).contains(needle, autoescape=True)
            | OutboundMessage.id.in_(matching)
            | (OutboundMessage.queue_id == needle.upper())
        )
    return query


def queue_cursor(message: OutboundMessage) -> str:
    return reports.time_cursor(message.created_at, message.id)


def visible_page(
    session: Session,
    *,
    domain_ids: set[int] | None,
    search: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> reports.Page[OutboundMessage]:
    """One page of list_visible, paged in SQL (a big queue is never loaded whole)."""
    query = visible_select(domain_ids=domain_ids, search=search)
    return reports.paginate(session, query, page, per_page)


def visible_after(
    session: Session,
    after: str,
    *,
    domain_ids: set[int] | None,
    search: str | None = None,
    per_page: int = 50,
) -> reports.KeysetPage[OutboundMessage]:
    """list_visible by cursor: the messages queued after the one `after` names (queue_cursor;
    empty = from the oldest)."""
    return reports.keyset_page(
        session,
        visible_select(domain_ids=domain_ids, search=search),
        key=(OutboundMessage.created_at, OutboundMessage.id),
        after=reports.parse_time_cursor(after),
        descending=False,
        per_page=per_page,
        cursor_of=queue_cursor,
    )


def clean_search(search: str | None) -> str:
    """A search text as matched: trimmed, lower-case, control characters dropped (PostgreSQL
    refuses NUL in text), at most 320 characters."""
    text = "".join(ch for ch in (search or "") if ch.isprintable())
    return text.strip().lower()[:320]


def visible_count(session: Session, domain_ids: set[int] | None) -> int:
    """How many open messages an admin limited to `domain_ids` (None: all) sees."""
    if domain_ids is None:
        return open_count(session)
    query = select(func.count(func.distinct(OutboundRecipient.message_id))).where(
        OutboundRecipient.state.in_(OPEN_STATES),
        OutboundRecipient.message_id.in_(_messages_of(domain_ids)),
    )
    return int(session.scalar(query) or 0)


# Housekeeping of the queue runner.

SPOOL_ORPHAN_AGE_SECONDS = 3600


def sweep_spool(session: Session) -> int:
    """Remove spool files nobody needs: those of messages whose every recipient is final (a
    runner killed between its last commit and the unlink leaves them), and, after an hour,
    files and drafts with no message row at all (a kill between the fsync and the commit of
    enqueue; the client got no 250 for those). Returns how many went."""
    directory = queue_dir()
    if not directory.is_dir():
        return 0
    spooled = {path.name[: -len(SPOOL_SUFFIX)]: path for path in directory.glob(f"*{SPOOL_SUFFIX}")}
    removed = 0
    old = now().timestamp() - SPOOL_ORPHAN_AGE_SECONDS
    ids = sorted(spooled)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        known = set(
            session.scalars(
                select(OutboundMessage.queue_id).where(OutboundMessage.queue_id.in_(chunk))
            )
        )
        still_open = set(
            session.scalars(
                select(OutboundMessage.queue_id)
                .join(OutboundRecipient, OutboundRecipient.message_id == OutboundMessage.id)
                .where(
                    OutboundMessage.queue_id.in_(chunk), OutboundRecipient.state.in_(OPEN_STATES)
                )
            )
        )
        session.rollback()
        for queue_id in chunk:
            path = spooled[queue_id]
            if queue_id in still_open:
                continue
            with contextlib.suppress(FileNotFoundError):
                if queue_id in known or path.stat().st_mtime < old:
                    path.unlink()
                    removed += 1
    drafts = directory / "tmp"
    if drafts.is_dir():
        for path in drafts.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < old:
                    path.unlink()
    return removed


PRUNE_BATCH = 500


def _prunable(cutoff: datetime) -> Any:
    """Messages with no recipient still open and none finished at or after `cutoff` (a final
    row without finished_at, from before that column was filled, counts as finished when the
    message was queued)."""
    recent_or_open = (
        select(OutboundRecipient.id)
        .where(OutboundRecipient.message_id == OutboundMessage.id)
        .where(
            OutboundRecipient.state.not_in([state.value for state in FINAL_STATES])
            | (func.coalesce(OutboundRecipient.finished_at, OutboundMessage.created_at) >= cutoff)
        )
        .correlate(OutboundMessage)
    )
    return (OutboundMessage.created_at < cutoff) & ~recent_or_open.exists()


def prune_finished(session: Session, keep_days: float, *, batch: int = PRUNE_BATCH) -> int:
    """Delete the queue rows of messages whose every recipient is final (delivered, bounced,
    deleted) and finished more than `keep_days` ago, `batch` messages per transaction (a big
    queue never holds one long lock), then their spool files if any are left. Open messages
    stay, however old. Returns how many messages went."""
    if batch < 1:
        raise InvalidInput(f"batch must be at least 1, not {batch}", "batch")
    try:
        if not keep_days > 0:
            raise OverflowError
        cutoff = now() - timedelta(days=keep_days)
    except OverflowError:
        raise InvalidInput(
            f"days to keep must be a number above 0 within the calendar, not {keep_days}",
            "keep_days",
        ) from None
    removed = 0
    while True:
        rows = session.execute(
            select(OutboundMessage.id, OutboundMessage.queue_id)
            .where(_prunable(cutoff))
            .order_by(OutboundMessage.id)
            .limit(batch)
        ).all()
        if not rows:
            session.rollback()
            return removed
        ids = [row.id for row in rows]
        # The condition again in the DELETE: final states are final (retry and the runner only
        # take queued/deferred rows), but the statement stays right whatever changes later.
        gone = session.execute(
            sql_delete(OutboundMessage)
            .where(OutboundMessage.id.in_(ids), _prunable(cutoff))
            .returning(OutboundMessage.id, OutboundMessage.queue_id)
            .execution_options(synchronize_session=False)
        ).all()
        gone_ids = [row.id for row in gone]
        if gone_ids:
            # ON DELETE CASCADE does this already (PostgreSQL; SQLite with foreign_keys on, as
            # extensions.py sets it); said again so no connection without the pragma leaves orphans.
            session.execute(
                sql_delete(OutboundRecipient)
                .where(OutboundRecipient.message_id.in_(gone_ids))
                .execution_options(synchronize_session=False)
            )
        session.commit()
        for row in gone:
            remove_spool(row.queue_id)
        removed += len(gone)
        if len(rows) < batch:
            return removed
