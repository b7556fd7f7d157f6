"""Admin login and logout, throttled per e-mail and per remote address."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, logout_user
from werkzeug.wrappers import Response

from provider.extensions import db
from provider.services import admins, mail_access, ratelimit
from provider.services import auth as auth_service
from provider.services.ratelimit import FailureLimiter
from provider.web.admin import bp
from provider.web.admin.access import current_admin
from provider.web.admin.forms import LoginForm
from provider.web.admin.two_factor import (
    TOO_MANY,
    finish_login,
    remembered_device,
    start_second_step,
)

GENERIC_FAILURE = "Wrong e-mail or password."


def login_limiter() -> FailureLimiter:
    return ratelimit.login_limiter(current_app, "admin")


def _safe_next(target: str | None) -> str:
    """Only follow a `next` that stays on this site (no open redirect)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and "\\" not in target:
            return target
    return url_for("admin.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    """Check the credentials; a blocked e-mail or address gets a generic 429."""
    if current_user.is_authenticated:
        return redirect(url_for("admin.dashboard"))
    form = LoginForm()
    if form.validate_on_submit():
        email = (form.email.data or "").strip().lower()
        keys = (f"email:{email}", f"ip:{request.remote_addr}")
        limiter = login_limiter()
        # The mail protocols' ban list too: a ban earned on IMAP or POP3 covers the panel.
        bans = mail_access.guards(current_app).bans
        remote = request.remote_addr or ""
        if limiter.blocked(*keys) or bans.banned(remote):
            return render_template("admin/login.html", form=form, error=TOO_MANY), 429
        admin = auth_service.authenticate_admin(db.session, email, form.password.data or "")
        if admin is None:
            limiter.fail(*keys)
            bans.failure(remote)
            db.session.rollback()
            return render_template("admin/login.html", form=form, error=GENERIC_FAILURE), 200
        next_page = _safe_next(request.args.get("next"))
        if admin.two_factor_enabled and not remembered_device(admin):
            # Not logged in yet, and the account's failure count stays: wrong codes after
            # right passwords must add up (the code page resets it when both are right).
            db.session.commit()  # a password rehash, if the verification made one
            return start_second_step(admin, next_page)
        limiter.reset(keys[0])
        return finish_login(admin, next_page)
    return render_template("admin/login.html", form=form, error=None)


@bp.post("/logout")
def logout() -> Response:
    """End every session of this admin (the epoch bump voids old cookies), then this one."""
    admins.end_sessions(db.session, current_admin())
    db.session.commit()
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("admin.login"))
