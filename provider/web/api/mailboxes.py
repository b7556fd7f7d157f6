"""/api/v1/mailboxes: create, list, show, change (quota, protocols, status, plan, password, POP3
action), usage and delete — each through services/provisioning like the panel and the CLI."""

from __future__ import annotations

import secrets
from typing import Any

from marshmallow import Schema, fields, validate

from provider.errors import InvalidInput
from provider.extensions import db
from provider.services import backups, identities, provisioning, records, reports, trials
from provider.services.quota import GIB
from provider.web.api.core import (
    BODY_PROBLEMS,
    PageArgs,
    PageSchema,
    actor,
    current_admin,
    keyset_page_of,
    page_of,
    problems,
    resource,
    scope,
)

bp = resource("mailboxes", "Mailboxes: quota, protocols, status, plan, password, usage")

QUOTA_DOC = {
    "description": "GB (1 GB = 1024³ bytes), a number or a decimal string; the setting's range "
    "applies (8 to 100 by default)",
    "oneOf": [{"type": "number"}, {"type": "string"}],
}
PROTOCOLS_DOC = {
    "description": 'imap, pop3 or both: ["imap", "pop3"] or "imap,pop3"',
    "oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
}


class SendingSchema(Schema):
    limit_per_hour = fields.Integer(required=True)
    limit_per_day = fields.Integer(required=True)
    limit_per_hour_source = fields.String(required=True)
    limit_per_day_source = fields.String(required=True)
    sent_last_hour_window = fields.Integer(required=True)
    sent_last_day_window = fields.Integer(required=True)
    sent_today = fields.Integer(required=True)
    last_7_days = fields.List(fields.Dict(), required=True)
    suspended = fields.Boolean(required=True)
    suspended_at = fields.String(required=True, allow_none=True)
    suspended_reason = fields.String(required=True, allow_none=True)


class MailboxSummarySchema(Schema):
    address = fields.String(required=True)
    domain = fields.String(required=True)
    quota_bytes = fields.Integer(required=True)
    used_bytes = fields.Integer(required=True)
    protocols = fields.List(fields.String(), required=True)
    status = fields.String(required=True)
    plan = fields.String(required=True)
    contact_email = fields.String(required=True, allow_none=True)
    pop3_action = fields.String(required=True, allow_none=True)
    created_at = fields.String(required=True, allow_none=True)
    trial_expires_at = fields.String(required=True, allow_none=True)
    aliases = fields.List(fields.String(), required=True)


class MailboxSchema(MailboxSummarySchema):
    sending = fields.Nested(SendingSchema, required=True)


class NewMailboxSchema(MailboxSchema):
    password = fields.String(
        metadata={"description": "The generated password, when none was sent: shown this once"}
    )


class MailboxPageSchema(PageSchema):
    items = fields.List(fields.Nested(MailboxSummarySchema), required=True)
    next_after = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Cursor of the next page (sort=address): pass it as `after`"},
    )


class MailboxListArgs(PageArgs):
    domain = fields.String(metadata={"description": "Only this domain"})
    search = fields.String(metadata={"description": "Only addresses containing this text"})
    status = fields.String(validate=validate.OneOf(["active", "suspended", "expired"]))
    plan = fields.String(validate=validate.OneOf(["trial", "paid"]))
    sort = fields.String(
        load_default="address", validate=validate.OneOf(list(reports.MAILBOX_SORTS))
    )
    order = fields.String(load_default="asc", validate=validate.OneOf(["asc", "desc"]))
    after = fields.String(
        validate=validate.Length(max=320),
        metadata={
            "description": "Keyset paging (sort=address only): the mailboxes after this "
            "address — the previous answer's next_after; fast at any depth, `page` ignored"
        },
    )


class MailboxCreateSchema(Schema):
    address = fields.String(required=True, validate=validate.Length(max=320))
    quota_gb = fields.Raw(required=True, metadata=QUOTA_DOC)
    protocols = fields.Raw(required=True, metadata=PROTOCOLS_DOC)
    password = fields.String(
        validate=validate.Length(max=1024),
        metadata={"description": "Omit it to have one made up (returned once)"},
    )
    plan = fields.String(load_default="paid", validate=validate.OneOf(["trial", "paid"]))
    contact_email = fields.String(allow_none=True, validate=validate.Length(max=320))
    pop3_action = fields.String(
        load_default="keep", validate=validate.OneOf(["keep", "seen", "archive"])
    )


