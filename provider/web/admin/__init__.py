"""The admin panel blueprint (/admin/): login, dashboard, domains, mailboxes, aliases, audit."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

from provider.web.admin import auth, dashboard  # noqa: E402,F401  (views register on bp)
