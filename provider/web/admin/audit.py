"""The audit log: admin changes newest first, filtered, paged, limited to an admin's domains."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from flask import current_app, render_template, request

from provider.extensions import db
from provider.services import reports
from provider.web.admin import bp
from provider.web.admin.access import page_arg, scope_names
from provider.web.admin.forms import AuditFilterForm


@bp.get("/audit")
def audit_log() -> str:
    form = AuditFilterForm(request.args)
    # A bad date is reported next to its filter and left out; the other filters still apply.
    form.validate()
    since = form.since.data if not form.since.errors else None
    until = form.until.data if not form.until.errors else None
    page = reports.list_audit_events(
        db.session,
        actor=form.actor.data or None,
        action=form.action.data or None,
        target=form.target.data or None,
        since=datetime.combine(since, time.min, UTC) if since else None,
        # "To" is inclusive: events before the next midnight (UTC).
        until=datetime.combine(until, time.min, UTC) + timedelta(days=1) if until else None,
        domains=scope_names(),
        page=page_arg(),
        per_page=int(current_app.config["PAGE_SIZE"]),
    )
    return render_template("admin/audit/list.html", form=form, page=page)