class MailboxUpdateSchema(Schema):
    quota_gb = fields.Raw(metadata=QUOTA_DOC)
    protocols = fields.Raw(metadata=PROTOCOLS_DOC)
    status = fields.String(metadata={"description": "active or suspended"})
    plan = fields.String(metadata={"description": "trial or paid (paid converts a trial)"})
    password = fields.String(validate=validate.Length(max=1024))
    contact_email = fields.String(allow_none=True, validate=validate.Length(max=320))
    pop3_action = fields.String(metadata={"description": "keep, seen or archive"})


class UsageSchema(Schema):
    address = fields.String(required=True)
    quota_bytes = fields.Integer(required=True)
    used_bytes = fields.Integer(required=True)
    used_percent = fields.Float(required=True)
    quota_gb = fields.Float(required=True)
    used_gb = fields.Float(required=True)


def _mailbox(address: str) -> Any:
    return provisioning.get_mailbox(db.session, address, allowed_domain_ids=scope())


@bp.get("")
@bp.arguments(MailboxListArgs, location="query")
@bp.response(200, MailboxPageSchema)
@problems(bp, 404, 422)
def list_mailboxes(args: dict[str, Any]) -> dict[str, Any]:
    """List mailboxes, filtered by domain, address text, status and plan."""
    domain_ids = scope()
    if args.get("domain"):
        domain = provisioning.get_domain(db.session, args["domain"], allowed_domain_ids=domain_ids)
        domain_ids = {domain.id}
    filters = {
        "search": args.get("search"),
        "domain_ids": domain_ids,
        "descending": args["order"] == "desc",
        "per_page": args["per_page"],
        "status": args.get("status"),
        "plan": args.get("plan"),
    }
    if "after" in args:
        if args["sort"] != "address":
            raise InvalidInput("after pages by address: use it with sort=address", "after")
        keyset = reports.mailboxes_after(db.session, args["after"], summaries=True, **filters)
        return keyset_page_of(keyset, keyset.items)
    page = reports.list_mailboxes(
        db.session, sort=args["sort"], page=args["page"], summaries=True, **filters
    )
    result = page_of(page, page.items)
    more = page.has_next and page.items and args["sort"] == "address"
    result["next_after"] = page.items[-1]["address"] if more else None
    return result


@bp.post("")
@bp.arguments(MailboxCreateSchema)
@bp.response(201, NewMailboxSchema)
@problems(bp, 404, 409, *BODY_PROBLEMS)
def create_mailbox(body: dict[str, Any]) -> dict[str, Any]:
    """Create a mailbox. Without `password` one is made up and returned this once."""
    password = body.get("password")
    generated = None
    if password is None:
        password = generated = secrets.token_urlsafe(12)
    mailbox = provisioning.create_mailbox(
        db.session,
        body["address"],
        password,
        body["quota_gb"],
        body["protocols"],
        actor=actor(),
        plan=body["plan"],
        contact_email=body.get("contact_email"),
        pop3_action=body["pop3_action"],
        allowed_domain_ids=scope(),
    )
    db.session.commit()
    record = records.mailbox_record(db.session, mailbox)
    if generated:
        record["password"] = generated
    return record


@bp.get("/<string:address>")
@bp.response(200, MailboxSchema)
@problems(bp, 404)
def get_mailbox(address: str) -> dict[str, Any]:
    """One mailbox, with its sending limits and counts."""
    return records.mailbox_record(db.session, _mailbox(address))


@bp.patch("/<string:address>")
@bp.arguments(MailboxUpdateSchema)
@bp.response(200, MailboxSchema)
@problems(bp, 404, *BODY_PROBLEMS)
def update_mailbox(body: dict[str, Any], address: str) -> dict[str, Any]:
    """Change quota, protocols, status (suspend), plan (convert a trial), password, contact or
    POP3 download action; every value is checked before any is applied."""
    mailbox = _mailbox(address)
    contact = body.get("contact_email")
    provisioning.update_mailbox(
        db.session,
        mailbox,
        actor=actor(),
        quota_gb=body.get("quota_gb"),
        protocols=body.get("protocols"),
        status=body.get("status"),
        plan=body.get("plan"),
        password=body.get("password"),
        # null clears the contact, as an empty form field does
        contact_email=("" if contact is None else contact) if "contact_email" in body else None,
        pop3_action=body.get("pop3_action"),
    )
    db.session.commit()
    return records.mailbox_record(db.session, mailbox)


