"""Hourly dashboard numbers: today's state into daily_stats, pending counts written."""

from __future__ import annotations

from typing import Any

from flask import Flask

from provider.extensions import db
from provider.services import daily_stats


def record_daily_stats(app: Flask) -> dict[str, Any]:
    """Today's mailboxes, trials and storage (the day's last run is what the day shows)."""
    with app.app_context():
        try:
            return daily_stats.record_state(db.session)
        finally:
            db.session.remove()
