"""The outbound queue runner: claims due recipients, delivers them (local mailboxes, the
smarthost or the MX hosts), records each outcome, retries with backoff and sends DSNs.

Claiming (docs/DESIGN-NOTES.md, "Outbound queue runner"): a recipient due for an attempt is
moved to 'sending' with `claimed_by` = this runner's id by one conditional UPDATE, so two
runners on one database never both hold it. Each runner keeps an flock on
DATA_DIR/queue/runners/<id>.lock for its whole life; a lock anyone can take means its owner is
dead (kill -9 included), and its 'sending' rows are made due again.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import logging
import os
import re
import secrets
import select as io_select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Domain, Mailbox, OutboundMessage, OutboundRecipient, RecipientState
from provider.models.sending import FINAL_STATES
from provider.protocols.outbound import client, dsn
from provider.services import delivery, dkim, outbound
from provider.services.clock import now
from provider.services.storage import mail_store

log = logging.getLogger(__name__)

RUNNERS_FOLDER = "runners"
SENDING = RecipientState.SENDING.value
DUE_STATES = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value)
FINAL = {state.value for state in FINAL_STATES}
# Retry schedule (Postfix: minimal_backoff_time 300 s, doubling, maximal_backoff_time 4000 s).
FIRST_BACKOFF = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=1)
POLL_SECONDS = 2.0  # look at the queue at least this often (wake-ups make it sooner)
RECLAIM_SECONDS = 10.0  # look for dead runners' claims this often
SWEEP_SECONDS = 600.0  # look for spool files nobody needs this often (and at start)
RUNNER_ID = re.compile(r"^[A-Za-z0-9.-]{1,80}-\d{1,10}-[0-9a-f]{8}$")


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 5 min, 10, 20, 40, then 1 h."""
    if attempts <= 1:
        return FIRST_BACKOFF
    return min(FIRST_BACKOFF * (2 ** min(attempts - 1, 20)), MAX_BACKOFF)


def notify_allows(notify: str | None, event: str) -> bool:
    """RFC 3461 NOTIFY: absent means failures and delays are reported; NEVER means nothing."""
    if not notify:
        return True
    words = {word.strip().upper() for word in notify.split(",")}
    return "NEVER" not in words and event in words


def crlf_lines(content: bytes) -> bytes:
    """Every line ending as CRLF: smtplib sends bytes as they are, and a bare LF or CR on
    the wire is what SMTP smuggling feeds on (RELIABILITY P8); signed after this, so the
    DKIM signature covers the bytes that leave."""
    return content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def runners_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / outbound.QUEUE_FOLDER / RUNNERS_FOLDER


