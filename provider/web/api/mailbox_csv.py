"""/api/v1/mailboxes/import and /export: mailboxes from and to CSV through services/mailbox_csv
(the dry run, the all-or-nothing apply, the export), like the panel and the CLI."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from marshmallow import Schema, fields
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from provider.extensions import db
from provider.models import Mailbox
from provider.services import auth, mailbox_csv, provisioning, records
from provider.services.mailbox_csv import ImportReport
from provider.web.api.core import (
    BodyRule,
    ProblemSchema,
    actor,
    problem,
    problems,
    scope,
    takes_body,
)
from provider.web.api.mailboxes import MailboxSummarySchema, bp

CSV_TYPES = frozenset({"text/csv", "application/csv"})
CSV_BODY = BodyRule(
    CSV_TYPES, mailbox_csv.MAX_IMPORT_BYTES, "as CSV (Content-Type: text/csv; charset=utf-8)"
)
# Created mailboxes are read back this many addresses per IN (…).
READ_BACK_CHUNK = 500
IMPORT_BODY_DOC = {
    "required": True,
    "description": (
        f"The CSV file itself (UTF-8, at most {mailbox_csv.MAX_IMPORT_BYTES} bytes and "
        f"{mailbox_csv.MAX_IMPORT_ROWS} rows), columns {', '.join(mailbox_csv.COLUMNS)} "
        "(a header row names them in any order; without one they are read in this order); "
        "password `generate` makes one up; a password hash from another server in Dovecot's "
        f"form ({', '.join(auth.IMPORTABLE_SCHEMES)}, e.g. `{{SHA512-CRYPT}}$6$…`) is kept "
        "as it is and replaced by an argon2id hash at the first login; `{PLAIN}` before a "
        "password that itself begins with `{WORD}`"
    ),
    "content": {"text/csv": {"schema": {"type": "string"}}},
}


class RowErrorSchema(Schema):
    line = fields.Integer(required=True, metadata={"description": "0: the file as a whole"})
    column = fields.String(required=True, allow_none=True)
    message = fields.String(required=True)


class RowOutcomeSchema(Schema):
    line = fields.Integer(required=True)
    address = fields.String(required=True)
    outcome = fields.String(required=True, metadata={"description": "create or error"})
    generate_password = fields.Boolean(required=True)
    password_scheme = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "The scheme of a password hash given in the password cell "
            "(`{SHA512-CRYPT}`), stored as it is; null for a password or `generate`"
        },
    )
    errors = fields.List(fields.Nested(RowErrorSchema), required=True)


class MadeUpPasswordSchema(Schema):
    address = fields.String(required=True)
    password = fields.String(required=True)


class ImportReportSchema(Schema):
    """`provider mailbox import --json`'s report."""

    applied = fields.Boolean(required=True)
    ok = fields.Boolean(required=True, metadata={"description": "No row or file error"})
    rows = fields.List(fields.Nested(RowOutcomeSchema), required=True)
    file_errors = fields.List(fields.Nested(RowErrorSchema), required=True)
    created = fields.Integer(required=True)
    passwords = fields.List(
        fields.Nested(MadeUpPasswordSchema),
        required=True,
        metadata={"description": "The made-up passwords: in the apply's answer only"},
    )


class ImportResultSchema(ImportReportSchema):
    mailboxes = fields.List(
        fields.Nested(MailboxSummarySchema),
        required=True,
        metadata={"description": "The mailboxes created, in the file's order"},
    )


class ImportProblemSchema(ProblemSchema):
    report = fields.Nested(
        ImportReportSchema,
        metadata={"description": "Every row's outcome (present when the file was read)"},
    )


class ImportArgs(Schema):
    dry_run = fields.Boolean(
        load_default=False, metadata={"description": "Only check: every row's outcome"}
    )


class ExportArgs(Schema):
    domain = fields.String(metadata={"description": "Only this domain's mailboxes"})


def import_problem(report: ImportReport) -> Response:
    """422: nothing was created; `errors` by `line N, column`, the whole report beside."""
    errors: dict[str, list[str]] = {}
    for error in report.errors:
        errors.setdefault(error.where, []).append(error.message)
    bad_rows = sum(1 for row in report.rows if row.errors)
    if report.file_errors:
        detail = f"{report.file_errors[0]}; nothing was created"
    else:
        detail = f"{bad_rows} of {len(report.rows)} rows have errors; nothing was created"
    return problem(422, detail, errors=errors, extra={"report": report.to_dict()})


def _created(report: ImportReport) -> list[dict[str, Any]]:
    """The imported mailboxes as list records, in the file's order (a few queries in all)."""
    addresses = [row.address for row in report.rows]
    found: dict[str, Mailbox] = {}
    for start in range(0, len(addresses), READ_BACK_CHUNK):
        chunk = addresses[start : start + READ_BACK_CHUNK]
        query = (
            select(Mailbox)
            .where(Mailbox.address.in_(chunk))
            .options(selectinload(Mailbox.domain), selectinload(Mailbox.aliases))
        )
        found.update((mailbox.address, mailbox) for mailbox in db.session.scalars(query))
    return [records.mailbox_summary(found[address]) for address in addresses]


@bp.post("/import")
@takes_body(CSV_BODY)
@bp.arguments(ImportArgs, location="query")
@bp.doc(requestBody=IMPORT_BODY_DOC)
@bp.response(
    201,
    ImportResultSchema,
    description="Every mailbox created; the made-up passwords are in this answer only",
)
@bp.alt_response(200, schema=ImportReportSchema, description="The dry run: nothing changed")
@bp.alt_response(
    422,
    schema=ImportProblemSchema,
    description="A row or the file is wrong (`errors` by line and column): nothing was created",
)
@problems(bp, 413, 415)
def import_mailboxes(args: dict[str, Any]) -> Any:
    """Create the mailboxes of a CSV file (`Content-Type: text/csv`), all or none. With
    `dry_run=true` only check it: 200 with every row's outcome and errors by line and column.
    Otherwise 201 with the mailboxes and the made-up passwords (once), or 422 with the errors
    and nothing created. A domain admin's token: rows in its domains only."""
    data = request.get_data(cache=True)
    report = mailbox_csv.import_mailboxes(
        db.session, data, scope=scope(), actor=actor(), dry_run=args["dry_run"]
    )
    if args["dry_run"]:
        db.session.rollback()
        return report.to_dict(), 200
    if not report.applied:
        db.session.rollback()
        return import_problem(report)
    db.session.commit()
    return {**report.to_dict(), "mailboxes": _created(report)}, 201


@bp.get("/export")
@bp.arguments(ExportArgs, location="query")
@bp.response(
    200,
    {"type": "string"},
    content_type="text/csv",
    description="The import's columns, sorted by address; password `generate` (none leaves)",
)
@problems(bp, 404, 422)
def export_mailboxes(args: dict[str, Any]) -> Response:
    """The mailboxes the token's admin manages (of one domain with `domain`) as CSV, in the
    columns the import reads."""
    domain_ids = scope()
    name = "mailboxes"
    if args.get("domain"):
        domain = provisioning.get_domain(db.session, args["domain"], allowed_domain_ids=domain_ids)
        domain_ids, name = {domain.id}, f"mailboxes-{domain.name}"
    text = mailbox_csv.export_csv(db.session, domain_ids=domain_ids)
    response = current_app.response_class(text, mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response
