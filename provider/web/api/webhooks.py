"""/api/v1/webhooks and /api/v1/webhook-deliveries: endpoints (secret shown once), their
deliveries with every attempt, test events and redelivery — through services/webhooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from provider.extensions import db
from provider.models import WebhookDelivery, WebhookEndpoint
from provider.services import webhooks
from provider.services.reports import Page
from provider.web.api.core import (
    BODY_PROBLEMS,
    PageArgs,
    PageSchema,
    actor,
    current_admin,
    page_of,
    problems,
    resource,
)

bp = resource("webhooks", "Webhooks: URLs that receive signed events (a domain admin: its own)")
deliveries_bp = resource(
    "webhook-deliveries", "Webhook deliveries: each event on its way to an endpoint, redeliver"
)

EVENTS_DOC = {
    "description": "Event types (" + ", ".join(webhooks.EVENT_TYPES) + "): a list, or one "
    "comma-separated string",
    "oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
}
ID_RANGE = validate.Range(min=1, max=2**31 - 1)


class EventNames(fields.Raw):
    """A list of names or one comma-separated string; what each name may be is the service's
    rule (webhooks.parse_events), only the shape is checked here."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return value
        raise ValidationError("Give the events as a list of names or a comma-separated string.")


class WebhookSchema(Schema):
    id = fields.Integer(required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    admin = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The admin it belongs to; null: the operator's (CLI)"},
    )
    description = fields.String(required=True)
    active = fields.Boolean(required=True)
    created_at = fields.String(required=True, allow_none=True)
    secret_rotated_at = fields.String(required=True, allow_none=True)


class WebhookWithSecretSchema(WebhookSchema):
    secret = fields.String(
        required=True,
        metadata={"description": "The signing secret (whsec_…): shown in this answer only"},
    )


class WebhookPageSchema(PageSchema):
    items = fields.List(fields.Nested(WebhookSchema), required=True)


class WebhookCreateSchema(Schema):
    url = fields.String(required=True, metadata={"description": "http(s) URL, no user:password"})
    events = EventNames(required=True, metadata=EVENTS_DOC)
    description = fields.String(load_default="", metadata={"description": "What receives it"})


class WebhookUpdateSchema(Schema):
    url = fields.String()
    events = EventNames(metadata=EVENTS_DOC)
    description = fields.String()
    active = fields.Boolean(metadata={"description": "false pauses it (nothing is queued)"})


class AttemptSchema(Schema):
    started_at = fields.String(required=True, allow_none=True)
    duration_ms = fields.Integer(required=True)
    status_code = fields.Integer(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)
    response_excerpt = fields.String(
        required=True, allow_none=True, metadata={"description": "The answer's first 500 chars"}
    )


class DeliverySchema(Schema):
    id = fields.Integer(required=True)
    endpoint_id = fields.Integer(required=True)
    url = fields.String(required=True)
    event = fields.String(required=True, metadata={"description": "The Webhook-Id (evt_…)"})
    type = fields.String(required=True)
    object = fields.String(required=True, metadata={"description": "e.g. mailbox:ADDRESS"})
    state = fields.String(required=True, metadata={"description": "pending, delivered or failed"})
    attempts = fields.Integer(required=True)
    created_at = fields.String(required=True, allow_none=True)
    next_attempt_at = fields.String(required=True, allow_none=True)
    finished_at = fields.String(required=True, allow_none=True)
    last_status = fields.Integer(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)
    attempt_log = fields.List(fields.Nested(AttemptSchema), required=True)


class DeliveryPageSchema(PageSchema):
    items = fields.List(fields.Nested(DeliverySchema), required=True)


class DeliveryListArgs(PageArgs):
    state = fields.String(metadata={"description": "pending, delivered or failed"})


class AllDeliveriesArgs(DeliveryListArgs):
    endpoint = fields.Integer(validate=ID_RANGE, metadata={"description": "Only this endpoint's"})


def _endpoint(webhook_id: int) -> WebhookEndpoint:
    """The endpoint if the token's admin may see it (superadmin: any; else its own): else the
    same 404 as a missing one."""
    return webhooks.get_endpoint(db.session, webhook_id, current_admin())


def _delivery(delivery_id: int) -> WebhookDelivery:
    return webhooks.get_delivery(db.session, delivery_id, current_admin())


def delivery_record(delivery: WebhookDelivery) -> dict[str, Any]:
    """A delivery with its attempts (`provider webhook deliveries --json`'s shape)."""
    return {**delivery.to_dict(), "attempt_log": [a.to_dict() for a in delivery.attempt_log]}


def _with_secret(made: webhooks.NewSecret) -> dict[str, Any]:
    return {**made.endpoint.to_dict(), "secret": made.secret}


def _deliveries_page(page: Page[WebhookDelivery]) -> dict[str, Any]:
    return page_of(page, [delivery_record(delivery) for delivery in page.items])


