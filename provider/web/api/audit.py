"""/api/v1/audit-events: the audit trail, newest first, filtered (a domain admin: its domains)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from provider.extensions import db
from provider.services import reports
from provider.web.api.core import PageArgs, PageSchema, current_admin, page_of, problems, resource

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


class AuditListArgs(PageArgs):
    actor = fields.String(metadata={"description": "Actor containing this (e.g. token:billing)"})
    action = fields.String(metadata={"description": "Action starting with this (mailbox.)"})
    target = fields.String(metadata={"description": "Target containing this"})
    since = fields.AwareDateTime(metadata={"description": "From this moment (ISO 8601)"})
    until = fields.AwareDateTime(metadata={"description": "Before this moment (ISO 8601)"})


@bp.get("")
@bp.arguments(AuditListArgs, location="query")
@bp.response(200, AuditPageSchema)
@problems(bp, 422)
def list_events(args: dict[str, Any]) -> dict[str, Any]:
    """Audit events, newest first."""
    admin = current_admin()
    domains = None if admin.is_superadmin else {domain.name for domain in admin.domains}
    page = reports.list_audit_events(
        db.session,
        actor=args.get("actor"),
        action=args.get("action"),
        target=args.get("target"),
        since=args.get("since"),
        until=args.get("until"),
        domains=domains,
        page=args["page"],
        per_page=args["per_page"],
    )
    return page_of(page, [event.to_dict() for event in page.items])
