"""One row per day of the numbers the dashboard draws over time."""

from __future__ import annotations

from datetime import date

from sqlalchemy import BigInteger, Date
from sqlalchemy.orm import Mapped, mapped_column

from provider.extensions import db


class DailyStat(db.Model):  # type: ignore[name-defined,misc]
    """A day (UTC): counts that add up during it (deliveries, failed logins) and the state
    taken at its last hourly `daily-stats` run (mailboxes, running trials, storage)."""

    __tablename__ = "daily_stats"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    mailboxes: Mapped[int | None] = mapped_column()
    trials: Mapped[int | None] = mapped_column()
    used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    deliveries: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    failed_logins: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    def __repr__(self) -> str:
        return f"<DailyStat {self.day}>"
