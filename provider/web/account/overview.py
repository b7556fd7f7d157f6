"""The portal's overview page: address, plan, quota usage, protocols, latest backup."""

from __future__ import annotations

from flask import render_template

from provider.extensions import db
from provider.services import backups
from provider.web.account import bp
from provider.web.account.sessions import current_mailbox


@bp.get("/")
def overview() -> str:
    mailbox = current_mailbox()
    assert mailbox is not None  # require_login ran
    snapshots = backups.list_snapshots(db.session, mailbox.address) if mailbox.imap_enabled else []
    return render_template(
        "account/overview.html",
        mailbox=mailbox,
        latest_snapshot=snapshots[0] if snapshots else None,
        snapshot_count=len(snapshots),
    )
