"""Quota rules: the GB bounds, GB↔bytes, atomic reserve/release of usage, and the journal of
reservations in flight that start-up settles after a crash."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from flask import Flask, current_app, has_app_context
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Row,
    bindparam,
    case,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from provider.errors import QuotaOutOfRange
from provider.models import Mailbox, QuotaReservation
from provider.services import audit, webhooks
from provider.services.audit import Actor
from provider.services.clock import now

if TYPE_CHECKING:
    from provider.mailstore import MailStore

GIB = 1024**3
# A reservation lives for one write (seconds). One held by a process on another host that has
# not finished after this long is taken to be from a writer that died there.
FOREIGN_RESERVATION_STALE = timedelta(hours=1)
SETTLE_ACTOR = Actor("system:quota-settle")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuotaBounds:
    """Allowed quota range in GB (1 GB = 1024³ bytes)."""

    min_gb: Decimal
    max_gb: Decimal

    @property
    def min_bytes(self) -> int:
        return int(self.min_gb * GIB)

    @property
    def max_bytes(self) -> int:
        return int(self.max_gb * GIB)

    def describe(self) -> str:
        return f"{format_gb(self.min_gb)} to {format_gb(self.max_gb)} GB"


DEFAULT_BOUNDS = QuotaBounds(Decimal(8), Decimal(100))


def current_bounds() -> QuotaBounds:
    """The bounds from the running app's settings (QUOTA_MIN_GB / QUOTA_MAX_GB)."""
    if not has_app_context():
        return DEFAULT_BOUNDS
    config = current_app.config
    return QuotaBounds(Decimal(str(config["QUOTA_MIN_GB"])), Decimal(str(config["QUOTA_MAX_GB"])))


def format_gb(value: Decimal | float | int) -> str:
    """`8`, `12.5` — no trailing zeros."""
    text = f"{Decimal(str(value)):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


SIZE_UNITS = ("bytes", "KB", "MB", "GB", "TB", "PB")


def format_size(nbytes: int | Decimal | None) -> str:
    """`0 bytes`, `12.5 MB`, `8 GB`, `1.25 TB`: the one way sizes are written, on the web and in
    the CLI. 1 KB = 1024 bytes and 1 GB = 1024³, as quotas count (DESIGN.md: the quota is in GB
    of 1024³ bytes)."""
    amount = Decimal(nbytes or 0)
    unit = 0
    while abs(amount) >= 1024 and unit < len(SIZE_UNITS) - 1:
        amount /= 1024
        unit += 1
    if unit == 0:
        return f"{int(amount)} bytes" if int(amount) != 1 else "1 byte"
    return f"{format_gb(round(amount, 2))} {SIZE_UNITS[unit]}"


def parse_gb(value: object) -> Decimal:
    """Read a GB amount from a form, the CLI or JSON; raise QuotaOutOfRange if it is no number."""
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise QuotaOutOfRange(f"quota must be a number of GB, not {value!r}", "quota_gb") from None
    if not amount.is_finite():
        raise QuotaOutOfRange(f"quota must be a number of GB, not {value!r}", "quota_gb")
    return amount


def quota_bytes_from_gb(value: object, bounds: QuotaBounds | None = None) -> int:
    """Convert a GB amount to bytes, refusing anything outside the bounds."""
    bounds = bounds or current_bounds()
    amount = parse_gb(value)
    if not bounds.min_gb <= amount <= bounds.max_gb:
        # `1e999999999` is a valid Decimal whose digits written out would fill a gigabyte:
        # such an amount is quoted as given, never expanded.
        shown = format_gb(amount) if -20 <= amount.adjusted() <= 20 else str(value).strip()[:32]
        raise QuotaOutOfRange(
            f"quota must be between {format_gb(bounds.min_gb)} and {format_gb(bounds.max_gb)} GB, "
            f"not {shown} GB",
            "quota_gb",
        )
    return int(amount * GIB)


def check_quota_bytes(quota_bytes: int, bounds: QuotaBounds | None = None) -> None:
    """Refuse a byte quota outside the bounds (for callers that already hold bytes)."""
    bounds = bounds or current_bounds()
    if not bounds.min_bytes <= quota_bytes <= bounds.max_bytes:
        raise QuotaOutOfRange(
            f"quota must be between {format_gb(bounds.min_gb)} and {format_gb(bounds.max_gb)} GB, "
            f"not {format_gb(Decimal(quota_bytes) / GIB)} GB",
            "quota_gb",
        )


