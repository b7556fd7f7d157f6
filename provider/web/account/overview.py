"""The portal's overview: usage, protocols and client settings, the trial and its upgrade
request, the password change, and the latest backup."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Mailbox
from provider.services import auth as auth_service
from provider.services import backups, mail_access, provisioning
from provider.services.audit import Actor
from provider.web.account import bp
from provider.web.account.auth import TOO_MANY, login_limiter
from provider.web.account.forms import PasswordChangeForm, UpgradeRequestForm
from provider.web.account.sessions import current_mailbox, start_session
from provider.web.account.trial import request_upgrade, trial_state
from provider.web.autoconfig import client_settings

WRONG_CURRENT = "The current password is wrong."
PASSWORD_CHANGED = (
    "Your password has been changed. Other browsers logged in to this page were logged out; "
    "enter the new password in your mail programs too."
)
UPGRADE_RECORDED = (
    "Thank you: your upgrade request has been sent. An administrator will convert your "
    "mailbox to a paid one; until then nothing changes, and you keep all your mail."
)
UPGRADE_ALREADY = "Your upgrade request was already sent; an administrator will convert it."
NOT_A_TRIAL = "This mailbox is not a trial: there is nothing to upgrade."


def _owner() -> Mailbox:
    mailbox = current_mailbox()
    assert mailbox is not None  # require_login ran
    return mailbox


def _actor(mailbox: Mailbox) -> Actor:
    return Actor(f"mailbox:{mailbox.address}", request.remote_addr)


def _render(password_form: PasswordChangeForm | None = None, status: int = 200) -> tuple[str, int]:
    mailbox = _owner()
    snapshots = backups.list_snapshots(db.session, mailbox.address) if mailbox.imap_enabled else []
    return render_template(
        "account/overview.html",
        mailbox=mailbox,
        latest_snapshot=snapshots[0] if snapshots else None,
        snapshot_count=len(snapshots),
        servers=client_settings(mailbox.protocols),
        trial=trial_state(db.session, mailbox),
        upgrade_form=UpgradeRequestForm(formdata=None),
        password_form=password_form or PasswordChangeForm(formdata=None),
        min_password_length=int(current_app.config["PASSWORD_MIN_LENGTH"]),
    ), status


@bp.get("/")
def overview() -> tuple[str, int]:
    return _render()


@bp.post("/upgrade")
def upgrade() -> Response:
    """Record an upgrade request (audit event); an admin converts, nothing changes by itself."""
    mailbox = _owner()
    if UpgradeRequestForm().validate_on_submit():
        if request_upgrade(db.session, mailbox, _actor(mailbox)):
            db.session.commit()
            flash(UPGRADE_RECORDED, "success")
        else:
            flash(UPGRADE_ALREADY if mailbox.plan == "trial" else NOT_A_TRIAL, "info")
    return redirect(url_for("account.overview"))  # type: ignore[return-value]


@bp.post("/password")
def change_password() -> Response | tuple[str, int]:
    """Check the current password (throttled like the login), then set the new one through
    provisioning; every other owner session ends (their epoch), this one is issued again."""
    mailbox = _owner()
    form = PasswordChangeForm()
    if not form.validate_on_submit():
        return _render(form)
    keys = (f"email:{mailbox.address}", f"ip:{request.remote_addr}")
    limiter = login_limiter()
    bans = mail_access.guards(current_app).bans
    remote = request.remote_addr or ""
    if limiter.blocked(*keys) or bans.banned(remote):
        form.current_password.errors = [TOO_MANY]
        return _render(form, 429)
    current = form.current_password.data or ""
    if not auth_service.verify_password(mailbox.password_hash, current).ok:
        # A stolen session must not become a password oracle: failures count as failed logins.
        limiter.fail(*keys)
        bans.failure(remote)
        form.current_password.errors = [WRONG_CURRENT]
        return _render(form)
    try:
        provisioning.update_mailbox(
            db.session, mailbox, actor=_actor(mailbox), password=form.new_password.data or ""
        )
        db.session.commit()
    except ProviderError as exc:
        db.session.rollback()
        form.new_password.errors = [exc.message]  # as the admin and signup forms show it
        return _render(form)
    limiter.reset(keys[0])
    start_session(mailbox)  # the new epoch: this browser stays in, all others are out
    flash(PASSWORD_CHANGED, "success")
    return redirect(url_for("account.overview"))  # type: ignore[return-value]