class RunnerLock:
    """This runner's id and the flock proving it is alive (held until the process ends)."""

    def __init__(self, data_dir: str | Path) -> None:
        host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:60] or "host"
        self.id = f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
        directory = runners_dir(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{self.id}.lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1


def claimer_is_dead(data_dir: str | Path, claimer: str) -> bool:
    """True when the runner `claimer` is gone: its lock file is missing or can be locked.
    (A runner locks its file before it claims anything, and holds it until it dies.)"""
    if not RUNNER_ID.match(claimer):
        return True  # no runner of ours has such an id
    path = runners_dir(data_dir) / f"{claimer}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True
    finally:
        os.close(fd)


def reclaim_dead(session: Session, data_dir: str | Path, me: str | None = None) -> int:
    """Make the 'sending' recipients of dead runners due again; returns how many."""
    claimers = session.scalars(
        select(OutboundRecipient.claimed_by)
        .where(OutboundRecipient.state == SENDING)
        .group_by(OutboundRecipient.claimed_by)
    ).all()
    session.rollback()
    moment = now()
    total = 0
    for claimer in claimers:
        if claimer is not None and (claimer == me or not claimer_is_dead(data_dir, claimer)):
            continue
        whose = (
            OutboundRecipient.claimed_by.is_(None)
            if claimer is None
            else OutboundRecipient.claimed_by == claimer
        )
        result = session.execute(
            update(OutboundRecipient)
            .where(OutboundRecipient.state == SENDING, whose)
            .values(
                state=case(
                    (OutboundRecipient.attempts == 0, RecipientState.QUEUED.value),
                    else_=RecipientState.DEFERRED.value,
                ),
                next_attempt_at=moment,
                claimed_by=None,
            )
        )
        session.commit()
        count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if count:
            log.warning("queue runner %s died: %d recipient(s) made due again", claimer, count)
        total += count
    return total


def claim(session: Session, me: str, limit: int, busy: set[int]) -> list[int]:
    """Claim the due recipients of up to `limit` messages (not those in `busy`); returns the
    messages' ids. Each UPDATE re-checks the state, so a row goes to one runner only."""
    moment = now()
    candidates = session.scalars(
        select(OutboundRecipient.message_id)
        .where(
            OutboundRecipient.state.in_(DUE_STATES),
            OutboundRecipient.next_attempt_at <= moment,
        )
        .group_by(OutboundRecipient.message_id)
        .order_by(func.min(OutboundRecipient.next_attempt_at), OutboundRecipient.message_id)
        .limit(limit + len(busy))
    ).all()
    session.rollback()
    claimed: list[int] = []
    for message_id in candidates:
        if message_id in busy:
            continue
        result = session.execute(
            update(OutboundRecipient)
            .where(
                OutboundRecipient.message_id == message_id,
                OutboundRecipient.state.in_(DUE_STATES),
                OutboundRecipient.next_attempt_at <= moment,
            )
            .values(state=SENDING, claimed_by=me)
        )
        session.commit()
        if result.rowcount:  # type: ignore[attr-defined]
            claimed.append(message_id)
            if len(claimed) >= limit:
                break
    return claimed


def next_due_in(session: Session) -> float | None:
    """Seconds until the earliest waiting recipient is due (None: nothing waits)."""
    earliest = session.scalar(
        select(func.min(OutboundRecipient.next_attempt_at)).where(
            OutboundRecipient.state.in_(DUE_STATES)
        )
    )
    session.rollback()
    if earliest is None:
        return None
    return max(0.0, (earliest - now()).total_seconds())


@dataclass
class Attempt:
    """The outcome of one attempt at one message, gathered for its DSNs."""

    failed: list[tuple[OutboundRecipient, str]] = field(default_factory=list)
    delayed: list[tuple[OutboundRecipient, str]] = field(default_factory=list)
    remote_mta: dict[int, str] = field(default_factory=dict)


class MessageDelivery:
    """One attempt at the claimed recipients of one message, in a worker thread."""

    def __init__(self, app: Flask, session: Session, runner_id: str, message_id: int) -> None:
        self.app = app
        self.config = app.config
        self.session = session
        self.runner_id = runner_id
        self.message_id = message_id
        self.hostname = str(app.config.get("HOSTNAME") or socket.getfqdn())
        self.attempt = Attempt()
        self.queue_id = ""
        self.sender = ""
        self.created_at: datetime = now()

    # --- the whole attempt ----------------------------------------------------------------

    def run(self) -> None:
        session = self.session
        message = session.get(OutboundMessage, self.message_id)
        if message is None:
            return
        rows = list(
            session.scalars(
                select(OutboundRecipient).where(
                    OutboundRecipient.message_id == self.message_id,
                    OutboundRecipient.state == SENDING,
                    OutboundRecipient.claimed_by == self.runner_id,
                )
            )
        )
        if not rows:
            return
        self.queue_id = message.queue_id
        self.sender = message.sender
        self.created_at = message.created_at
        try:
            content = outbound.read_spool(message.queue_id)
        except FileNotFoundError:
            log.error("queue file of %s is missing; its recipients are bounced", message.queue_id)
            for row in rows:
                self.attempt.failed.append(
                    (row, "550 5.3.0 the queued copy of the message is lost")
                )
            self.finish(message, None)
            return
        by_domain: dict[str, list[OutboundRecipient]] = {}
        for row in rows:
            by_domain.setdefault(row.domain, []).append(row)
        hosted = set(session.scalars(select(Domain.name).where(Domain.name.in_(sorted(by_domain)))))
        session.rollback()
        signed: bytes | None = None
        for domain, group in sorted(by_domain.items()):
            if domain in hosted:
                self.deliver_local(group, content)
            else:
                if signed is None:
                    signed = self.dkim_signed(crlf_lines(content))
                self.deliver_remote(domain, group, signed)
        self.finish(message, content)

    def dkim_signed(self, content: bytes) -> bytes:
        """Signed for the domain of the header From (DMARC alignment), if it has a key."""
        try:
            headers = BytesHeaderParser(policy=default_policy).parsebytes(content[:65536])
            author = email.utils.parseaddr(str(headers.get("From", "") or ""))[1]
        except Exception:
            author = ""
        domain = author.rpartition("@")[2] or self.sender.rpartition("@")[2]
        if not domain:
            return content
        signed = dkim.sign(self.session, content, domain)
        self.session.rollback()
        return signed

    # --- local mailboxes --------------------------------------------------------------------

    def deliver_local(self, rows: list[OutboundRecipient], content: bytes) -> None:
        store = mail_store()
        received_at = email.utils.format_datetime(now())
        for row in rows:

            def message_for(delivered_to: str, recipient: str = row.address) -> bytes:
                trace = (
                    f"Return-Path: <{self.sender}>\r\n"
                    f"Delivered-To: {delivered_to}\r\n"
                    f"Received: by {self.hostname} (provider) from the queue id {self.queue_id}\r\n"
                    f"\tfor <{recipient}>; {received_at}\r\n"
                )
                return trace.encode("utf-8", "surrogateescape") + content

            try:
                route = delivery.resolve_route(self.session, row.address)
                delivery.deliver_route(self.session, store, route, message_for, sender=self.sender)
            except ProviderError as exc:
                reply = f"{exc.smtp_reply} {exc.message}"
            except Exception:
                log.exception("local delivery of %s to %s failed", self.queue_id, row.address)
                reply = "451 4.3.0 temporary failure storing the message"
            else:
                reply = f"250 2.0.0 delivered to the mailbox of <{row.address}>"
            self.session.rollback()  # nothing half-done of delivery's may ride on our commit
            self.record({row.address: reply}, [row], "")

    # --- remote hosts -----------------------------------------------------------------------

    def deliver_remote(self, domain: str, rows: list[OutboundRecipient], content: bytes) -> None:
        addresses = list(dict.fromkeys(row.address for row in rows))
        try:
            destination = client.destination_for(domain, self.config)
            client.deliver(
                destination,
                self.sender,
                addresses,
                content,
                local_hostname=self.hostname,
                timeout=float(self.config.get("OUTBOUND_TIMEOUT_SECONDS") or 60),
                record=lambda outcome: self.record(outcome.replies, rows, outcome.host),
            )
        except client.DeliveryFailed as exc:
            self.record(dict.fromkeys(addresses, exc.reply), rows, "")
        except ProviderError as exc:  # a bad DNS_RESOLVER setting: the operator must act
            self.record(dict.fromkeys(addresses, f"451 4.3.5 {exc.message}"), rows, "")
        except ValueError as exc:  # a bad OUTBOUND_RELAY setting
            self.record(dict.fromkeys(addresses, f"451 4.3.5 {exc}"), rows, "")

    # --- recording outcomes -----------------------------------------------------------------

    def record(self, replies: dict[str, str], rows: list[OutboundRecipient], host: str) -> None:
        """Write down what happened to each recipient at once (one commit): delivered and
        deferred for good; refusals and give-ups are kept for finish(), which commits them
        together with their DSN."""
        moment = now()
        max_age = timedelta(days=float(self.config.get("OUTBOUND_MAX_DAYS") or 5))
        notice_after = timedelta(hours=float(self.config.get("OUTBOUND_DELAY_NOTICE_HOURS", 4)))
        for row in rows:
            reply = replies.get(row.address)
            if reply is None:
                continue
            row.attempts += 1
            row.last_attempt_at = moment
            if host:
                self.attempt.remote_mta[row.id] = host
            if reply[:1] == "2":
                row.state = RecipientState.DELIVERED.value
                row.last_reply = reply
                row.finished_at = moment
                row.claimed_by = None
            elif reply[:1] == "4" and moment - self.created_at < max_age:
                row.state = RecipientState.DEFERRED.value
                row.last_reply = reply
                row.next_attempt_at = moment + backoff(row.attempts)
                row.claimed_by = None
                if (
                    not row.delay_notified
                    and moment - self.created_at >= notice_after
                    and notify_allows(row.notify, "DELAY")
                ):
                    self.attempt.delayed.append((row, reply))
            else:
                if reply[:1] == "4":
                    days = max_age.total_seconds() / 86400
                    reply = f"{reply} (given up after {days:g} days)"
                row.last_reply = reply
                self.attempt.failed.append((row, reply))
        self.session.commit()

    def finish(self, message: OutboundMessage, content: bytes | None) -> None:
        """Deliver the failure DSN and the delay DSN (each once, naming every recipient of
        this attempt), then commit the bounces: a crash between the two repeats the DSN
        rather than losing it. Remove the spool file once every recipient is final."""
        session = self.session
        moment = now()
        failed = [
            (row, reply)
            for row, reply in self.attempt.failed
            if notify_allows(row.notify, "FAILURE")
        ]
        if failed:
            self.notify_sender(message, "failed", failed, content)
        if self.attempt.delayed:
            self.notify_sender(message, "delayed", self.attempt.delayed, content)
        for row, reply in self.attempt.failed:
            row.state = RecipientState.BOUNCED.value
            row.last_reply = reply
            row.finished_at = moment
            row.claimed_by = None
        for row, _reply in self.attempt.delayed:
            row.delay_notified = True
        session.commit()
        states = session.scalars(
            select(OutboundRecipient.state).where(OutboundRecipient.message_id == self.message_id)
        ).all()
        session.rollback()
        if all(state in FINAL for state in states):
            outbound.remove_spool(self.queue_id)

    def notify_sender(
        self,
        message: OutboundMessage,
        action: str,
        rows: list[tuple[OutboundRecipient, str]],
        content: bytes | None,
    ) -> None:
        """A DSN into the INBOX of the mailbox that submitted the message: never for the null
        sender (no bounce loops), never mailed to the envelope sender (it may be forged)."""
        if not self.sender or message.mailbox_id is None:
            return
        mailbox = self.session.get(Mailbox, message.mailbox_id)
        if mailbox is None:
            return
        max_days = float(self.config.get("OUTBOUND_MAX_DAYS") or 5)
        failures = [
            dsn.Failure(
                address=row.address,
                reply=reply,
                orcpt=row.orcpt,
                remote_mta=self.attempt.remote_mta.get(row.id),
                last_attempt=row.last_attempt_at,
            )
            for row, reply in rows
        ]
        notice = dsn.build(
            action=action,
            failures=failures,
            to_address=mailbox.address,
            reporting_host=self.hostname,
            queue_id=message.queue_id,
            original=content,
            arrival=message.created_at,
            moment=now(),
            envid=message.envid,
            ret=message.ret,
            retry_until=message.created_at + timedelta(days=max_days),
        )
        address, mailbox_id = mailbox.address, mailbox.id
        try:
            delivery.deliver_notice(self.session, mail_store(), mailbox_id, address, notice)
        except Exception:
            log.exception("DSN for %s could not be stored in %s", message.queue_id, address)
            raise


class QueueRunner:
    """Delivers the queue with OUTBOUND_CONCURRENCY messages at once until stopped."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.data_dir = str(app.config["DATA_DIR"])
        self.concurrency = max(1, int(app.config.get("OUTBOUND_CONCURRENCY") or 8))
        self.lock = RunnerLock(self.data_dir)
        self.id = self.lock.id
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbound")
        self.busy: dict[int, Future[None]] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self._nudge_read, self._nudge_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._last_reclaim = 0.0
        self._last_sweep = 0.0
        try:
            self.wake: socket.socket | None = outbound.wake_listener()
        except OSError:  # another runner of this installation has it: poll only
            self.wake = None

    # --- one message, in a worker thread ----------------------------------------------------

    def _deliver(self, message_id: int) -> None:
        with self.app.app_context():
            session: Session = db.session  # type: ignore[assignment]
            try:
                MessageDelivery(self.app, session, self.id, message_id).run()
            except Exception:
                log.exception("delivery attempt of message %d failed", message_id)
                session.rollback()
                self._release(session, message_id)
            finally:
                db.session.remove()

    def _release(self, session: Session, message_id: int) -> None:
        """After an unexpected error: this attempt's claims go back, due in a while."""
        with contextlib.suppress(Exception):
            session.execute(
                update(OutboundRecipient)
                .where(
                    OutboundRecipient.message_id == message_id,
                    OutboundRecipient.state == SENDING,
                    OutboundRecipient.claimed_by == self.id,
                )
                .values(
                    state=RecipientState.DEFERRED.value,
                    claimed_by=None,
                    next_attempt_at=now() + FIRST_BACKOFF,
                    last_reply="451 4.3.0 internal error in the queue runner",
                )
            )
            session.commit()

    def _done(self, message_id: int) -> Callable[[Future[None]], None]:
        def done(_future: Future[None]) -> None:
            self.busy.pop(message_id, None)
            with contextlib.suppress(OSError):
                os.write(self._nudge_write, b"!")

        return done

    # --- the loop ---------------------------------------------------------------------------

    def step(self, session: Session) -> int:
        """Reclaim dead runners' rows (now and then) and start what is due; returns how many
        messages were started."""
        if time.monotonic() - self._last_reclaim >= RECLAIM_SECONDS:
            reclaim_dead(session, self.data_dir, self.id)
            self._last_reclaim = time.monotonic()
        if not self._last_sweep or time.monotonic() - self._last_sweep >= SWEEP_SECONDS:
            outbound.sweep_spool(session)
            self._last_sweep = time.monotonic()
        free = self.concurrency - len(self.busy)
        if free <= 0:
            return 0
        started = claim(session, self.id, free, set(self.busy))
        for message_id in started:
            future = self.pool.submit(self._deliver, message_id)
            self.busy[message_id] = future
            future.add_done_callback(self._done(message_id))
        return len(started)

    def run_until_idle(self, timeout: float = 60.0) -> None:
        """Deliver everything due now, and wait for it (tests, `provider queue run`)."""
        deadline = time.monotonic() + timeout
        self._last_reclaim = 0.0
        with self.app.app_context():
            session: Session = db.session  # type: ignore[assignment]
            try:
                while time.monotonic() < deadline:
                    started = self.step(session)
                    pending = list(self.busy.values())
                    if not started and not pending:
                        return
                    for future in pending:
                        future.result(max(0.0, deadline - time.monotonic()))
            finally:
                db.session.remove()

    def _wait(self, seconds: float) -> None:
        readable = [self._nudge_read] + ([self.wake] if self.wake is not None else [])
        with contextlib.suppress(InterruptedError):
            ready, _, _ = io_select.select(readable, [], [], seconds)
            for source in ready:
                with contextlib.suppress(OSError):
                    if isinstance(source, socket.socket):
                        while source.recv(64):
                            pass
                    else:
                        while os.read(source, 64):
                            pass

    def loop(self) -> None:
        """Run until stop(): start due work, then sleep until woken, a slot frees up, or the
        next recipient is due (at most POLL_SECONDS)."""
        with self.app.app_context():
            session: Session = db.session  # type: ignore[assignment]
            while not self.stopping.is_set():
                try:
                    self.step(session)
                    due_in = next_due_in(session)
                except Exception:
                    log.exception("the queue runner could not read the queue; retrying")
                    session.rollback()
                    db.session.remove()
                    self.stopping.wait(POLL_SECONDS)
                    continue
                wait = POLL_SECONDS if due_in is None else min(POLL_SECONDS, due_in)
                if len(self.busy) >= self.concurrency:
                    wait = POLL_SECONDS
                self._wait(max(wait, 0.05))
            db.session.remove()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, name="outbound-runner", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop claiming, let the deliveries under way end, and let go of the lock."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._nudge_write, b"!")
        if self.thread is not None:
            self.thread.join()
        self.pool.shutdown(wait=True)
        if self.wake is not None:
            self.wake.close()
        os.close(self._nudge_read)
        os.close(self._nudge_write)
        self.lock.release()


def describe(app: Flask) -> str:
    """The start-up line of the outbound service."""
    config: dict[str, Any] = app.config
    relay = str(config.get("OUTBOUND_RELAY") or "").strip()
    route = f"through the relay {relay}" if relay else "to the recipients' MX hosts"
    concurrency = int(config.get("OUTBOUND_CONCURRENCY") or 8)
    return f"outbound: delivering the queue {route}, {concurrency} at once"


__all__ = [
    "QueueRunner",
    "backoff",
    "claim",
    "claimer_is_dead",
    "describe",
    "notify_allows",
    "reclaim_dead",
]
