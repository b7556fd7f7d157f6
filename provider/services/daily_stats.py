"""The dashboard's numbers over time: daily counts (deliveries, failed logins) and states."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from provider.extensions import db
from provider.models import DailyStat, Mailbox
from provider.models.mailbox import Plan
from provider.services.clock import now

log = logging.getLogger(__name__)

COUNTED = ("deliveries", "failed_logins")
# Counts wait in memory and reach the database at most this often (and at exit): one small
# UPSERT per interval instead of one write per delivery. A kill -9 loses at most this much of
# a statistic, never mail.
FLUSH_SECONDS = 30.0
FLUSH_PENDING = 500
DEFAULT_DAYS = 30


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[tuple[date, str], int] = {}
        self.last_flush = time.monotonic()
        self.app: Flask | None = None

    def add(self, metric: str, amount: int) -> bool:
        """Count; True when the pending counts are due for the database."""
        day = now().date()
        with self.lock:
            key = (day, metric)
            self.pending[key] = self.pending.get(key, 0) + amount
            total = sum(self.pending.values())
            due = total >= FLUSH_PENDING or time.monotonic() - self.last_flush >= FLUSH_SECONDS
            if due:
                self.last_flush = time.monotonic()  # this caller starts the flush; no other
            return due

    def take(self) -> dict[tuple[date, str], int]:
        with self.lock:
            taken, self.pending = self.pending, {}
            self.last_flush = time.monotonic()
            return taken

    def give_back(self, counts: dict[tuple[date, str], int]) -> None:
        with self.lock:
            for key, amount in counts.items():
                self.pending[key] = self.pending.get(key, 0) + amount


_counter = _Counter()


def count(metric: str, amount: int = 1) -> None:
    """Add to today's `metric` (one of COUNTED). Cheap: memory, and a flush now and then.
    Never raises: a statistic must not fail a delivery or a login."""
    if metric not in COUNTED:
        raise ValueError(f"unknown daily metric {metric!r}")
    if amount <= 0:
        return
    try:
        due = _counter.add(metric, amount)
        if has_app_context() and _counter.app is None:
            _counter.app = current_app._get_current_object()  # type: ignore[attr-defined]
        app = _counter.app
        if due and app is not None:
            # On a thread of its own: the caller (a delivery, a login) may hold a write
            # transaction of its own, which an SQLite write from the same thread would wait on.
            threading.Thread(target=_flush_in, args=(app,), daemon=True).start()
    except Exception:
        log.exception("could not count %s", metric)


def flush() -> None:
    """Write this process's pending counts (in an app context; its own transaction)."""
    counts = _counter.take()
    if not counts:
        return
    try:
        with db.engine.begin() as connection:
            insert: Any = (
                postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
            )
            for (day, metric), amount in sorted(counts.items()):
                statement = insert(DailyStat).values(day=day, **{metric: amount})
                column = getattr(DailyStat.__table__.c, metric)
                statement = statement.on_conflict_do_update(
                    index_elements=["day"], set_={metric: column + amount}
                )
                connection.execute(statement)
    except Exception:
        _counter.give_back(counts)
        log.exception("could not write the daily counts; kept for the next try")


def _flush_in(app: Flask) -> None:
    try:
        with app.app_context():
            flush()
    except Exception:
        log.exception("could not write the daily counts")


def discard_pending() -> None:
    """Forget this process's unwritten counts (a new app, e.g. the next test's database)."""
    _counter.take()
    _counter.app = None


@atexit.register
def _flush_at_exit() -> None:
    app = _counter.app
    if app is None or not _counter.pending:
        return
    _flush_in(app)


@dataclass(frozen=True)
class State:
    """What the installation holds right now."""

    mailboxes: int
    trials: int
    used_bytes: int
    quota_bytes: int


def current_state(session: Session) -> State:
    row = session.execute(
        select(
            func.count(Mailbox.id),
            func.count(Mailbox.id).filter(Mailbox.plan == Plan.TRIAL.value),
            func.coalesce(func.sum(Mailbox.used_bytes), 0),
            func.coalesce(func.sum(Mailbox.quota_bytes), 0),
        )
    ).one()
    return State(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def record_state(session: Session) -> dict[str, Any]:
    """The hourly `daily-stats` job: today's row takes the current state (the last run of a
    day is what that day shows), and this process's pending counts are written."""
    state = current_state(session)
    day = now().date()
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = {
        "mailboxes": state.mailboxes,
        "trials": state.trials,
        "used_bytes": state.used_bytes,
        "quota_bytes": state.quota_bytes,
    }
    statement = insert(DailyStat).values(day=day, **values)
    session.execute(statement.on_conflict_do_update(index_elements=["day"], set_=values))
    session.commit()
    flush()
    return {"day": day.isoformat(), **values}


@dataclass(frozen=True)
class DayPoint:
    """One day of the charts; None where nothing was recorded that day."""

    day: date
    mailboxes: int | None
    trials: int | None
    used_bytes: int | None
    deliveries: int | None
    failed_logins: int | None


def series(session: Session, days: int = DEFAULT_DAYS) -> list[DayPoint]:
    """The last `days` days, oldest first; today's state is the live one (not the last run's),
    today's counts include what this process has not written yet."""
    flush()
    today = now().date()
    first = today - timedelta(days=days - 1)
    # Columns, not entities: a row this session holds already is read again, not reused.
    columns = (
        DailyStat.day,
        DailyStat.mailboxes,
        DailyStat.trials,
        DailyStat.used_bytes,
        DailyStat.deliveries,
        DailyStat.failed_logins,
    )
    selected = session.execute(select(*columns).where(DailyStat.day >= first))
    rows = {row.day: row for row in selected}
    live = current_state(session)
    points = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = rows.get(day)
        if day == today:
            points.append(
                DayPoint(
                    day,
                    live.mailboxes,
                    live.trials,
                    live.used_bytes,
                    row.deliveries if row else 0,
                    row.failed_logins if row else 0,
                )
            )
        elif row is None:
            points.append(DayPoint(day, None, None, None, None, None))
        else:
            points.append(
                DayPoint(
                    day,
                    row.mailboxes,
                    row.trials,
                    row.used_bytes,
                    row.deliveries,
                    row.failed_logins,
                )
            )
    return points
