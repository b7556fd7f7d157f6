"""Admin dashboard: domains, mailboxes by plan, policy and status, storage, trials by stage,
mailboxes whose sending is suspended, trial upgrade requests waiting for an answer."""

from __future__ import annotations

from flask import current_app, render_template

from provider.extensions import db
from provider.services import reports, sending, trials, upgrades
from provider.supervisor import read_states
from provider.web.admin import bp
from provider.web.admin.access import current_admin, scope


@bp.get("/")
def dashboard() -> str:
    domain_ids = scope()
    stats = reports.dashboard_stats(db.session, domain_ids)
    trial_stages = trials.trial_stages(db.session, domain_ids)
    # The processes of `provider serve` concern the whole installation: superadmins only.
    services = (
        read_states(current_app.config.get("SERVICE_STATUS_FILE"))
        if current_admin().is_superadmin
        else None
    )
    return render_template(
        "admin/dashboard.html",
        stats=stats,
        trials=trial_stages,
        services=services,
        suspended_senders=sending.suspended_mailboxes(db.session, domain_ids),
        upgrade_requests=upgrades.pending_requests(db.session, domain_ids),
    )
