"""Admin two-factor login: the second login step, the setup page, remembered browsers."""

from __future__ import annotations

from typing import Any

import segno
from flask import (
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_user
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from markupsafe import Markup
from werkzeug.wrappers import Response

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import AdminUser
from provider.services import admins, mail_access, ratelimit
from provider.services import auth as auth_service
from provider.services import two_factor as two_factor_service
from provider.services.audit import Actor
from provider.services.clock import now
from provider.web.admin import bp
from provider.web.admin.access import actor, current_admin, show_error
from provider.web.admin.forms import SecondStepForm, TwoFactorConfirmForm, TwoFactorEnableForm

PENDING_KEY = "admin_2fa_pending"
STEP_EXPIRED = "The login took too long. Enter your e-mail and password again."
TOO_MANY = "Too many failed logins. Try again later."
# Pages an admin who must set up two-factor login may still open (ADMIN_2FA_REQUIRED).
SETUP_ENDPOINTS = frozenset({"admin.two_factor", "admin.two_factor_enable", "admin.logout"})


# --- the login's second step ------------------------------------------------------------------


def required_of(admin: AdminUser) -> bool:
    """Whether this admin must have two-factor login (a superadmin under ADMIN_2FA_REQUIRED)."""
    return bool(current_app.config["ADMIN_2FA_REQUIRED"]) and admin.is_superadmin


def start_second_step(admin: AdminUser, next_page: str) -> Response:
    """After the right password: a fresh session that is not logged in, holding who is half
    way in and since when; the code page finishes the login."""
    session.clear()
    session[PENDING_KEY] = {
        "admin": admin.id,
        "epoch": admin.session_epoch,
        "started": now().timestamp(),
        "next": next_page,
    }
    return redirect(url_for("admin.login_second_step"))


def _pending_admin() -> tuple[AdminUser, str] | None:
    """The admin half way in and where to go after, or None when there is none or it expired
    (a changed password or an ended session voids it like any session)."""
    pending = session.get(PENDING_KEY)
    if not isinstance(pending, dict):
        return None
    started = pending.get("started")
    limit = float(current_app.config["ADMIN_2FA_STEP_SECONDS"])
    if not isinstance(started, int | float) or not 0 <= now().timestamp() - started <= limit:
        return None
    admin = db.session.get(AdminUser, pending.get("admin"))
    if (
        admin is None
        or not admin.active
        or admin.session_epoch != pending.get("epoch")
        or not admin.two_factor_enabled
    ):
        return None
    return admin, str(pending.get("next") or url_for("admin.dashboard"))


def finish_login(admin: AdminUser, next_page: str) -> Response:
    """Both factors (or the password alone, where no second one applies) passed."""
    admins.record_login(db.session, admin)
    db.session.commit()
    # A fresh session on login: nothing from before login survives (session fixation).
    session.clear()
    session.permanent = True
    login_user(admin)
    if required_of(admin) and not admin.two_factor_enabled:
        flash("Set up two-factor login to continue: it is required for superadmins.", "info")
        return redirect(url_for("admin.two_factor"))
    return redirect(next_page)


def _throttle_keys(admin: AdminUser) -> tuple[str, str]:
    # The password's buckets: a code guessed wrong counts like a password guessed wrong.
    return f"email:{admin.email}", f"ip:{request.remote_addr}"


def login_limiter() -> ratelimit.FailureLimiter:
    return ratelimit.login_limiter(current_app, "admin")


def _blocked(admin: AdminUser) -> bool:
    remote = request.remote_addr or ""
    return login_limiter().blocked(*_throttle_keys(admin)) or mail_access.guards(
        current_app
    ).bans.banned(remote)


def _failed(admin: AdminUser, step: str) -> None:
    """Count a wrong code or password against the account and the address, and audit it."""
    db.session.rollback()
    login_limiter().fail(*_throttle_keys(admin))
    mail_access.guards(current_app).bans.failure(request.remote_addr or "")
    two_factor_service.record_failure(
        db.session, admin, Actor(f"admin:{admin.email}", request.remote_addr), step
    )
    db.session.commit()


@bp.route("/login/two-factor", methods=["GET", "POST"])
def login_second_step() -> Response | str | tuple[str, int]:
    """The code after the password; the session is logged in only when it is right."""
    if current_user.is_authenticated:
        return redirect(url_for("admin.dashboard"))
    found = _pending_admin()
    if found is None:
        had_pending = session.pop(PENDING_KEY, None) is not None
        if had_pending:
            flash(STEP_EXPIRED, "info")
        return redirect(url_for("admin.login"))
    admin, next_page = found
    remember_days = int(current_app.config["ADMIN_2FA_REMEMBER_DAYS"])
    form = SecondStepForm()
    if form.validate_on_submit():
        if _blocked(admin):
            return render_template(
                "admin/login_two_factor.html", form=form, error=TOO_MANY, remember=remember_days
            ), 429
        try:
            used = two_factor_service.verify(db.session, admin, form.code.data or "")
        except ProviderError as exc:
            _failed(admin, "login")
            return render_template(
                "admin/login_two_factor.html",
                form=form,
                error=exc.message,
                remember=remember_days,
            ), 200
        login_limiter().reset(_throttle_keys(admin)[0])
        if used is two_factor_service.SecondFactor.RECOVERY:
            two_factor_service.record_recovery_use(
                db.session, admin, Actor(f"admin:{admin.email}", request.remote_addr)
            )
        response = finish_login(admin, next_page)
        if remember_days and form.remember.data:
            _set_device_cookie(response, admin, remember_days)
        if used is two_factor_service.SecondFactor.RECOVERY:
            left = two_factor_service.recovery_codes_left(db.session, admin)
            flash(
                f"You used a recovery code; {left} left. Make new ones on the two-factor page "
                "if you are running out.",
                "info",
            )
        return response
    return render_template(
        "admin/login_two_factor.html", form=form, error=None, remember=remember_days
    )


# --- remembered browsers ----------------------------------------------------------------------


class _ClockSigner(TimestampSigner):
    """Signs with the provider's clock, so tests can let a remembered browser expire."""

    def get_timestamp(self) -> int:
        return int(now().timestamp())


def _device_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        current_app.config["SECRET_KEY"], salt="admin-remember-device", signer=_ClockSigner
    )