class Usage(NamedTuple):
    """A mailbox's usage right after a change, and the warning level already announced."""

    used_bytes: int
    quota_bytes: int
    warned_percent: int


def _room_for(nbytes: int | BindParameter[int]) -> ColumnElement[bool]:
    """The quota rule itself: usage plus the new bytes stays within the limit."""
    return Mailbox.used_bytes + nbytes <= Mailbox.quota_bytes


def fits(session: Session, mailbox_id: int, nbytes: int) -> bool:
    """Whether `nbytes` more would fit now (a check ahead of the data; reserve() decides)."""
    found = session.scalar(select(Mailbox.id).where(Mailbox.id == mailbox_id, _room_for(nbytes)))
    return found is not None


# The statements of every APPEND, COPY, EXPUNGE and delivery, built once and run as Core
# statements on the session's connection: building them and going through the ORM's execute
# was ~0.8 ms of Python per reservation, spent while holding SQLite's one writer turn, where
# every other writer of the installation waits (DESIGN-NOTES "Quota holds in Core").
_MAILBOXES = Mailbox.__table__
_USAGE_COLUMNS = (
    _MAILBOXES.c.used_bytes,
    _MAILBOXES.c.quota_bytes,
    _MAILBOXES.c.quota_warned_percent,
)
_ADD = (
    update(_MAILBOXES)
    .where(_MAILBOXES.c.id == bindparam("mailbox_id"))
    .values(used_bytes=_MAILBOXES.c.used_bytes + bindparam("nbytes"))
    .returning(*_USAGE_COLUMNS)
)
_ADD_WITHIN_QUOTA = _ADD.where(_room_for(bindparam("nbytes")))
_SUBTRACT = (
    update(_MAILBOXES)
    .where(_MAILBOXES.c.id == bindparam("mailbox_id"))
    .values(
        used_bytes=case(
            (
                _MAILBOXES.c.used_bytes >= bindparam("nbytes"),
                _MAILBOXES.c.used_bytes - bindparam("nbytes"),
            ),
            else_=0,
        )
    )
    .returning(*_USAGE_COLUMNS)
)
_RESERVATIONS = QuotaReservation.__table__
_JOURNAL = insert(_RESERVATIONS).returning(_RESERVATIONS.c.id)
_UNJOURNAL = delete(_RESERVATIONS).where(_RESERVATIONS.c.id.in_(bindparam("ids", expanding=True)))


def _change_usage(session: Session, statement: Any, mailbox_id: int, nbytes: int) -> Usage | None:
    """Run one of the usage statements above in the session's transaction (its pending ORM
    changes flushed first, as the ORM's own execute would); the usage after it, or None when
    no row changed."""
    session.flush()
    row = (
        session.connection()
        .execute(statement, {"mailbox_id": mailbox_id, "nbytes": nbytes})
        .first()
    )
    return Usage(*row) if row is not None else None


def reserve(session: Session, mailbox_id: int, nbytes: int) -> Usage | None:
    """Add `nbytes` to the mailbox's usage if it stays within quota, in one conditional UPDATE.

    Returns the usage after the change, or None (and changes nothing) when the bytes do not
    fit. Safe under concurrency: the check and the increment are one statement, so two writers
    can never both squeeze in.
    """
    if nbytes < 0:
        raise ValueError("reserve takes a non-negative byte count")
    return _change_usage(session, _ADD_WITHIN_QUOTA, mailbox_id, nbytes)


def release(session: Session, mailbox_id: int, nbytes: int, *, durable: bool = True) -> None:
    """Give back `nbytes` of usage (after an expunge), never going below zero.

    Warnings re-arm here: falling back below a threshold means the next crossing warns again.
    The UPDATE returns the new usage, so re-arming needs no second look at the row.
    With `durable=False` the caller's commit of this need not wait for the disk (see
    relax_next_commit): a power cut may take the release back, and the quota repair puts
    the counter right.
    """
    if nbytes < 0:
        raise ValueError("release takes a non-negative byte count")
    if not durable:
        relax_next_commit(session)
    usage = _change_usage(session, _SUBTRACT, mailbox_id, nbytes)
    if usage is not None:
        update_warning_level(session, mailbox_id, usage)