@bp.get("")
@bp.arguments(PageArgs, location="query")
@bp.response(200, WebhookPageSchema)
@problems(bp, 422)
def list_webhooks(args: dict[str, Any]) -> dict[str, Any]:
    """List webhook endpoints (a domain admin's token: its admin's own), never their secrets."""
    found = webhooks.list_endpoints(db.session, current_admin())
    per_page = args["per_page"]
    pages = max(1, -(-len(found) // per_page))
    number = min(args["page"], pages)
    items = found[(number - 1) * per_page : number * per_page]
    page = Page(items, len(found), number, per_page)
    return page_of(page, [endpoint.to_dict() for endpoint in page.items])


@bp.post("")
@bp.arguments(WebhookCreateSchema)
@bp.response(201, WebhookWithSecretSchema)
@problems(bp, *BODY_PROBLEMS)
def create_webhook(body: dict[str, Any]) -> dict[str, Any]:
    """Register a URL for events, owned by the token's admin (a domain admin's gets its
    domains' events only). The signing secret is in this answer only."""
    made = webhooks.create_endpoint(
        db.session,
        url=body["url"],
        events=body["events"],
        description=body["description"],
        admin=current_admin(),
        actor=actor(),
    )
    db.session.commit()
    return _with_secret(made)


@bp.get("/<int:webhook_id>")
@bp.response(200, WebhookSchema)
@problems(bp, 404)
def get_webhook(webhook_id: int) -> dict[str, Any]:
    """One endpoint (never its secret)."""
    return _endpoint(webhook_id).to_dict()  # type: ignore[no-any-return]


@bp.patch("/<int:webhook_id>")
@bp.arguments(WebhookUpdateSchema)
@bp.response(200, WebhookSchema)
@problems(bp, 404, *BODY_PROBLEMS)
def update_webhook(body: dict[str, Any], webhook_id: int) -> dict[str, Any]:
    """Change the URL, events, description, or pause it (`active`); every value is checked
    before any is set."""
    endpoint = _endpoint(webhook_id)
    webhooks.update_endpoint(
        db.session,
        endpoint,
        url=body.get("url"),
        events=body.get("events"),
        description=body.get("description"),
        active=body.get("active"),
        actor=actor(),
    )
    db.session.commit()
    return endpoint.to_dict()  # type: ignore[no-any-return]


@bp.delete("/<int:webhook_id>")
@bp.response(204)
@problems(bp, 404)
def delete_webhook(webhook_id: int) -> None:
    """Remove the endpoint with its deliveries and their attempts."""
    webhooks.delete_endpoint(db.session, _endpoint(webhook_id), actor=actor())
    db.session.commit()


@bp.post("/<int:webhook_id>/rotate-secret")
@bp.response(200, WebhookWithSecretSchema)
@problems(bp, 404, *BODY_PROBLEMS)
def rotate_secret(webhook_id: int) -> dict[str, Any]:
    """A new signing secret at once (the old one signs nothing more), in this answer only."""
    made = webhooks.rotate_secret(db.session, _endpoint(webhook_id), actor=actor())
    db.session.commit()
    return _with_secret(made)


@bp.post("/<int:webhook_id>/test")
@bp.response(202, DeliverySchema, description="Queued: the deliverer posts it within seconds")
@problems(bp, 404, *BODY_PROBLEMS)
def send_test_event(webhook_id: int) -> dict[str, Any]:
    """Queue a `webhook.test` event for this endpoint only; follow it at
    /webhook-deliveries/{id}."""
    delivery = webhooks.send_test_event(db.session, _endpoint(webhook_id), actor=actor())
    db.session.commit()
    return delivery_record(delivery)


@bp.get("/<int:webhook_id>/deliveries")
@bp.arguments(DeliveryListArgs, location="query")
@bp.response(200, DeliveryPageSchema)
@problems(bp, 404, 422)
def list_endpoint_deliveries(args: dict[str, Any], webhook_id: int) -> dict[str, Any]:
    """The endpoint's deliveries, newest first, each with its attempts."""
    endpoint = _endpoint(webhook_id)
    page = webhooks.page_deliveries(
        db.session,
        current_admin(),
        endpoint_id=endpoint.id,
        state=args.get("state"),
        page=args["page"],
        per_page=args["per_page"],
    )
    return _deliveries_page(page)


@deliveries_bp.get("")
@deliveries_bp.arguments(AllDeliveriesArgs, location="query")
@deliveries_bp.response(200, DeliveryPageSchema)
@problems(deliveries_bp, 422)
def list_deliveries(args: dict[str, Any]) -> dict[str, Any]:
    """Deliveries to every endpoint the token's admin may see, newest first."""
    page = webhooks.page_deliveries(
        db.session,
        current_admin(),
        endpoint_id=args.get("endpoint"),
        state=args.get("state"),
        page=args["page"],
        per_page=args["per_page"],
    )
    return _deliveries_page(page)


@deliveries_bp.get("/<int:delivery_id>")
@deliveries_bp.response(200, DeliverySchema)
@problems(deliveries_bp, 404)
def get_delivery(delivery_id: int) -> dict[str, Any]:
    """One delivery with every attempt (time, duration, status, error, answer excerpt)."""
    return delivery_record(_delivery(delivery_id))


@deliveries_bp.post("/<int:delivery_id>/redeliver")
@deliveries_bp.response(202, DeliverySchema, description="The new delivery, queued")
@problems(deliveries_bp, 404, *BODY_PROBLEMS)
def redeliver(delivery_id: int) -> dict[str, Any]:
    """Send the delivery's event to its endpoint again, as a new delivery queued after what
    is already pending for the same object (so the order per object holds)."""
    again = webhooks.redeliver(db.session, _delivery(delivery_id), actor=actor())
    db.session.commit()
    return delivery_record(again)
