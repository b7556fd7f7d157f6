"""Scheduled backup jobs: `backup` (snapshots, then retention) and `backup-verify`."""

from __future__ import annotations

from typing import Any

from flask import Flask

from provider.extensions import db
from provider.services import backups


def backup(app: Flask) -> dict[str, Any]:
    """Snapshot every IMAP mailbox (POP3-only ones are skipped and counted), then retention."""
    with app.app_context():
        try:
            summary = backups.run_backups(db.session, None, retention=True)
        finally:
            db.session.remove()
    return summary.to_dict()


def backup_verify(app: Flask) -> dict[str, Any]:
    """Re-read every backup object and manifest; name what is damaged or missing."""
    with app.app_context():
        try:
            report = backups.verify(db.session, None)
        finally:
            db.session.remove()
    return report.to_dict()
