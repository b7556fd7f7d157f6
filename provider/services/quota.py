"""Quota rules: the GB bounds, GB↔bytes, and atomic reserve/release of usage."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, NamedTuple

from flask import current_app, has_app_context
from sqlalchemy import ColumnElement, case, select, update
from sqlalchemy.orm import Session

from provider.errors import QuotaOutOfRange
from provider.models import Mailbox
from provider.services import audit
from provider.services.audit import Actor

if TYPE_CHECKING:
    from provider.mailstore import MailStore

GIB = 1024**3


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
        raise QuotaOutOfRange(
            f"quota must be between {format_gb(bounds.min_gb)} and {format_gb(bounds.max_gb)} GB, "
            f"not {format_gb(amount)} GB",
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


def _room_for(nbytes: int) -> ColumnElement[bool]:
    """The quota rule itself: usage plus the new bytes stays within the limit."""
    return Mailbox.used_bytes + nbytes <= Mailbox.quota_bytes


def fits(session: Session, mailbox_id: int, nbytes: int) -> bool:
    """Whether `nbytes` more would fit now (a check ahead of the data; reserve() decides)."""
    found = session.scalar(select(Mailbox.id).where(Mailbox.id == mailbox_id, _room_for(nbytes)))
    return found is not None


def reserve(session: Session, mailbox_id: int, nbytes: int) -> Usage | None:
    """Add `nbytes` to the mailbox's usage if it stays within quota, in one conditional UPDATE.

    Returns the usage after the change, or None (and changes nothing) when the bytes do not
    fit. Safe under concurrency: the check and the increment are one statement, so two writers
    can never both squeeze in.
    """
    if nbytes < 0:
        raise ValueError("reserve takes a non-negative byte count")
    row = session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id, _room_for(nbytes))
        .values(used_bytes=Mailbox.used_bytes + nbytes)
        .returning(Mailbox.used_bytes, Mailbox.quota_bytes, Mailbox.quota_warned_percent)
        .execution_options(synchronize_session=False)
    ).first()
    return Usage(*row) if row is not None else None


def release(session: Session, mailbox_id: int, nbytes: int) -> None:
    """Give back `nbytes` of usage (after an expunge), never going below zero.

    Warnings re-arm here: falling back below a threshold means the next crossing warns again.
    """
    if nbytes < 0:
        raise ValueError("release takes a non-negative byte count")
    session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(
            used_bytes=case((Mailbox.used_bytes >= nbytes, Mailbox.used_bytes - nbytes), else_=0)
        )
        .execution_options(synchronize_session=False)
    )
    update_warning_level(session, mailbox_id)


def force_reserve(session: Session, mailbox_id: int, nbytes: int) -> Usage | None:
    """Add usage without the limit check: for mail already promised (see services/delivery)."""
    if nbytes < 0:
        raise ValueError("force_reserve takes a non-negative byte count")
    row = session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(used_bytes=Mailbox.used_bytes + nbytes)
        .returning(Mailbox.used_bytes, Mailbox.quota_bytes, Mailbox.quota_warned_percent)
        .execution_options(synchronize_session=False)
    ).first()
    return Usage(*row) if row is not None else None


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


def update_warning_level(session: Session, mailbox_id: int) -> int | None:
    """Move the mailbox's warned level to what usage reaches now; return a newly crossed level.

    Raising the level is a conditional UPDATE, so of two deliveries crossing 80 % at once only
    one gets 80 back (and sends the one warning). Falling below a level re-arms it.
    """
    row = session.execute(
        select(Mailbox.used_bytes, Mailbox.quota_bytes, Mailbox.quota_warned_percent).where(
            Mailbox.id == mailbox_id
        )
    ).one_or_none()
    if row is None:
        return None
    level = threshold_reached(row.used_bytes, row.quota_bytes, warning_percents())
    if level > row.quota_warned_percent:
        result = session.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id, Mailbox.quota_warned_percent < level)
            .values(quota_warned_percent=level)
            .execution_options(synchronize_session=False)
        )
        return level if result.rowcount else None  # type: ignore[attr-defined]
    if level < row.quota_warned_percent:
        session.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id, Mailbox.quota_warned_percent > level)
            .values(quota_warned_percent=level)
            .execution_options(synchronize_session=False)
        )
    return None


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
        session.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id)
            .values(
                used_bytes=case(
                    (
                        Mailbox.used_bytes - recorded + on_disk >= 0,
                        Mailbox.used_bytes - recorded + on_disk,
                    ),
                    else_=0,
                )
            )
            .execution_options(synchronize_session=False)
        )
        update_warning_level(session, mailbox_id)
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
