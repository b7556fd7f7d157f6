"""Public trial signup at /signup: the form, abuse limits, and the client settings afterwards."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter import Limiter
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import TooManyRequests
from werkzeug.wrappers import Response
from wtforms import BooleanField, EmailField, PasswordField, RadioField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length

from provider.errors import InvalidInput, ProviderError
from provider.extensions import db
from provider.services import auth, provisioning, ratelimit, trials
from provider.services.audit import Actor
from provider.services.clock import now
from provider.services.mail_access import address_group
from provider.web.autoconfig import client_settings

bp = Blueprint("signup", __name__)

# DESIGN.md §3 names the fields; the wording of the protocol choice is issue 7's.
PROTOCOL_LABELS = {"imap": "IMAP", "pop3": "POP3", "both": "Both IMAP and POP3"}
PROTOCOL_HELP = {
    "imap": "Mail stays on the server: every device sees the same folders and read state, and "
    "daily backups let you bring back mail from the last 15 days.",
    "pop3": "Mail downloaded to one device and removed from the server, folders and read state "
    "stay on that device, no backups.",
    "both": "Each of your programs may use either: IMAP keeps mail on the server as above, "
    "while what a POP3 program downloads and removes is gone from the server for every device.",
}
TOO_MANY = "Too many signups from here. Please try again later."
DONE_KEY = "signup_done"
# The honeypot: a field people never see (the `hidden` attribute; no inline style under the
# CSP) and most form-filling robots fill in.
HONEYPOT = "website"


class SignupForm(FlaskForm):
    local_part = StringField("Address", validators=[DataRequired(), Length(max=64)])
    domain = SelectField("Domain", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    password_confirm = PasswordField(
        "Repeat the password",
        validators=[DataRequired(), EqualTo("password", message="The passwords do not match.")],
    )
    contact_email = EmailField(
        "Your current e-mail address", validators=[DataRequired(), Length(max=320)]
    )
    protocol = RadioField(
        "How will you read your mail?",
        choices=[SelectChoice(value, label) for value, label in PROTOCOL_LABELS.items()],
        default="imap",
        validators=[DataRequired(message="Choose IMAP, POP3 or both.")],
    )
    accept_terms = BooleanField(
        "I accept the terms of service",
        validators=[DataRequired(message="Please accept the terms to sign up.")],
    )
    website = StringField("Leave this field empty")


# --- rate limits -------------------------------------------------------------------------------


def _remote_key() -> str:
    return "ip:" + address_group(request.remote_addr or "unknown")


def _contact_key() -> str:
    try:
        return "contact:" + trials.normalize_contact(request.form.get("contact_email", ""))
    except InvalidInput:
        return "contact-unreadable:" + address_group(request.remote_addr or "unknown")


def _looks_created(response: Response) -> bool:
    """A signup that went through (or a honeypot answer, which must look the same)."""
    return response.status_code == 302 and response.location.endswith("/signup/done")


def _limit(name: str) -> Any:
    return lambda: str(current_app.config[name])


def init_signup(app: Flask) -> None:
    """Register the blueprint with its own Limiter (per app, storage from RATELIMIT_STORAGE_URI:
    memory:// counts in the installation's login store, shared by its web processes —
    services/ratelimit — and redis:// in Redis, shared by several machines)."""
    limiter = Limiter(
        _remote_key,
        storage_uri=ratelimit.storage_uri(str(app.config["RATELIMIT_STORAGE_URI"]), app),
    )
    limiter.limit(
        _limit("SIGNUP_LIMIT_PER_ADDRESS"),
        methods=["POST"],
        deduct_when=_looks_created,
        scope="signup-address",
    )(bp)
    limiter.limit(_limit("SIGNUP_ATTEMPTS_PER_ADDRESS"), methods=["POST"], scope="signup-attempts")(
        bp
    )
    limiter.limit(
        _limit("SIGNUP_LIMIT_PER_CONTACT"),
        methods=["POST"],
        key_func=_contact_key,
        scope="signup-contact",
    )(bp)
    app.register_blueprint(bp)
    limiter.init_app(app)
    app.extensions["signup_limiter"] = limiter


@bp.errorhandler(TooManyRequests)
def too_many(_error: TooManyRequests) -> tuple[str, int]:
    return render_template("signup/error.html", title="Please wait", message=TOO_MANY), 429


@bp.errorhandler(CSRFError)
def csrf_failed(_error: CSRFError) -> tuple[str, int]:
    message = "The form was too old or not sent from this site. Go back, reload and try again."
    return render_template("signup/error.html", title="The form expired", message=message), 400


# --- views ---------------------------------------------------------------------------------------


def _form() -> SignupForm:
    form = SignupForm()
    form.domain.choices = [SelectChoice(d.name, d.name) for d in trials.signup_domains(db.session)]
    return form


def _done(address: str, protocol: str) -> Response:
    """POST/redirect/GET to the settings page; what it shows is kept in the (signed) session."""
    ends = now() + timedelta(days=int(current_app.config["TRIAL_DAYS"]))
    session[DONE_KEY] = {
        "address": address,
        "protocols": sorted(provisioning.PROTOCOL_CHOICES[protocol]),
        "trial_ends": ends.isoformat(),
    }
    return redirect(url_for("signup.done"))


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Response | str | tuple[str, int]:
    form = _form()
    if not form.domain.choices:
        return render_template("signup/closed.html"), 404 if request.method == "POST" else 200
    if not form.validate_on_submit():
        return _page(form)
    local = form.local_part.data.strip().lower()
    if form.website.data:
        # A robot filled the honeypot: nothing is created, and the answer (and the time it
        # takes: one argon2id hash) looks like a success.
        auth.hash_password(form.password.data)
        current_app.logger.info("signup honeypot filled from %s", request.remote_addr)
        return _done(f"{local}@{form.domain.data}", form.protocol.data)
    try:
        mailbox = trials.sign_up(
            db.session,
            local_part=form.local_part.data,
            domain=form.domain.data,
            password=form.password.data,
            contact_email=form.contact_email.data,
            protocol=form.protocol.data,
            actor=Actor(trials.SIGNUP_ACTOR_NAME, request.remote_addr),
        )
        db.session.commit()
    except ProviderError as exc:
        db.session.rollback()
        _show_error(form, exc)
        return _page(form)
    except IntegrityError:
        # Lost a race for the same address with another signup: the same answer as taken.
        db.session.rollback()
        _show_error(form, trials.SignupRefused())
        return _page(form)
    return _done(mailbox.address, form.protocol.data)


def _show_error(form: SignupForm, error: ProviderError) -> None:
    target = getattr(form, error.field or "", None)
    if target is None or error.field == "address":
        target = form.local_part
    target.errors = [*target.errors, error.message]


def terms_url() -> str:
    """TERMS_URL (the hosting company's own terms), else the built-in placeholder page."""
    return str(current_app.config.get("TERMS_URL") or "") or url_for("signup.terms")


@bp.get("/terms")
def terms() -> Response | str:
    """The built-in terms of service: placeholder text for the hosting company to replace (or
    point TERMS_URL at its own page, to which this one then redirects)."""
    configured = str(current_app.config.get("TERMS_URL") or "")
    if configured:
        return redirect(configured)
    return render_template("signup/terms.html")


def _page(form: SignupForm) -> str:
    return render_template(
        "signup/form.html",
        form=form,
        terms_url=terms_url(),
        protocol_help=PROTOCOL_HELP,
        trial_days=int(current_app.config["TRIAL_DAYS"]),
        quota_gb=current_app.config["TRIAL_QUOTA_GB"],
    )


@bp.get("/signup/done")
def done() -> Response | str:
    details = session.get(DONE_KEY)
    if not details:
        return redirect(url_for("signup.signup"))
    return render_template(
        "signup/done.html",
        address=details["address"],
        protocols=details["protocols"],
        servers=client_settings(details["protocols"]),
        trial_ends=datetime.fromisoformat(details["trial_ends"]),
        quota_gb=current_app.config["TRIAL_QUOTA_GB"],
    )


__all__ = ["SignupForm", "bp", "init_signup"]
