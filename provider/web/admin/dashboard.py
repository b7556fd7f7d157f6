"""Admin dashboard: domains, mailboxes by plan, policy and status, storage, trials by stage,
mailboxes whose sending is suspended, and the last 30 days as charts."""

from __future__ import annotations

from datetime import date

from flask import current_app, render_template

from provider.extensions import db
from provider.services import daily_stats, reports, sending, trials
from provider.services.quota import format_size
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
    )


def _charts() -> list[Chart]:
    """The installation over the last 30 days (superadmins: the numbers span every domain)."""
    days = daily_stats.series(db.session)

    def of(attribute: str) -> list[tuple[date, int | None]]:
        return [(point.day, getattr(point, attribute)) for point in days]

    def number(value: int) -> str:
        return f"{value:,}"

    return [
        chart("storage", "Storage used", of("used_bytes"), format_size),
        chart("mailboxes", "Mailboxes", of("mailboxes"), number),
        chart("trials", "Trial mailboxes", of("trials"), number),
        chart("deliveries", "Messages delivered per day", of("deliveries"), number, bars=True),
        chart("failed-logins", "Failed logins per day", of("failed_logins"), number, bars=True),
    ]
