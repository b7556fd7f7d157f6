"""Web front ends: blueprints, login wiring and the health check."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import text

from provider.extensions import db, login_manager
from provider.models import AdminUser
from provider.supervisor import read_states


@login_manager.user_loader
def load_admin(session_id: str) -> AdminUser | None:
    """Session ids are `<admin id>:<epoch>`: a bumped epoch voids every older cookie."""
    admin_id, _, epoch = session_id.partition(":")
    if not admin_id.isdigit() or not epoch.isdigit():
        return None
    admin = db.session.get(AdminUser, int(admin_id))
    if admin is None or not admin.active or admin.session_epoch != int(epoch):
        return None
    return admin


def register_web(app: Flask) -> None:
    from provider.web.account import bp as account_bp
    from provider.web.admin import bp as admin_bp
    from provider.web.api import init_api
    from provider.web.autoconfig import bp as autoconfig_bp
    from provider.web.errors import register_error_pages
    from provider.web.signup import init_signup

    register_error_pages(app)  # first: its bounded <int:…> applies to the routes added below

    login_manager.login_view = "admin.login"
    login_manager.login_message = "Please log in."
    login_manager.login_message_category = "info"
    app.register_blueprint(admin_bp)
    app.register_blueprint(account_bp)
    app.register_blueprint(autoconfig_bp)
    init_signup(app)
    init_api(app)

    @app.get("/healthz")
    def healthz() -> tuple[str, int, dict[str, str]]:
        """`ok` and 200 when the database answers (DESIGN.md §3); under `provider serve`, then
        one line per service: its name and state, with its restarts (docs/DESIGN-NOTES.md,
        "Processes"). `database unavailable` and 503 when the database does not answer."""
        plain = {"Content-Type": "text/plain", "Cache-Control": "no-store"}
        try:
            db.session.execute(text("SELECT 1"))
        except Exception:  # any database failure means "not healthy"; the reason is logged
            app.logger.exception("health check: database did not answer")
            return "database unavailable\n", 503, plain
        states = read_states(app.config.get("SERVICE_STATUS_FILE"))
        if not states:
            return "ok\n", 200, plain
        lines = ["ok", *(f"{state.name}: {state.summary}" for state in states)]
        return "\n".join(lines) + "\n", 200, plain
