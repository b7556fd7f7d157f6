"""The admin panel (/admin/): login, dashboard, domains, mailboxes, aliases, audit log, admins."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from provider.extensions import login_manager

bp = Blueprint("admin", __name__, url_prefix="/admin")

# Endpoints reachable without logging in; every other admin view needs a session, so a view
# added later cannot be left open by forgetting a decorator.
PUBLIC_ENDPOINTS = frozenset({"admin.login", "admin.login_second_step"})


@bp.before_request
def require_login() -> Response | None:
    if request.endpoint not in PUBLIC_ENDPOINTS and not current_user.is_authenticated:
        return login_manager.unauthorized()  # type: ignore[no-any-return]
    return None


@bp.errorhandler(CSRFError)
def csrf_failed(error: CSRFError) -> tuple[str, int]:
    return render_template(
        "admin/error.html",
        code=400,
        title="The form expired",
        message="The form was too old or not sent from this site. Go back, reload and try again.",
    ), 400


@bp.errorhandler(403)
@bp.errorhandler(404)
def http_error(error: HTTPException) -> tuple[str, int]:
    titles = {403: "Not allowed", 404: "Not found"}
    code = error.code or 500
    return render_template(
        "admin/error.html", code=code, title=titles.get(code, "Error"), message=error.description
    ), code


from provider.web.admin import (  # noqa: E402  (views register on bp)
    admins,
    aliases,
    api,
    audit,
    auth,
    backups,
    dashboard,
    domains,
    filters,
    identities,
    jobs,
    mailbox_csv,
    mailboxes,
    queue,
    rules,
    sending,
    two_factor,
    upgrades,
    webhooks,
)

__all__ = [
    "admins",
    "aliases",
    "api",
    "audit",
    "auth",
    "backups",
    "bp",
    "dashboard",
    "domains",
    "filters",
    "identities",
    "jobs",
    "mailbox_csv",
    "mailboxes",
    "queue",
    "rules",
    "sending",
    "two_factor",
    "upgrades",
    "webhooks",
]
