"""/api/v1/audit-events: the audit trail, newest first, filtered (a domain admin: its domains)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from provider.extensions import db
from provider.services import reports
from provider.web.api.core import (
    PageArgs,
    PageSchema,
    current_admin,
    keyset_page_of,
    page_of,
    problems,
    resource,
)

bp = resource("audit-events", "The audit trail: who changed what, when, from where")


class AuditEventSchema(Schema):
    occurred_at = fields.String(required=True, metadata={"format": "date-time"})
    actor = fields.String(required=True)
    action = fields.String(required=True)
    target = fields.String(required=True)
    domain = fields.String(required=True, allow_none=True)
    before = fields.Dict(required=True, allow_none=True)
    after = fields.Dict(required=True, allow_none=True)
    remote_addr = fields.String(required=True, allow_none=True)


class AuditPageSchema(PageSchema):
    items = fields.List(fields.Nested(AuditEventSchema), required=True)
    next_after = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Cursor of the next page: pass it as `after`"},
    )


class AuditListArgs(PageArgs):
    actor = fields.String(metadata={"description": "Actor containing this (e.g. token:billing)"})
    action = fields.String(metadata={"description": "Action starting with this (mailbox.)"})
    target = fields.String(metadata={"description": "Target containing this"})
    since = fields.AwareDateTime(metadata={"description": "From this moment (ISO 8601)"})
    until = fields.AwareDateTime(metadata={"description": "Before this moment (ISO 8601)"})
    after = fields.String(
        validate=validate.Length(max=100),
        metadata={
            "description": "Cursor paging: the events older than this one — the previous "
            "answer's next_after (empty: from the newest); fast at any depth, `page` ignored"
        },
    )


@bp.get("")
@bp.arguments(AuditListArgs, location="query")
@bp.response(200, AuditPageSchema)
@problems(bp, 422)
def list_events(args: dict[str, Any]) -> dict[str, Any]:
    """Audit events, newest first."""
    admin = current_admin()
    domains = None if admin.is_superadmin else {domain.name for domain in admin.domains}
    filters = {
        "actor": args.get("actor"),
        "action": args.get("action"),
        "target": args.get("target"),
        "since": args.get("since"),
        "until": args.get("until"),
        "domains": domains,
        "per_page": args["per_page"],
    }
    if "after" in args:
        keyset = reports.audit_events_after(db.session, args["after"], **filters)
        return keyset_page_of(keyset, [event.to_dict() for event in keyset.items])
    page = reports.list_audit_events(db.session, page=args["page"], **filters)
    result = page_of(page, [event.to_dict() for event in page.items])
    result["next_after"] = (
        reports.audit_cursor(page.items[-1]) if page.has_next and page.items else None
    )
    return result
