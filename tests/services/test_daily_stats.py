"""Daily counts: kept in memory, written by a thread of their own when due, never lost to it."""

from __future__ import annotations

from provider.models import DailyStat
from provider.services import clock, daily_stats
from tests.conftest import wait_until


def test_counts_reach_the_database_on_their_own_thread_when_due(app, session):
    """Enough pending counts start a flush without the counting caller waiting on it (the
    caller may hold a write transaction that an SQLite write on its own thread would wait on)."""
    session.execute(DailyStat.__table__.select())  # the caller holds a transaction open
    for _ in range(daily_stats.FLUSH_PENDING):
        daily_stats.count("deliveries")
    today = clock.now().date()

    def written() -> bool:
        session.expire_all()
        session.rollback()
        row = session.get(DailyStat, today)
        return row is not None and row.deliveries == daily_stats.FLUSH_PENDING

    assert wait_until(written, timeout=15)
    daily_stats.count("failed_logins", 2)  # below the threshold: waits in memory
    session.rollback()
    assert session.get(DailyStat, today).failed_logins == 0
    daily_stats.flush()
    session.expire_all()
    assert session.get(DailyStat, today).failed_logins == 2


def test_unknown_metrics_are_refused_and_nothing_is_counted_twice(app, session):
    import pytest

    with pytest.raises(ValueError):
        daily_stats.count("logins")
    daily_stats.count("deliveries", 0)
    daily_stats.count("deliveries", -5)
    daily_stats.flush()
    assert session.get(DailyStat, clock.now().date()) is None
