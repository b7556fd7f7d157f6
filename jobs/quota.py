"""Nightly mail-store upkeep: recount usage from disk (repairing drift) and clean old tmp/ files."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import select

from provider.extensions import db
from provider.models import Mailbox
from provider.services import quota
from provider.services.audit import Actor
from provider.services.storage import mail_store

ACTOR = Actor("job:quota-recount")


def quota_recount(app: Flask) -> dict[str, Any]:
    """Repair every mailbox's usage from the bytes on disk; remove tmp/ files over 36 h old."""
    with app.app_context():
        try:
            store = mail_store()
            # Reservations of writers that died are settled by the recount below as well;
            # dropping them first keeps the journal from growing between restarts.
            quota.settle_interrupted_reservations(db.session, store)
            repairs = quota.recount_usage(db.session, store, actor=ACTOR)
            cleaned = 0
            for address in db.session.scalars(select(Mailbox.address).order_by(Mailbox.id)):
                if store.exists(address):
                    cleaned += store.open(address).clean_tmp()
            db.session.commit()
        finally:
            db.session.remove()
    return {
        "repaired": [
            {"address": r.address, "recorded_bytes": r.recorded_bytes, "disk_bytes": r.disk_bytes}
            for r in repairs
        ],
        "tmp_files_removed": cleaned,
    }
