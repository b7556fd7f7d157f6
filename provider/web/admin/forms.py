"""WTForms for the admin panel: they check the shape of input; services check the rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    EmailField,
    Form,
    IntegerField,
    PasswordField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, InputRequired, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget, NumberInput

from provider.web.validators import DateWithin

PASSWORD_MAX = 1024
ADDRESS_MAX = 320

# One line each: what the choice means for the customer (shown beside the radio buttons).
PROTOCOL_LABELS = {"imap": "IMAP only", "pop3": "POP3 only", "both": "IMAP and POP3"}
PROTOCOL_HELP = {
    "imap": "Mail stays on the server and every change (read, flags, folders) shows on all "
    "devices; includes daily backups.",
    "pop3": "Mail is downloaded to one device and usually removed from the server; folders and "
    "read state stay on that device; no backups.",
    "both": "Either kind of client works; backups and IMAP features cover what stays on the "
    "server.",
}
PLAN_LABELS = {"paid": "Paid", "trial": "Trial"}
POP3_ACTION_LABELS = {
    "keep": "Leave it as it is",
    "seen": "Mark it read",
    "archive": "Move it to Archive",
}
POP3_ACTION_HELP = {
    "keep": "The POP3 client decides (delete, or leave a copy on the server); the default.",
    "seen": "The copy on the server stays in the inbox, marked read for IMAP clients.",
    "archive": "The copy on the server moves to the Archive folder, out of the POP3 inbox.",
}
POP3_ACTION_LEGEND = "When a POP3 client downloads a message"
PROTOCOLS_REQUIRED = "Choose how the customer reads mail: IMAP, POP3 or both."


def choices(labels: Mapping[Any, str]) -> list[SelectChoice]:
    """Choices of a select or radio field from {value: label}, in the mapping's order."""
    return [SelectChoice(value, label) for value, label in labels.items()]


def _quota_field() -> StringField:
    # Kept as text for the service to parse: the bounds and the number format are its rule,
    # so a refusal reads the same on the web, the CLI and the API.
    return StringField(
        "Quota (GB)",
        validators=[DataRequired(message="Enter a quota in GB."), Length(max=32)],
        widget=NumberInput(step="any"),
    )


class LoginForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=ADDRESS_MAX)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])


class TwoFactorEnableForm(FlaskForm):
    """The code that turns two-factor login on."""

    code = StringField(
        "Code from your authenticator app, or a recovery code",
        validators=[DataRequired(), Length(max=64)],
    )


class SecondStepForm(TwoFactorEnableForm):
    """The second step of the admin login."""

    remember = BooleanField("Remember this browser")


class TwoFactorConfirmForm(FlaskForm):
    """Proof it is the admin (a current code or the password) before changing two-factor login."""

    code = StringField("Code from your app or a recovery code", validators=[Length(max=64)])
    password = PasswordField("or your password", validators=[Length(max=PASSWORD_MAX)])

    def validate(self, extra_validators: Mapping[str, Any] | None = None) -> bool:
        if not super().validate(extra_validators):
            return False
        if not (self.code.data or "").strip() and not self.password.data:
            self.form_errors.append("Enter a code from your app, a recovery code or your password.")
            return False
        return True


class ConfirmForm(FlaskForm):
    """A form with no fields: a button whose POST carries only the CSRF token."""


class DomainForm(FlaskForm):
    name = StringField("Domain name", validators=[DataRequired(), Length(max=253)])
    signup_enabled = BooleanField("Open for public trial signup")


class DomainPostmasterForm(FlaskForm):
    # Addresses separated by commas or new lines; empty = the default (domain admins, then
    # the first superadmin, with a mailbox here). The service checks each address.
    postmaster = StringField("Postmaster addresses", validators=[Optional(), Length(max=4000)])


class PasswordForm(FlaskForm):
    password = PasswordField("New password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    password_confirm = PasswordField(
        "Repeat the password",
        validators=[DataRequired(), EqualTo("password", message="The passwords do not match.")],
    )


class MailboxCreateForm(PasswordForm):
    local_part = StringField("Address", validators=[DataRequired(), Length(max=64)])
    domain = SelectField("Domain", coerce=int, validators=[InputRequired()])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    quota_gb = _quota_field()
    protocols = RadioField(
        "Protocols",
        choices=choices(PROTOCOL_LABELS),
        validators=[InputRequired(message=PROTOCOLS_REQUIRED)],
    )
    plan = RadioField(
        "Plan", choices=choices(PLAN_LABELS), default="paid", validators=[InputRequired()]
    )
    contact_email = EmailField(
        "Contact e-mail (optional)", validators=[Optional(), Length(max=ADDRESS_MAX)]
    )
    # Optional in the request (older clients of the form do not send it): absent means keep.
    pop3_action = RadioField(
        POP3_ACTION_LEGEND,
        choices=choices(POP3_ACTION_LABELS),
        default="keep",
        validators=[Optional()],
    )


class MailboxEditForm(FlaskForm):
    quota_gb = _quota_field()
    protocols = RadioField(
        "Protocols",
        choices=choices(PROTOCOL_LABELS),
        validators=[InputRequired(message=PROTOCOLS_REQUIRED)],
    )
    plan = RadioField("Plan", choices=choices(PLAN_LABELS), validators=[InputRequired()])
    contact_email = EmailField(
        "Contact e-mail (optional)", validators=[Optional(), Length(max=ADDRESS_MAX)]
    )
    # Absent from the request: left unchanged.
    pop3_action = RadioField(
        POP3_ACTION_LEGEND, choices=choices(POP3_ACTION_LABELS), validators=[Optional()]
    )


class AliasForm(FlaskForm):
    address = StringField("Alias address", validators=[DataRequired(), Length(max=ADDRESS_MAX)])


class AdminCreateForm(PasswordForm):
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=ADDRESS_MAX)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    superadmin = BooleanField("Superadmin (every domain, and the admin accounts)")
    domains = SelectMultipleField("Domains (for a domain admin)", coerce=int)


class AdminDomainsForm(FlaskForm):
    domains = SelectMultipleField("Domains", coerce=int)


class AuditFilterForm(Form):
    """The audit log's filters: read from the query string, so no CSRF token (nothing changes)."""

    actor = StringField("Actor", validators=[Optional(), Length(max=320)])
    action = StringField("Action starts with", validators=[Optional(), Length(max=64)])
    target = StringField("Target", validators=[Optional(), Length(max=320)])
    since = DateField("From", validators=[Optional(), DateWithin()])
    until = DateField("To (inclusive)", validators=[Optional(), DateWithin()])


class CheckboxesField(SelectMultipleField):
    """Several choices as a list of checkboxes (the webhook events)."""

    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class WebhookForm(FlaskForm):
    # No length validator: the service's rule (URL_MAX) gives the message, next to the field.
    url = StringField("Endpoint URL", validators=[DataRequired()])
    events = CheckboxesField("Events")
    description = StringField("Description (optional)", validators=[Optional()])
    active = BooleanField("Active (deliveries are sent)", default=True)


class ApiTokenForm(FlaskForm):
    # Shapes only; services/tokens checks the name, expiry range and addresses.
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    scope = RadioField(
        "Scope",
        choices=choices({"read": "Read only", "write": "Read and write"}),
        default="read",
        validators=[InputRequired()],
    )
    expires_days = IntegerField(
        "Expires after (days)", validators=[Optional()], widget=NumberInput(min=1, max=3650)
    )
    allowed_ips = TextAreaField("Allowed addresses", validators=[Optional(), Length(max=4000)])