def _cookie_secure() -> bool:
    return bool(current_app.config["COOKIE_SECURE"]) or request.is_secure


def device_cookie_name() -> str:
    # __Host-: Secure, Path=/ and no Domain, so no other host can set or read it.
    return "__Host-admin_device" if _cookie_secure() else "admin_device"


def _set_device_cookie(response: Response, admin: AdminUser, days: int) -> None:
    value = _device_serializer().dumps(
        {"admin": admin.id, "bind": two_factor_service.device_binding(admin)}
    )
    response.set_cookie(
        device_cookie_name(),
        value,
        max_age=days * 86400,
        path="/",
        secure=_cookie_secure(),
        httponly=True,
        samesite="Lax",
    )


def remembered_device(admin: AdminUser) -> bool:
    """Whether this browser passed the second step for this admin within
    ADMIN_2FA_REMEMBER_DAYS, since 2FA was last turned on and the password last set."""
    days = int(current_app.config["ADMIN_2FA_REMEMBER_DAYS"])
    value = request.cookies.get(device_cookie_name())
    if not days or not value or len(value) > 512:
        return False
    try:
        payload: Any = _device_serializer().loads(value, max_age=days * 86400)
    except BadSignature:
        return False
    return (
        isinstance(payload, dict)
        and payload.get("admin") == admin.id
        and payload.get("bind") == two_factor_service.device_binding(admin)
    )


# --- the two-factor page ----------------------------------------------------------------------


@bp.before_request
def require_two_factor_setup() -> Response | None:
    """Under ADMIN_2FA_REQUIRED, a superadmin without two-factor login sees only its setup."""
    if (
        request.endpoint not in SETUP_ENDPOINTS
        and current_user.is_authenticated
        and required_of(current_admin())
        and not current_admin().two_factor_enabled
    ):
        flash("Set up two-factor login to continue: it is required for superadmins.", "info")
        return redirect(url_for("admin.two_factor"))
    return None


