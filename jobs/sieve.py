"""Hourly: switch the rule editor's away replies on and off as their first and last days pass."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask
from sqlalchemy import select

from provider.extensions import db
from provider.mailstore import MailStore
from provider.models import Mailbox
from provider.services import clock, sieve_rules, sieve_scripts
from provider.services.audit import Actor
from provider.services.storage import mail_store

log = logging.getLogger(__name__)

ACTOR = Actor("job:sieve-vacation-window")
_MARKER = (sieve_rules.MARKER + "\n").encode()


def _written_by_editor(store: MailStore, address: str) -> bool:
    """Whether the mailbox's active script starts with the editor's marker: one readlink and
    one short read, so mailboxes without editor rules cost next to nothing."""
    home = sieve_scripts.home_of(store, address)
    name = sieve_scripts.active_name(home)
    if name is None:
        return False
    path = home / sieve_scripts.SCRIPT_DIR / f"{name}{sieve_scripts.SUFFIX}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return os.read(fd, len(_MARKER)) == _MARKER
    finally:
        os.close(fd)


def sieve_vacation_window(app: Flask) -> dict[str, Any]:
    """Rewrite every editor script whose away reply entered or left its window today (the
    server's UTC day, clock.now()); hand-edited scripts are never read past their first line."""
    today = clock.now().date()
    checked = 0
    rewritten: list[str] = []
    changed: list[str] = []
    failed: list[dict[str, str]] = []
    with app.app_context():
        try:
            store = mail_store()
            addresses = list(db.session.scalars(select(Mailbox.address).order_by(Mailbox.id)))
            for address in addresses:
                if not _written_by_editor(store, address):
                    continue
                checked += 1
                try:
                    mailbox = db.session.scalars(
                        select(Mailbox).where(Mailbox.address == address)
                    ).one_or_none()
                    if mailbox is None:  # deleted while the job ran
                        continue
                    if sieve_rules.refresh_window(
                        db.session, store, mailbox, actor=ACTOR, today=today
                    ):
                        rewritten.append(address)
                    db.session.commit()
                except sieve_scripts.ScriptChanged:  # edited under our feet: next run sees it
                    db.session.rollback()
                    changed.append(address)
                except Exception as error:  # one mailbox's trouble does not stop the others
                    db.session.rollback()
                    log.exception("sieve-vacation-window: %s", address)
                    text = f"{type(error).__name__}: {error}".splitlines()[0]
                    failed.append({"address": address, "error": text})
        finally:
            db.session.remove()
    summary: dict[str, Any] = {
        "day": today.isoformat(),
        "editor_scripts": checked,
        "rewritten": rewritten,
        "changed_meanwhile": changed,
        "failed": len(failed),
    }
    if failed:
        summary["failures"] = failed
    return summary
