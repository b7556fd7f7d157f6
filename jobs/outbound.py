"""Hourly queue housekeeping: prune finished messages and old sending counts, sweep the spool."""

from __future__ import annotations

from typing import Any

from flask import Flask

from provider.extensions import db
from provider.services import outbound, sending, sieve_actions, sieve_duplicates, webhooks


def outbound_cleanup(app: Flask) -> dict[str, Any]:
    """Delete queue rows of messages finished more than OUTBOUND_KEEP_DAYS ago (open ones stay,
    however old), sending_counts buckets older than 8 days, spool files nobody needs, vacation
    replies and Sieve duplicate IDs whose period is over, webhook deliveries finished more than
    WEBHOOK_KEEP_DAYS ago.
    As of clock.now()."""
    with app.app_context():
        try:
            keep_days = float(app.config["OUTBOUND_KEEP_DAYS"])
            messages = outbound.prune_finished(db.session, keep_days)
            counts = sending.prune_counts(db.session)
            spool = outbound.sweep_spool(db.session)
            vacations = sieve_actions.prune_responses(db.session)
            duplicates = sieve_duplicates.prune(db.session)
            hooks = webhooks.prune_finished(db.session, float(app.config["WEBHOOK_KEEP_DAYS"]))
        finally:
            db.session.remove()
    return {
        "messages_deleted": messages,
        "sending_counts_deleted": counts,
        "spool_files_removed": spool,
        "vacation_responses_deleted": vacations,
        "sieve_duplicates_deleted": duplicates,
        "webhook_deliveries_deleted": hooks,
        "keep_days": keep_days,
    }