def qr_code_svg(uri: str) -> Markup:
    """The otpauth URI as an inline SVG QR code, drawn here: no image service, nothing
    fetched, and nothing for the CSP to allow."""
    code = segno.make(uri, error="m")
    svg = code.svg_inline(
        scale=4, border=4, dark="#000", light="#fff", svgclass="totp-qr", title="QR code"
    )
    return Markup(svg.replace("<svg ", '<svg role="img" aria-label="QR code to scan" ', 1))


def _render_page(
    *,
    enable_form: TwoFactorEnableForm | None = None,
    confirm_form: TwoFactorConfirmForm | None = None,
    recovery_codes: list[str] | None = None,
) -> str:
    admin = current_admin()
    setup = None
    if not admin.two_factor_enabled:
        setup = two_factor_service.begin_setup(db.session, admin)
        db.session.commit()
    return render_template(
        "admin/two_factor.html",
        account=admin,
        setup=setup,
        qr_svg=qr_code_svg(setup.uri) if setup else None,
        enable_form=enable_form or TwoFactorEnableForm(formdata=None),
        confirm_form=confirm_form or TwoFactorConfirmForm(formdata=None),
        recovery_codes=recovery_codes,
        codes_left=two_factor_service.recovery_codes_left(db.session, admin),
        required=required_of(admin),
    )


@bp.get("/two-factor")
def two_factor() -> str:
    """On: its state and the recovery codes left. Off: the QR code and secret to set it up."""
    return _render_page()


@bp.post("/two-factor/enable")
def two_factor_enable() -> Response | str | tuple[str, int]:
    """Turn it on with a code from the secret shown; show the recovery codes, once."""
    admin = current_admin()
    form = TwoFactorEnableForm()
    if form.validate_on_submit():
        if _blocked(admin):
            form.code.errors = [TOO_MANY]
            return _render_page(enable_form=form), 429
        try:
            codes = two_factor_service.enable(
                db.session, admin, form.code.data or "", actor=actor()
            )
            db.session.commit()
        except ProviderError as exc:
            _failed(admin, "enable")
            show_error(form, exc)
        else:
            flash(
                "Two-factor login is on. Keep the recovery codes below somewhere safe.", "success"
            )
            # Rendered, not redirected to: the codes exist only in this response.
            return _render_page(recovery_codes=codes)
    return _render_page(enable_form=form)


def _confirmed(admin: AdminUser, form: TwoFactorConfirmForm, step: str) -> bool:
    """Whether the form carries a right code or the right password (throttled, audited)."""
    if _blocked(admin):
        form.form_errors.append(TOO_MANY)
        return False
    code = (form.code.data or "").strip()
    if code:
        try:
            two_factor_service.verify(db.session, admin, code)
            return True
        except ProviderError as exc:
            _failed(admin, step)
            form.code.errors = [exc.message]
            return False
    if auth_service.verify_password(admin.password_hash, form.password.data or "").ok:
        return True
    _failed(admin, step)
    form.password.errors = ["That is not your password."]
    return False


@bp.post("/two-factor/recovery-codes")
def two_factor_recovery_codes() -> Response | str:
    """Ten new recovery codes (the old ones stop working), shown once."""
    admin = current_admin()
    form = TwoFactorConfirmForm()
    if form.validate_on_submit() and _confirmed(admin, form, "recovery-codes"):
        try:
            codes = two_factor_service.regenerate_recovery_codes(db.session, admin, actor=actor())
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash("New recovery codes made; the old ones no longer work.", "success")
            return _render_page(recovery_codes=codes)
    return _render_page(confirm_form=form)


@bp.post("/two-factor/disable")
def two_factor_disable() -> Response | str:
    admin = current_admin()
    form = TwoFactorConfirmForm()
    if form.validate_on_submit() and _confirmed(admin, form, "disable"):
        try:
            two_factor_service.disable(
                db.session, admin, required=required_of(admin), actor=actor()
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            form.form_errors.append(exc.message)
        else:
            flash("Two-factor login is off.", "success")
            return redirect(url_for("admin.two_factor"))
    return _render_page(confirm_form=form)