def force_reserve(session: Session, mailbox_id: int, nbytes: int) -> Usage | None:
    """Add usage without the limit check: for mail already promised (see services/delivery)."""
    if nbytes < 0:
        raise ValueError("force_reserve takes a non-negative byte count")
    return _change_usage(session, _ADD, mailbox_id, nbytes)


# --- reservations journaled until the write is on disk ---------------------------------------


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """What tells process `pid` apart from a later one given the same number: the boot id and
    its start time in clock ticks (Linux); "" where /proc is missing; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: count from the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # dead, only not reaped yet by its parent
        return None
    return f"{_boot_id()}:{fields[19]}"


@functools.cache
def _this_process() -> tuple[str, int, str]:
    pid = os.getpid()
    return socket.gethostname(), pid, _process_start(pid) or ""


def _owner() -> tuple[str, int, str]:
    # Cached per pid: a forked child is another owner.
    host, pid, start = _this_process()
    if pid != os.getpid():
        _this_process.cache_clear()
        host, pid, start = _this_process()
    return host, pid, start


def _owner_alive(row: Row[Any], host: str) -> bool:
    """Whether the process that holds a reservation may still finish it."""
    if row.host != host:
        return now() - row.created_at < FOREIGN_RESERVATION_STALE
    current = _process_start(row.pid)
    if current is None:
        return False
    if current == "" or row.process_start == "":  # no /proc: the pid is all we can go by
        try:
            os.kill(row.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return current == row.process_start


@dataclass
class QuotaHold:
    """Bytes reserved for one write in progress, journaled until confirm() or cancel().

    If the process dies in between (kill -9, power loss), the journal row stays behind and
    settle_interrupted() corrects that mailbox's usage from disk at the next start.
    """

    session: Session
    reservation_id: int
    mailbox_id: int
    nbytes: int
    usage: Usage

    def confirm(self) -> None:
        """The bytes are on disk: they stay counted, and the journal row goes."""
        self.session.execute(
            delete(QuotaReservation)
            .where(QuotaReservation.id == self.reservation_id)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()

    def confirm_with_warning_level(self) -> None:
        """confirm(), moving the warning level as update_warning_level() does. When the level
        stays (nearly always), no commit of its own: the journal row goes with this process's
        next reservation, or within CONFIRM_FLUSH_SECONDS (see _ConfirmedRows)."""
        level = threshold_reached(self.usage.used_bytes, self.usage.quota_bytes, warning_percents())
        if level != self.usage.warned_percent:
            update_warning_level(self.session, self.mailbox_id, self.usage)
            self.confirm()
            return
        _confirmed.add(self.reservation_id, self.session.get_bind())  # type: ignore[arg-type]

    def cancel(self) -> None:
        """Nothing was written: give the bytes back and drop the journal row, in one commit."""
        self.session.rollback()
        release(self.session, self.mailbox_id, self.nbytes)
        self.session.execute(
            delete(QuotaReservation)
            .where(QuotaReservation.id == self.reservation_id)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()


def relax_next_commit(session: Session) -> None:
    """Let the session's next transaction commit without an fsync, on SQLite (a no-op on
    PostgreSQL, whose writers do not queue behind one lock and whose commits group anyway).

    Only for the quota counter and its journal: a power cut may take back the last such
    commits (never a message: that is fsynced in the Maildir before anything is answered),
    which leaves the counter low or high by those messages until the daily recount. Under
    load every APPEND, COPY and EXPUNGE commits here, one writer at a time; the WAL fsync was
    most of each turn, and so most of everyone's wait (DESIGN-NOTES)."""
    dbapi_connection = session.connection().connection.dbapi_connection
    relax = getattr(dbapi_connection, "relax_next_commit", None)
    if relax is not None:
        relax()


