"""The outbound queue (/admin/queue): open messages, one message's recipients, retry, delete."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from provider.errors import NotFound, ProviderError
from provider.extensions import db
from provider.models import OutboundMessage
from provider.services import outbound
from provider.services.clock import now
from provider.web.admin import bp
from provider.web.admin.access import actor, scope
from provider.web.admin.forms import ConfirmForm

# The page lists the oldest open messages; a queue longer than this is a job for the CLI.
PAGE_LIMIT = 500


def get_message_or_404(queue_id: str) -> OutboundMessage:
    """A queued message the logged-in admin may see; one of another tenant's mailboxes (or
    system mail, for a domain admin) answers 404 like a missing one."""
    try:
        message = outbound.find(db.session, queue_id)
    except NotFound:
        abort(404)
    if not outbound.visible(db.session, message, scope()):
        abort(404)
    return message


@bp.app_template_filter("age")
def age(moment: datetime | None) -> str:
    """How long ago, compactly: 45s, 12m, 3h05m, 2d04h."""
    if moment is None:
        return "—"
    seconds = max(int((now() - moment).total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


# App-wide: the admin layout is also used by error pages the app (not the blueprint) renders.
@bp.app_context_processor
def queue_nav_context() -> dict[str, Any]:
    def queue_open_count() -> int:
        """Open messages for the nav link (only what this admin may see)."""
        if not current_user.is_authenticated:
            return 0
        return outbound.visible_count(db.session, scope())

    return {"queue_open_count": queue_open_count}


@bp.get("/queue")
def queue() -> str:
    search = outbound.clean_search(request.args.get("q", ""))
    messages = outbound.list_visible(
        db.session, domain_ids=scope(), search=search, limit=PAGE_LIMIT + 1
    )
    return render_template(
        "admin/queue/list.html",
        messages=messages[:PAGE_LIMIT],
        truncated=len(messages) > PAGE_LIMIT,
        limit=PAGE_LIMIT,
        search=search,
        form=ConfirmForm(formdata=None),
    )


@bp.post("/queue/retry")
def retry_queue() -> Response:
    if ConfirmForm().validate_on_submit():
        count = outbound.retry(db.session, None, actor=actor(), domain_ids=scope())
        flash(f"{count} deferred recipient(s) will be tried again now.", "success")
    return redirect(url_for("admin.queue"))


@bp.get("/queue/<queue_id>")
def queue_message(queue_id: str) -> str:
    message = get_message_or_404(queue_id)
    return render_template(
        "admin/queue/detail.html",
        message=message,
        record=outbound.message_record(message),
        form=ConfirmForm(formdata=None),
    )


@bp.post("/queue/<queue_id>/retry")
def retry_queue_message(queue_id: str) -> Response:
    message = get_message_or_404(queue_id)
    if ConfirmForm().validate_on_submit():
        count = outbound.retry(db.session, message.queue_id, actor=actor())
        flash(f"{count} recipient(s) of {message.queue_id} will be tried again now.", "success")
    return redirect(url_for("admin.queue_message", queue_id=message.queue_id))


@bp.get("/queue/<queue_id>/delete/confirm")
def confirm_delete_queue_message(queue_id: str) -> str:
    message = get_message_or_404(queue_id)
    return render_template("admin/queue/delete.html", message=message, form=ConfirmForm())


@bp.post("/queue/<queue_id>/delete")
def delete_queue_message(queue_id: str) -> Response | str:
    message = get_message_or_404(queue_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        try:
            count = outbound.delete(db.session, message.queue_id, actor=actor())
        except ProviderError as exc:
            db.session.rollback()
            form.form_errors.append(exc.message)
        else:
            flash(
                f"Message {message.queue_id} deleted for {count} recipient(s); no bounce is sent.",
                "success",
            )
            return redirect(url_for("admin.queue"))
    return render_template("admin/queue/delete.html", message=message, form=form)
