"""The owner's rules (/account/rules): sorting rules, away reply, forwarding, raw Sieve."""

from __future__ import annotations

from flask import request

from provider.models import Mailbox
from provider.services.audit import Actor
from provider.web.account import bp
from provider.web.account.sessions import current_mailbox
from provider.web.sieve_editor import EditorSite, register


def _owner() -> Mailbox:
    mailbox = current_mailbox()
    assert mailbox is not None  # require_login ran
    return mailbox


def _actor(mailbox: Mailbox) -> Actor:
    return Actor(f"mailbox:{mailbox.address}", request.remote_addr)


register(
    EditorSite(bp, "rules", _owner, _actor, "account/_layout.html", "account.rules_page"),
    "/rules",
)
