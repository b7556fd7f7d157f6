"""Where the mail store lives for the running app (DATA_DIR/mail)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from provider.mailstore import MailStore


def mail_store() -> MailStore:
    """The Maildir++ store under the app's DATA_DIR."""
    from provider.mailstore import MailStore

    return MailStore(Path(current_app.config["DATA_DIR"]) / "mail")
