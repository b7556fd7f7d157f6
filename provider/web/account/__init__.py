"""The mailbox owner's portal (/account/): login, overview and the time machine of one mailbox."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from provider.models import Mailbox
from provider.web.account.sessions import current_mailbox

bp = Blueprint("account", __name__, url_prefix="/account")

# Endpoints reachable without an account session; every other one needs it (one check here,
# so a page added later, e.g. by issue 7, cannot be left open by a missing decorator).
PUBLIC_ENDPOINTS = frozenset({"account.login"})

# The portal's menu: (endpoint, label). Issue 7 adds its pages here.
NAV_ITEMS: list[tuple[str, str]] = [
    ("account.overview", "Overview"),
    ("account.backups", "Backups"),
    ("account.identities_page", "Sender addresses"),
    ("account.rules_page", "Rules"),
]


@bp.before_request
def require_login() -> Response | None:
    if request.endpoint not in PUBLIC_ENDPOINTS and current_mailbox() is None:
        return redirect(url_for("account.login"))  # type: ignore[return-value]
    return None


# Pages only a mailbox that uses IMAP has (POP3 mail leaves the server: nothing to back up).
IMAP_ONLY_ITEMS = frozenset({"account.backups"})


def nav_items(mailbox: Mailbox | None) -> list[tuple[str, str]]:
    """The menu for this mailbox: no Backups for a POP3-only one."""
    imap = mailbox is not None and mailbox.imap_enabled
    return [item for item in NAV_ITEMS if imap or item[0] not in IMAP_ONLY_ITEMS]


@bp.context_processor
def account_context() -> dict[str, Any]:
    mailbox = current_mailbox()
    return {"account_mailbox": mailbox, "account_nav": nav_items(mailbox)}


@bp.errorhandler(CSRFError)
def csrf_failed(error: CSRFError) -> tuple[str, int]:
    return render_template(
        "account/error.html",
        code=400,
        title="The form expired",
        message="The form was too old or not sent from this site. Go back, reload and try again.",
    ), 400


@bp.errorhandler(404)
def not_found(error: HTTPException) -> tuple[str, int]:
    return render_template(
        "account/error.html", code=404, title="Not found", message=error.description
    ), 404


from provider.web.account import (  # noqa: E402  (views register on bp)
    auth,
    backups,
    identities,
    overview,
    rules,
)

__all__ = ["auth", "backups", "bp", "identities", "overview", "rules"]