def hold(
    session: Session,
    mailbox_id: int,
    nbytes: int,
    *,
    force: bool = False,
    durable: bool = True,
) -> QuotaHold | None:
    """Reserve `nbytes` (as reserve(), or without the limit with `force`) and journal the
    reservation in the same transaction; commit. None (nothing changed) when it does not fit.
    With `durable=False` that commit need not wait for the disk (relax_next_commit).
    """
    if nbytes < 0:
        raise ValueError("a hold takes a non-negative byte count")
    if not durable:
        relax_next_commit(session)
    # Everything but the statements is made before the first of them: from there to the
    # commit this transaction may hold SQLite's one writer turn.
    host, pid, start = _owner()
    journal_row = {
        "mailbox_id": mailbox_id,
        "nbytes": nbytes,
        "host": host,
        "pid": pid,
        "process_start": start,
        "created_at": now(),
    }
    engine = session.get_bind()
    confirmed = _confirmed.take(engine)  # type: ignore[arg-type]
    try:
        usage = _change_usage(session, _ADD if force else _ADD_WITHIN_QUOTA, mailbox_id, nbytes)
        if usage is None:
            session.rollback()
            _confirmed.put_back(engine, confirmed)  # type: ignore[arg-type]
            return None
        connection = session.connection()
        reservation_id = connection.execute(_JOURNAL, journal_row).scalar_one()
        if confirmed:
            connection.execute(_UNJOURNAL, {"ids": confirmed})
        session.commit()
    except BaseException:
        _confirmed.put_back(engine, confirmed)  # type: ignore[arg-type]
        raise
    return QuotaHold(session, reservation_id, mailbox_id, nbytes, usage)


CONFIRM_FLUSH_SECONDS = 1.0
"""How long a confirmed reservation's journal row may wait for a commit to ride on."""


