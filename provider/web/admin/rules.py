"""A mailbox's rules on its admin page (/admin/mailboxes/<id>/rules): the owner's editor, for
admins (domain admins only for their domains: get_mailbox_or_404)."""

from __future__ import annotations

from provider.models import Mailbox
from provider.services.audit import Actor
from provider.web.admin import bp
from provider.web.admin.access import actor, get_mailbox_or_404
from provider.web.sieve_editor import EditorSite, register


def _admin_actor(mailbox: Mailbox) -> Actor:
    return actor()


def _mailbox(mailbox_id: int) -> Mailbox:
    return get_mailbox_or_404(mailbox_id)


register(
    EditorSite(bp, "rules", _mailbox, _admin_actor, "admin/_layout.html", "mailboxes"),
    "/mailboxes/<int:mailbox_id>/rules",
)