@bp.post("/<string:address>/convert")
@bp.response(200, MailboxSchema)
@problems(bp, 404, *BODY_PROBLEMS)
def convert_trial(address: str) -> dict[str, Any]:
    """End a trial as converted to paid (as the panel's Convert button does)."""
    mailbox = _mailbox(address)
    trials.convert_to_paid(db.session, mailbox.address, actor=actor())
    db.session.commit()
    return records.mailbox_record(db.session, mailbox)


@bp.get("/<string:address>/usage")
@bp.response(200, UsageSchema)
@problems(bp, 404)
def usage(address: str) -> dict[str, Any]:
    """How much of its quota the mailbox uses."""
    mailbox = _mailbox(address)
    return {
        "address": mailbox.address,
        "quota_bytes": mailbox.quota_bytes,
        "used_bytes": mailbox.used_bytes,
        "used_percent": round(100 * mailbox.used_bytes / mailbox.quota_bytes, 2)
        if mailbox.quota_bytes
        else 0.0,
        "quota_gb": round(mailbox.quota_bytes / GIB, 4),
        "used_gb": round(mailbox.used_bytes / GIB, 4),
    }


@bp.delete("/<string:address>")
@bp.response(204)
@problems(bp, 404)
def delete_mailbox(address: str) -> None:
    """Delete the mailbox, its aliases, its mail and its backups."""
    mailbox = _mailbox(address)
    provisioning.delete_mailbox(db.session, mailbox, actor=actor())
    db.session.commit()


# --- identities: extra addresses an IMAP mailbox may send as -------------------------------


class IdentitySchema(Schema):
    address = fields.String(required=True)
    display_name = fields.String(required=True)
    enabled = fields.Boolean(required=True)
    mailbox = fields.String(required=True, allow_none=True)
    created_at = fields.String(required=True, allow_none=True)


class IdentityCreateSchema(Schema):
    address = fields.String(required=True, validate=validate.Length(max=320))
    display_name = fields.String(load_default="", validate=validate.Length(max=1000))


class IdentityUpdateSchema(Schema):
    display_name = fields.String(validate=validate.Length(max=1000))
    enabled = fields.Boolean()


@bp.get("/<string:address>/identities")
@bp.response(200, IdentitySchema(many=True))
@problems(bp, 404)
def list_identities(address: str) -> list[dict[str, Any]]:
    """The mailbox's extra sender identities (enabled or not)."""
    mailbox = _mailbox(address)
    return [identity.to_dict() for identity in identities.list_identities(db.session, mailbox)]


@bp.post("/<string:address>/identities")
@bp.arguments(IdentityCreateSchema)
@bp.response(201, IdentitySchema)
@problems(bp, 404, 409, *BODY_PROBLEMS)
def add_identity(body: dict[str, Any], address: str) -> dict[str, Any]:
    """Let an IMAP mailbox send as another hosted address (with a display name)."""
    mailbox = _mailbox(address)
    identity = identities.add_identity(
        db.session,
        mailbox,
        body["address"],
        body["display_name"],
        actor=actor(),
        admin=current_admin(),
    )
    db.session.commit()
    return identity.to_dict()  # type: ignore[no-any-return]


@bp.patch("/<string:address>/identities/<string:identity>")
@bp.arguments(IdentityUpdateSchema)
@bp.response(200, IdentitySchema)
@problems(bp, 404, *BODY_PROBLEMS)
def update_identity(body: dict[str, Any], address: str, identity: str) -> dict[str, Any]:
    """Change an identity's display name, or switch it off and on."""
    found = identities.get_identity(db.session, _mailbox(address), identity)
    identities.set_identity(
        db.session,
        found,
        actor=actor(),
        display_name=body.get("display_name"),
        enabled=body.get("enabled"),
    )
    db.session.commit()
    return found.to_dict()  # type: ignore[no-any-return]