class _ConfirmedRows:
    """Journal rows of this process's writes that are on disk, not yet deleted (per database).

    Deleting the row of a finished write needs no commit of its own: while this process lives,
    settling leaves its rows alone; if it dies first, settling sets the usage from the disk,
    where the message already is, so the count comes out right either way. The rows go with
    the next reservation's commit (one commit per APPEND instead of two), or from a timer
    within CONFIRM_FLUSH_SECONDS when no write follows, and at exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, list[int]] = {}
        self._engines: dict[str, Engine] = {}
        self._pid = os.getpid()
        self._timer: threading.Timer | None = None

    @staticmethod
    def _key(engine: Engine) -> str:
        return engine.url.render_as_string(hide_password=False)

    def _mine(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's rows are the parent's
            self._ids, self._engines, self._pid, self._timer = {}, {}, os.getpid(), None

    def add(self, reservation_id: int, engine: Engine) -> None:
        key = self._key(engine)
        with self._lock:
            self._mine()
            self._ids.setdefault(key, []).append(reservation_id)
            self._engines[key] = engine
            if self._timer is None:
                self._timer = threading.Timer(CONFIRM_FLUSH_SECONDS, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def take(self, engine: Engine) -> list[int]:
        if not self._ids and self._pid == os.getpid():
            return []  # the common case on every reservation: nothing waiting, no key to make
        key = self._key(engine)
        with self._lock:
            self._mine()
            self._engines.pop(key, None)  # no reference kept to an engine with nothing due
            return self._ids.pop(key, [])

    def put_back(self, engine: Engine, ids: list[int]) -> None:
        if ids:
            key = self._key(engine)
            with self._lock:
                self._ids.setdefault(key, [])[:0] = ids
                self._engines[key] = engine

    def pending(self, engine: Engine) -> list[int]:
        with self._lock:
            self._mine()
            return list(self._ids.get(self._key(engine), []))

    def flush(self) -> None:
        """Delete the waiting rows in a commit of their own (timer thread, exit, tests).

        On a connection of its own, detached from the engine's pool and closed at the end: the
        engine may have been disposed meanwhile (a test's app, a stopping process), and a
        connection left in its pool would then never be closed."""
        with self._lock:
            self._mine()
            self._timer = None
            engines = list(self._engines.values())
        for engine in engines:
            ids = self.take(engine)
            if not ids:
                continue
            try:
                with engine.connect() as connection:
                    connection.detach()
                    # Bookkeeping a power cut may take back (the start-up settling then
                    # recounts those mailboxes): no fsync while holding the writers' turn.
                    relax = getattr(
                        connection.connection.dbapi_connection, "relax_next_commit", None
                    )
                    if relax is not None:
                        relax()
                    connection.execute(delete(QuotaReservation).where(QuotaReservation.id.in_(ids)))
                    connection.commit()
            except Exception as error:
                # Kept for the next reservation's commit on this database (not for the timer:
                # a database that went away must not be tried again every second).
                with self._lock:
                    self._ids.setdefault(self._key(engine), [])[:0] = ids
                log.warning("confirmed quota journal rows left for later: %s", error)


_confirmed = _ConfirmedRows()
atexit.register(_confirmed.flush)


def settle_interrupted_reservations(session: Session, store: MailStore) -> int:
    """Correct the usage of every mailbox that has a reservation whose process died: set it to
    the bytes on disk plus the reservations still alive, and drop the dead ones. Returns how
    many reservations were settled. Only those mailboxes are read from disk, so this is cheap
    enough for every start (normally the journal is empty and this is one query).
    """
    # Plain rows, not ORM objects: they stay readable across the commits below.
    rows = session.execute(
        select(
            QuotaReservation.id,
            QuotaReservation.mailbox_id,
            QuotaReservation.nbytes,
            QuotaReservation.host,
            QuotaReservation.pid,
            QuotaReservation.process_start,
            QuotaReservation.created_at,
        ).order_by(QuotaReservation.id)
    ).all()
    if not rows:
        return 0
    host = socket.gethostname()
    dead = [row for row in rows if not _owner_alive(row, host)]
    settled = 0
    for mailbox_id in sorted({row.mailbox_id for row in dead}):
        dead_ids = [row.id for row in dead if row.mailbox_id == mailbox_id]
        live_bytes = sum(
            row.nbytes for row in rows if row.mailbox_id == mailbox_id and row.id not in dead_ids
        )
        mailbox = session.execute(
            select(Mailbox.address, Mailbox.used_bytes).where(Mailbox.id == mailbox_id)
        ).one_or_none()
        on_disk = 0
        if mailbox is not None and store.exists(mailbox.address):
            on_disk = store.open(mailbox.address).usage_bytes()
        # Claim the dead rows before correcting: of two settlers at once (a restarted child and
        # the nightly job), only the one that deletes them corrects the usage, never both.
        claimed = session.execute(
            delete(QuotaReservation)
            .where(QuotaReservation.id.in_(dead_ids))
            .returning(QuotaReservation.id)
            .execution_options(synchronize_session=False)
        ).all()
        if len(claimed) != len(dead_ids):
            session.rollback()
            continue
        if mailbox is not None:
            _correct_usage(session, mailbox_id, mailbox.used_bytes, on_disk + live_bytes)
            if mailbox.used_bytes != on_disk + live_bytes:
                audit.record(
                    session,
                    SETTLE_ACTOR,
                    "quota.settle",
                    mailbox.address,
                    domain=mailbox.address.rpartition("@")[2],
                    before={"used_bytes": mailbox.used_bytes},
                    after={"used_bytes": on_disk + live_bytes},
                )
            log.warning(
                "settled %d interrupted quota reservation(s) of %s: usage %d -> %d bytes",
                len(dead_ids),
                mailbox.address,
                mailbox.used_bytes,
                on_disk + live_bytes,
            )
        session.commit()
        settled += len(dead_ids)
    return settled


def settle_interrupted(app: Flask) -> int:
    """Start-up hook: settle the reservations of writers that died (kill -9 mid-delivery or
    mid-restore), so no mailbox stays over-counted until the nightly recount. Safe to call at
    any time and from any process: reservations of live processes are left alone."""
    from provider.extensions import db
    from provider.services.storage import mail_store

    with app.app_context():
        try:
            return settle_interrupted_reservations(db.session, mail_store())
        finally:
            db.session.remove()


def _correct_usage(session: Session, mailbox_id: int, recorded: int, actual: int) -> None:
    """Move usage from `recorded` (read before a disk scan) to `actual`, relative to its value
    now, so bytes reserved meanwhile by a concurrent writer are not undone."""
    if recorded == actual:
        return
    session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(
            used_bytes=case(
                (
                    Mailbox.used_bytes - recorded + actual >= 0,
                    Mailbox.used_bytes - recorded + actual,
                ),
                else_=0,
            )
        )
        .execution_options(synchronize_session=False)
    )
    update_warning_level(session, mailbox_id)


# --- quota warnings ------------------------------------------------------------------------


def warning_percents() -> list[int]:
    """QUOTA_WARNING_PERCENTS ("80,95") as sorted integers."""
    raw = str(current_app.config["QUOTA_WARNING_PERCENTS"]) if has_app_context() else "80,95"
    return sorted({int(part) for part in raw.split(",") if part.strip()})


def threshold_reached(used_bytes: int, quota_bytes: int, percents: list[int]) -> int:
    """The highest warning percentage that usage has reached, or 0."""
    reached = [p for p in percents if quota_bytes and used_bytes * 100 >= p * quota_bytes]
    return max(reached, default=0)


def crosses_new_level(usage: Usage) -> bool:
    """Whether this usage reaches a warning level not announced yet (cheap: no query)."""
    reached = threshold_reached(usage.used_bytes, usage.quota_bytes, warning_percents())
    return reached > usage.warned_percent


def update_warning_level(
    session: Session, mailbox_id: int, usage: Usage | None = None
) -> int | None:
    """Move the mailbox's warned level to what usage reaches now; return a newly crossed level.

    Raising the level is a conditional UPDATE, so of two deliveries crossing 80 % at once only
    one gets 80 back (and sends the one warning). Falling below a level re-arms it. `usage`,
    when the caller has it from its own UPDATE … RETURNING (reserve, release), saves reading
    the row again; with no level to move, no statement runs at all.
    """
    if usage is None:
        row = session.execute(
            select(Mailbox.used_bytes, Mailbox.quota_bytes, Mailbox.quota_warned_percent).where(
                Mailbox.id == mailbox_id
            )
        ).one_or_none()
        if row is None:
            return None
        usage = Usage(*row)
    level = threshold_reached(usage.used_bytes, usage.quota_bytes, warning_percents())
    if level > usage.warned_percent:
        result = session.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id, Mailbox.quota_warned_percent < level)
            .values(quota_warned_percent=level)
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return None
        _announce_warning(session, mailbox_id, level, usage)
        return level
    if level < usage.warned_percent:
        session.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id, Mailbox.quota_warned_percent > level)
            .values(quota_warned_percent=level)
            .execution_options(synchronize_session=False)
        )
    return None


def _announce_warning(session: Session, mailbox_id: int, level: int, usage: Usage) -> None:
    """The `quota.warning` webhook event, in the transaction that raised the warned level (so
    it is sent exactly when the owner's warning is, once per crossing)."""
    address = session.scalar(select(Mailbox.address).where(Mailbox.id == mailbox_id))
    if address is None:
        return
    webhooks.emit(
        session,
        "quota.warning",
        domain=address.rpartition("@")[2],
        object_key=webhooks.mailbox_key(address),
        data={
            "address": address,
            "percent": level,
            "used_bytes": usage.used_bytes,
            "quota_bytes": usage.quota_bytes,
        },
    )


# --- recount -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRepair:
    """A mailbox whose recorded usage differed from the bytes on disk, and what it became."""

    address: str
    recorded_bytes: int
    disk_bytes: int


def recount_usage(session: Session, store: MailStore, *, actor: Actor) -> list[UsageRepair]:
    """Set every mailbox's usage to the bytes its messages take on disk; report the repairs.

    The correction is applied relative to the value read before the scan, so a delivery that
    reserves its bytes while the scan runs is not undone.
    """
    repairs: list[UsageRepair] = []
    mailboxes = session.execute(select(Mailbox.id, Mailbox.address).order_by(Mailbox.id)).all()
    for mailbox_id, address in mailboxes:
        recorded = session.scalar(select(Mailbox.used_bytes).where(Mailbox.id == mailbox_id))
        if recorded is None:
            continue  # deleted meanwhile
        on_disk = store.open(address).usage_bytes() if store.exists(address) else 0
        if on_disk == recorded:
            continue
        _correct_usage(session, mailbox_id, recorded, on_disk)
        audit.record(
            session,
            actor,
            "quota.repair",
            address,
            domain=address.rpartition("@")[2],
            before={"used_bytes": recorded},
            after={"used_bytes": on_disk},
        )
        session.commit()
        repairs.append(UsageRepair(address, recorded, on_disk))
    return repairs
