"""Mailbox owner login and logout, throttled per address and per remote address like the admins'."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from provider.extensions import db
from provider.services import auth as auth_service
from provider.services import mail_access, ratelimit
from provider.services.ratelimit import FailureLimiter
from provider.web.account import bp
from provider.web.account.forms import AccountLoginForm
from provider.web.account.sessions import current_mailbox, end_session, may_log_in, start_session

GENERIC_FAILURE = "Wrong e-mail address or password."
TOO_MANY = "Too many failed logins. Try again later."
SUSPENDED = "This mailbox is suspended; contact your provider."


def login_limiter() -> FailureLimiter:
    return ratelimit.login_limiter(current_app, "account")


def _page(form: AccountLoginForm, error: str | None, status: int = 200) -> tuple[str, int]:
    return render_template("account/login.html", form=form, error=error), status


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int]:
    """Check the mailbox's own address and password; a blocked one gets a generic 429."""
    if current_mailbox() is not None:
        return redirect(url_for("account.overview"))  # type: ignore[return-value]
    form = AccountLoginForm()
    if not form.validate_on_submit():
        return _page(form, None)
    address = (form.email.data or "").strip().lower()
    keys = (f"email:{address}", f"ip:{request.remote_addr}")
    limiter = login_limiter()
    # The same passwords as IMAP and POP3, so their ban list applies here too, both ways.
    bans = mail_access.guards(current_app).bans
    remote = request.remote_addr or ""
    if limiter.blocked(*keys) or bans.banned(remote):
        return _page(form, TOO_MANY, 429)
    mailbox = auth_service.authenticate_mailbox(db.session, address, form.password.data or "")
    if mailbox is None:
        limiter.fail(*keys)
        bans.failure(remote)
        db.session.rollback()
        return _page(form, GENERIC_FAILURE)
    db.session.commit()  # keeps a rehashed password
    limiter.reset(keys[0])
    # Only someone who knows the password learns that the mailbox is suspended (RELIABILITY A6).
    if not may_log_in(mailbox):
        return _page(form, SUSPENDED)
    start_session(mailbox)
    return redirect(url_for("account.overview"))  # type: ignore[return-value]


@bp.post("/logout")
def logout() -> Response:
    end_session()
    flash("You are logged out.", "info")
    return redirect(url_for("account.login"))  # type: ignore[return-value]
