"""Admin dashboard: domains, mailboxes by plan, policy and status, storage, trials by stage,
mailboxes whose sending is suspended, trial upgrade requests waiting for an answer, and the
last 30 days as charts."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from flask import current_app, render_template

from provider.extensions import db
from provider.services import daily_stats, reports, sending, trials, upgrades
from provider.services.quota import GIB, format_gb
from provider.supervisor import read_states
from provider.web.admin import bp
from provider.web.admin.access import current_admin, scope
from provider.web.admin.charts import Chart, chart


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
        charts=_charts() if current_admin().is_superadmin else None,
        stats=stats,
        trials=trial_stages,
        services=services,
        suspended_senders=sending.suspended_mailboxes(db.session, domain_ids),
        upgrade_requests=upgrades.pending_requests(db.session, domain_ids),
    )


def _charts() -> list[Chart]:
    """The installation over the last 30 days (superadmins: the numbers span every domain)."""
    days = daily_stats.series(db.session)

    def of(attribute: str) -> list[tuple[date, float | None]]:
        return [(point.day, getattr(point, attribute)) for point in days]

    def number(value: float) -> str:
        return f"{int(value):,}"

    def gigabytes(value: float) -> str:
        return f"{format_gb(round(Decimal(value), 2))} GB"

    # Storage in GB (of 1024³ bytes, as quotas): the axis then ends on a round number of GB.
    storage = [(day, None if used is None else used / GIB) for day, used in of("used_bytes")]
    return [
        chart("storage", "Storage used", storage, gigabytes),
        chart("mailboxes", "Mailboxes", of("mailboxes"), number),
        chart("trials", "Trial mailboxes", of("trials"), number),
        chart("deliveries", "Messages delivered per day", of("deliveries"), number, bars=True),
        chart("failed-logins", "Failed logins per day", of("failed_logins"), number, bars=True),
    ]
