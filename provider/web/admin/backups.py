"""The time machine in the admin panel: find a mailbox, then its snapshots, browse, search,
view, .eml, restore, and take a snapshot now."""

from __future__ import annotations

from flask import current_app, render_template, request
from werkzeug.wrappers import Response

from provider.extensions import db
from provider.services import backups, reports
from provider.web import timemachine
from provider.web.admin import bp
from provider.web.admin.access import actor, get_mailbox_or_404, page_arg, scope
from provider.web.errors import UID_ROUTE_ARGUMENT as UID


@bp.get("/backups")
def time_machine() -> str:
    """The navigation's way in: search a mailbox, see how many snapshots it has, open them."""
    search = request.args.get("q", "").strip()
    page = reports.list_mailboxes(
        db.session,
        search=search,
        domain_ids=scope(),
        page=page_arg(),
        per_page=int(current_app.config["PAGE_SIZE"]),
    )
    return render_template(
        "admin/backups/finder.html",
        page=page,
        search=search,
        summaries=backups.snapshot_summaries(db.session, [m.id for m in page.items]),
        retention_days=backups.retention_days(),
    )


def _tm(mailbox_id: int) -> timemachine.TimeMachine:
    # The tenant check happens here, once: another domain's mailbox is a 404.
    mailbox = get_mailbox_or_404(mailbox_id)
    return timemachine.TimeMachine(
        mailbox=mailbox,
        actor=actor(),
        endpoint_prefix="admin.mailbox_",
        template_dir="admin/backups",
        url_values={"mailbox_id": mailbox.id},
    )


@bp.get("/mailboxes/<int:mailbox_id>/backups")
def mailbox_backups(mailbox_id: int) -> str:
    return timemachine.snapshots_page(_tm(mailbox_id))


@bp.get("/mailboxes/<int:mailbox_id>/backups/<snapshot_id>")
def mailbox_backup_snapshot(mailbox_id: int, snapshot_id: str) -> str:
    return timemachine.snapshot_page(_tm(mailbox_id), snapshot_id)


@bp.get(f"/mailboxes/<int:mailbox_id>/backups/<snapshot_id>/messages/{UID}")
def mailbox_backup_message(mailbox_id: int, snapshot_id: str, uid: int) -> str:
    return timemachine.message_page(_tm(mailbox_id), snapshot_id, uid)


@bp.get(f"/mailboxes/<int:mailbox_id>/backups/<snapshot_id>/messages/{UID}.eml")
def mailbox_backup_eml(mailbox_id: int, snapshot_id: str, uid: int) -> Response:
    return timemachine.eml_download(_tm(mailbox_id), snapshot_id, uid)


@bp.post("/mailboxes/<int:mailbox_id>/backups/<snapshot_id>/restore")
def mailbox_backup_restore(mailbox_id: int, snapshot_id: str) -> Response | str:
    return timemachine.restore_action(_tm(mailbox_id), snapshot_id)


@bp.post("/mailboxes/<int:mailbox_id>/backups/snapshot")
def mailbox_backup_take(mailbox_id: int) -> Response:
    return timemachine.snapshot_action(_tm(mailbox_id))
