"""The owner's time machine: the same pages as the admin's, for their own mailbox only."""

from __future__ import annotations

from flask import request
from werkzeug.wrappers import Response

from provider.services.audit import Actor
from provider.web import timemachine
from provider.web.account import bp
from provider.web.account.sessions import current_mailbox
from provider.web.errors import UID_ROUTE_ARGUMENT as UID


def _tm() -> timemachine.TimeMachine:
    # The mailbox comes from the session only: no URL names a mailbox, so none can be swapped.
    mailbox = current_mailbox()
    assert mailbox is not None  # require_login ran
    return timemachine.TimeMachine(
        mailbox=mailbox,
        actor=Actor(f"mailbox:{mailbox.address}", request.remote_addr),
        endpoint_prefix="account.",
        template_dir="account/backups",
        for_owner=True,
    )


@bp.get("/backups")
def backups() -> str:
    return timemachine.snapshots_page(_tm())


@bp.get("/backups/<snapshot_id>")
def backup_snapshot(snapshot_id: str) -> str:
    return timemachine.snapshot_page(_tm(), snapshot_id)


@bp.get(f"/backups/<snapshot_id>/messages/{UID}")
def backup_message(snapshot_id: str, uid: int) -> str:
    return timemachine.message_page(_tm(), snapshot_id, uid)


@bp.get(f"/backups/<snapshot_id>/messages/{UID}.eml")
def backup_eml(snapshot_id: str, uid: int) -> Response:
    return timemachine.eml_download(_tm(), snapshot_id, uid)


@bp.post("/backups/<snapshot_id>/restore")
def backup_restore(snapshot_id: str) -> Response | str:
    return timemachine.restore_action(_tm(), snapshot_id)


@bp.post("/backups/snapshot")
def backup_take() -> Response:
    return timemachine.snapshot_action(_tm())
