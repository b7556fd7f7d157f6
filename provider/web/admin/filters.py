"""Jinja filters and globals of the admin templates: sizes, dates, protocol names, query links."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import request, url_for

from provider.services.quota import GIB, format_gb, format_size
from provider.services.reports import changed_fields, protocol_policy
from provider.web.admin import bp
from provider.web.admin.forms import PROTOCOL_LABELS


@bp.app_template_filter("size")
def human_size(nbytes: int | Decimal | None) -> str:
    """`0 bytes`, `12.5 MB`, `8 GB` (quota.format_size: the CLI writes sizes the same way)."""
    return format_size(nbytes)


@bp.app_template_filter("gb")
def gb_text(nbytes: int) -> str:
    """A quota in GB as a form shows it: `8`, `12.5`, `0.0001`."""
    return format_gb(round(Decimal(nbytes) / GIB, 4))


@bp.app_template_filter("when")
def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


@bp.app_template_filter("day")
def day(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d") if moment else "—"


@bp.app_template_filter("policy")
def policy_label(mailbox: Any) -> str:
    return PROTOCOL_LABELS[protocol_policy(mailbox.imap_enabled, mailbox.pop3_enabled)]


@bp.app_template_filter("audit_value")
def audit_value(value: Any, key: str = "") -> str:
    """An audited value in one short line (byte counts as sizes, lists joined)."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if key.endswith("_bytes") and isinstance(value, int):
        return human_size(value)
    return str(value)


@bp.app_template_global()
def url_with(**changes: Any) -> str:
    """The current page's URL with some query parameters changed (None drops one)."""
    args = {key: value for key, value in request.args.items() if key not in changes}
    args.update({key: value for key, value in changes.items() if value is not None})
    assert request.endpoint is not None
    return url_for(request.endpoint, **(request.view_args or {}), **args)


bp.add_app_template_global(changed_fields, "changed_fields")
