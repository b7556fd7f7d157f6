"""Admin dashboard: domains, mailboxes by plan, policy and status, storage, trials by stage."""

from __future__ import annotations

from flask import render_template

from provider.extensions import db
from provider.services import reports, trials
from provider.web.admin import bp
from provider.web.admin.access import scope


@bp.get("/")
def dashboard() -> str:
    domain_ids = scope()
    stats = reports.dashboard_stats(db.session, domain_ids)
    trial_stages = trials.trial_stages(db.session, domain_ids)
    return render_template("admin/dashboard.html", stats=stats, trials=trial_stages)
