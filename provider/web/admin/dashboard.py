"""Admin dashboard: domains, mailboxes by plan, protocol policy and status, storage totals."""

from __future__ import annotations

from flask import render_template

from provider.extensions import db
from provider.services import reports
from provider.web.admin import bp
from provider.web.admin.access import scope


@bp.get("/")
def dashboard() -> str:
    stats = reports.dashboard_stats(db.session, scope())
    return render_template("admin/dashboard.html", stats=stats)
