"""WTForms of the mailbox owner's portal (field names are part of DESIGN.md §3's contract)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

ADDRESS_MAX = 320
PASSWORD_MAX = 1024


class AccountLoginForm(FlaskForm):
    email = EmailField("E-mail address", validators=[DataRequired(), Length(max=ADDRESS_MAX)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])
