"""/api/v1/aliases: addresses that deliver to a mailbox (and that it may send as)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from provider.extensions import db
from provider.services import provisioning, reports
from provider.web.api.core import (
    BODY_PROBLEMS,
    PageArgs,
    PageSchema,
    actor,
    page_of,
    problems,
    resource,
    scope,
)

bp = resource("aliases", "Aliases: more addresses delivering to a mailbox")


class AliasSchema(Schema):
    address = fields.String(required=True)
    mailbox = fields.String(required=True)


class AliasPageSchema(PageSchema):
    items = fields.List(fields.Nested(AliasSchema), required=True)


class AliasListArgs(PageArgs):
    search = fields.String(metadata={"description": "Alias or mailbox address containing this"})


class AliasCreateSchema(Schema):
    address = fields.String(required=True, validate=validate.Length(max=320))
    mailbox = fields.String(required=True, validate=validate.Length(max=320))


@bp.get("")
@bp.arguments(AliasListArgs, location="query")
@bp.response(200, AliasPageSchema)
@problems(bp, 422)
def list_aliases(args: dict[str, Any]) -> dict[str, Any]:
    """List aliases (with the mailbox each delivers to)."""
    page = reports.list_aliases(
        db.session,
        search=args.get("search"),
        domain_ids=scope(),
        page=args["page"],
        per_page=args["per_page"],
    )
    return page_of(page, [alias.to_dict() for alias in page.items])


@bp.post("")
@bp.arguments(AliasCreateSchema)
@bp.response(201, AliasSchema)
@problems(bp, 404, 409, *BODY_PROBLEMS)
def create_alias(body: dict[str, Any]) -> dict[str, Any]:
    """Add an alias of a mailbox (both in domains the token's admin manages)."""
    domain_ids = scope()
    mailbox = provisioning.get_mailbox(db.session, body["mailbox"], allowed_domain_ids=domain_ids)
    alias = provisioning.create_alias(
        db.session, body["address"], mailbox, actor=actor(), allowed_domain_ids=domain_ids
    )
    db.session.commit()
    return alias.to_dict()  # type: ignore[no-any-return]


@bp.get("/<string:address>")
@bp.response(200, AliasSchema)
@problems(bp, 404)
def get_alias(address: str) -> dict[str, Any]:
    """One alias."""
    alias = provisioning.get_alias(db.session, address, allowed_domain_ids=scope())
    return alias.to_dict()  # type: ignore[no-any-return]


@bp.delete("/<string:address>")
@bp.response(204)
@problems(bp, 404)
def delete_alias(address: str) -> None:
    """Delete an alias (the mailbox stays)."""
    alias = provisioning.get_alias(db.session, address, allowed_domain_ids=scope())
    provisioning.delete_alias(db.session, alias, actor=actor())
    db.session.commit()
