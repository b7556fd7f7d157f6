"""/api/v1/domains: hosted domains, their signup flag and postmaster, DKIM keys and DNS records."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from provider.extensions import db
from provider.services import dkim, dns_records, provisioning, records, reports
from provider.web.api.core import (
    BODY_PROBLEMS,
    PageArgs,
    PageSchema,
    actor,
    page_of,
    problems,
    require_superadmin,
    resource,
    scope,
)

bp = resource("domains", "Hosted domains: signup flag, postmaster, DKIM keys, DNS records")


class DomainSchema(Schema):
    name = fields.String(required=True)
    signup_enabled = fields.Boolean(required=True)
    postmaster = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "Where postmaster@ mail goes; empty = the default"},
    )
    created_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    mailboxes = fields.Integer(required=True)


class DomainPageSchema(PageSchema):
    items = fields.List(fields.Nested(DomainSchema), required=True)


class DomainListArgs(PageArgs):
    search = fields.String(metadata={"description": "Only names containing this text"})
    signup_enabled = fields.Boolean()


class DomainCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(max=253))
    signup_enabled = fields.Boolean(load_default=False)


class DomainUpdateSchema(Schema):
    signup_enabled = fields.Boolean()
    postmaster = fields.List(
        fields.String(validate=validate.Length(max=320)),
        allow_none=True,
        metadata={"description": "Hosted addresses; [] or null restores the default"},
    )


class DkimKeySchema(Schema):
    selector = fields.String(required=True)
    algorithm = fields.String(required=True)
    state = fields.String(required=True)
    created_at = fields.String(required=True, allow_none=True)
    retired_at = fields.String(required=True, allow_none=True)


class DnsRecordSchema(Schema):
    name = fields.String(required=True)
    type = fields.String(required=True)
    value = fields.String(required=True)
    purpose = fields.String(required=True)
    zone_line = fields.String(required=True)


class NoArgs(Schema):
    class Meta:
        unknown = EXCLUDE


def _domain(name: str) -> Any:
    return provisioning.get_domain(db.session, name, allowed_domain_ids=scope())


@bp.get("")
@bp.arguments(DomainListArgs, location="query")
@bp.response(200, DomainPageSchema)
@problems(bp, 422)
def list_domains(args: dict[str, Any]) -> dict[str, Any]:
    """List the domains the token's admin manages (a superadmin: all)."""
    page = reports.paginate(
        db.session,
        reports.domain_select(
            domain_ids=scope(), search=args.get("search"), signup=args.get("signup_enabled")
        ),
        args["page"],
        args["per_page"],
    )
    return page_of(page, [records.domain_record(db.session, domain) for domain in page.items])


@bp.post("")
@bp.arguments(DomainCreateSchema)
@bp.response(201, DomainSchema)
@problems(bp, 409, *BODY_PROBLEMS)
def create_domain(body: dict[str, Any]) -> dict[str, Any]:
    """Host a new domain (superadmin tokens only); it gets a DKIM key at once."""
    require_superadmin()
    domain = provisioning.create_domain(
        db.session, body["name"], signup_enabled=body["signup_enabled"], actor=actor()
    )
    db.session.commit()
    return records.domain_record(db.session, domain)


@bp.get("/<string:name>")
@bp.response(200, DomainSchema)
@problems(bp, 404)
def get_domain(name: str) -> dict[str, Any]:
    """One domain."""
    return records.domain_record(db.session, _domain(name))


@bp.patch("/<string:name>")
@bp.arguments(DomainUpdateSchema)
@bp.response(200, DomainSchema)
@problems(bp, 404, *BODY_PROBLEMS)
def update_domain(body: dict[str, Any], name: str) -> dict[str, Any]:
    """Open or close public trial signup; choose where postmaster@ mail goes."""
    domain = _domain(name)
    if "signup_enabled" in body:
        provisioning.set_domain_signup(db.session, domain, body["signup_enabled"], actor=actor())
    if "postmaster" in body:
        provisioning.set_domain_postmaster(
            db.session,
            domain,
            body["postmaster"] or [],
            actor=actor(),
            allowed_domain_ids=scope(),
        )
    db.session.commit()
    return records.domain_record(db.session, domain)


@bp.delete("/<string:name>")
@bp.response(204)
@problems(bp, 404, 409)
def delete_domain(name: str) -> None:
    """Delete a domain with no mailboxes or aliases left (superadmin tokens only)."""
    domain = _domain(name)
    require_superadmin()
    provisioning.delete_domain(db.session, domain, actor=actor())
    db.session.commit()


@bp.get("/<string:name>/dkim")
@bp.response(200, DkimKeySchema(many=True))
@problems(bp, 404)
def list_dkim_keys(name: str) -> list[dict[str, Any]]:
    """The domain's DKIM keys: signing, rotated out (still published) and retired."""
    domain = _domain(name)
    return [dkim.key_record(key) for key in dkim.list_keys(db.session, domain)]


@bp.post("/<string:name>/dkim/rotate")
@bp.response(201, DkimKeySchema)
@problems(bp, 404, *BODY_PROBLEMS)
def rotate_dkim_key(name: str) -> dict[str, Any]:
    """Make a new signing key; the old one stays published until retired."""
    domain = _domain(name)
    key = dkim.rotate(db.session, domain, actor=actor())
    db.session.commit()
    return dkim.key_record(key)


@bp.post("/<string:name>/dkim/<string:selector>/retire")
@bp.response(200, DkimKeySchema)
@problems(bp, 404, *BODY_PROBLEMS)
def retire_dkim_key(name: str, selector: str) -> dict[str, Any]:
    """Unpublish a rotated-out key."""
    domain = _domain(name)
    key = dkim.retire(db.session, domain, selector, actor=actor())
    db.session.commit()
    return dkim.key_record(key)


@bp.get("/<string:name>/dns")
@bp.response(200, DnsRecordSchema(many=True))
@problems(bp, 404)
def dns(name: str) -> list[dict[str, Any]]:
    """The DNS records to publish for the domain (MX, SPF, DKIM, DMARC, SRV …)."""
    domain = _domain(name)
    return [
        records.dns_record(record) for record in dns_records.expected_records(db.session, domain)
    ]
