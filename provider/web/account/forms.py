"""WTForms of the mailbox owner's portal (field names are part of DESIGN.md §3's contract)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, EqualTo, Length

ADDRESS_MAX = 320
PASSWORD_MAX = 1024


class AccountLoginForm(FlaskForm):
    email = EmailField("E-mail address", validators=[DataRequired(), Length(max=ADDRESS_MAX)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])


class PasswordChangeForm(FlaskForm):
    """The owner's own password change; the policy is checked by the provisioning service."""

    current_password = PasswordField(
        "Current password", validators=[DataRequired(), Length(max=PASSWORD_MAX)]
    )
    new_password = PasswordField(
        "New password", validators=[DataRequired(), Length(max=PASSWORD_MAX)]
    )
    new_password_confirm = PasswordField(
        "Repeat the new password",
        validators=[
            DataRequired(),
            EqualTo("new_password", message="The new passwords do not match."),
        ],
    )


class UpgradeRequestForm(FlaskForm):
    """A button only: the form exists for its CSRF token."""