@bp.delete("/<string:address>/identities/<string:identity>")
@bp.response(204)
@problems(bp, 404)
def delete_identity(address: str, identity: str) -> None:
    """Take an identity away from the mailbox."""
    found = identities.get_identity(db.session, _mailbox(address), identity)
    identities.delete_identity(db.session, found, actor=actor())
    db.session.commit()


# --- time machine: snapshots, restores and their history -----------------------------------


class SnapshotSchema(Schema):
    snapshot = fields.String(required=True)
    created_at = fields.String(required=True)
    messages = fields.Integer(required=True)
    folders = fields.Integer(required=True)
    bytes = fields.Integer(required=True)
    new_objects = fields.Integer(required=True)
    status = fields.String(required=True)
    verified_at = fields.String(required=True, allow_none=True)


class RestoreRequestSchema(Schema):
    snapshot = fields.String(required=True, validate=validate.Length(min=1, max=64))
    folder = fields.String(validate=validate.Length(max=1000))
    uids = fields.List(
        fields.Integer(validate=validate.Range(min=1, max=2**32 - 1)),
        validate=validate.Length(min=1, max=10_000),
        metadata={"description": "Only these UIDs of `folder` (needs folder)"},
    )
    into = fields.String(
        validate=validate.Length(max=1000),
        metadata={"description": "Restore under this folder instead of the originals"},
    )


class RestoreReportSchema(Schema):
    address = fields.String(required=True)
    snapshot = fields.String(required=True)
    scope = fields.String(required=True)
    folder = fields.String(required=True, allow_none=True)
    uids = fields.List(fields.Integer(), required=True, allow_none=True)
    into = fields.String(required=True, allow_none=True)
    selected = fields.Integer(required=True)
    restored = fields.Integer(required=True)
    restored_bytes = fields.Integer(required=True)
    skipped = fields.Integer(required=True)
    shortfall = fields.Integer(required=True)
    shortfall_bytes = fields.Integer(required=True)
    shortfall_messages = fields.List(fields.Dict(), required=True)
    unreadable = fields.List(fields.String(), required=True)
    folders_created = fields.List(fields.String(), required=True)


class RestoreRecordSchema(Schema):
    occurred_at = fields.String(required=True)
    snapshot = fields.String(required=True)
    scope = fields.String(required=True)
    folder = fields.String(required=True, allow_none=True)
    uids = fields.List(fields.Integer(), required=True, allow_none=True)
    into = fields.String(required=True, allow_none=True)
    restored = fields.Integer(required=True)
    restored_bytes = fields.Integer(required=True)
    skipped = fields.Integer(required=True)
    shortfall = fields.Integer(required=True)
    shortfall_bytes = fields.Integer(required=True)
    actor = fields.String(required=True)


@bp.get("/<string:address>/snapshots")
@bp.response(200, SnapshotSchema(many=True))
@problems(bp, 404)
def list_snapshots(address: str) -> list[dict[str, Any]]:
    """The mailbox's complete backup snapshots, newest first (IMAP mailboxes only)."""
    mailbox = _mailbox(address)
    return [snap.to_dict() for snap in backups.list_snapshots(db.session, mailbox.address)]


@bp.post("/<string:address>/restores")
@bp.arguments(RestoreRequestSchema)
@bp.response(200, RestoreReportSchema)
@problems(bp, 404, 507, *BODY_PROBLEMS)
def restore(body: dict[str, Any], address: str) -> dict[str, Any]:
    """Bring back from a snapshot what the mailbox no longer has (all, a folder, or UIDs of a
    folder; into the original folders or under `into`): never deletes or duplicates. The same
    options as `provider backup restore`."""
    mailbox = _mailbox(address)
    report = backups.restore(
        db.session,
        mailbox.address,
        body["snapshot"],
        body.get("folder"),
        body.get("uids"),
        body.get("into"),
        actor=actor(),
    )
    return report.to_dict()


@bp.get("/<string:address>/restores")
@bp.response(200, RestoreRecordSchema(many=True))
@problems(bp, 404)
def restore_history(address: str) -> list[dict[str, Any]]:
    """Every restore of the mailbox, newest first."""
    mailbox = _mailbox(address)
    return [run.to_dict() for run in backups.restore_history(db.session, mailbox.address)]
