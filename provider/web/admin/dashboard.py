"""Admin dashboard: placeholder until the panel lands."""

from __future__ import annotations

from flask import render_template
from flask_login import login_required

from provider.web.admin import bp


@bp.get("/")
@login_required
def dashboard() -> str:
    return render_template("admin/dashboard.html")
