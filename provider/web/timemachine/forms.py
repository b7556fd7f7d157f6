"""Forms of the time machine pages: the (GET) message search and the restore form."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    Form,
    HiddenField,
    SearchField,
    SelectMultipleField,
    StringField,
    SubmitField,
)
from wtforms.validators import Length, Optional

from provider.web.validators import DateWithin

FOLDER_MAX = 1024


class SearchForm(Form):
    """Search inside a snapshot. Read-only and sent by GET, so it carries no CSRF token."""

    q = SearchField("Subject", validators=[Optional(), Length(max=200)])
    sender = SearchField("From", validators=[Optional(), Length(max=200)])
    since = DateField("Received from", validators=[Optional(), DateWithin()])
    until = DateField("Received until", validators=[Optional(), DateWithin()])
    gone = BooleanField("Only what is gone from the mailbox")


class SnapshotNowForm(FlaskForm):
    """The Take a snapshot now button: nothing but the CSRF token."""


class RestoreForm(FlaskForm):
    """One form, three buttons: selected messages of a folder, the whole folder, everything."""

    folder = HiddenField(validators=[Optional(), Length(max=FOLDER_MAX)])
    # Checkboxes drawn by the template; any UID is accepted here and checked by the service.
    uid = SelectMultipleField("Messages", coerce=int, validate_choice=False)
    into = StringField("Into folder (optional)", validators=[Optional(), Length(max=FOLDER_MAX)])
    restore_messages = SubmitField("Restore selected messages")
    restore_folder = SubmitField("Restore this folder")
    restore_mailbox = SubmitField("Restore the whole mailbox")

    def scope(self) -> str | None:
        """Which button was pressed: "messages", "folder", "mailbox", or None."""
        for name in ("messages", "folder", "mailbox"):
            if self[f"restore_{name}"].data:
                return name
        return None
