"""Hourly trial lifecycle: reminders before the end, expiry, deletion after the grace period."""

from __future__ import annotations

from typing import Any

from flask import Flask

from provider.extensions import db
from provider.services import trials
from provider.services.audit import Actor
from provider.services.storage import mail_store

ACTOR = Actor("job:trial-lifecycle")


def trial_lifecycle(app: Flask) -> dict[str, Any]:
    """Remind trials 7/3/1 days before their end (once each), expire the ones that ended, and
    delete those past the grace period with their mail and backups. As of clock.now()."""
    with app.app_context():
        try:
            report = trials.run_lifecycle(db.session, mail_store(), actor=ACTOR)
        finally:
            db.session.remove()
    return report.to_dict()
