"""/api/v1/queue: the outbound queue's open messages (a domain admin: its mailboxes'), retry
and delete, through services/outbound."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from provider.errors import NotFound
from provider.extensions import db
from provider.services import outbound
from provider.web.api.core import (
    BODY_PROBLEMS,
    PageArgs,
    PageSchema,
    actor,
    keyset_page_of,
    page_of,
    problems,
    resource,
    scope,
)

bp = resource("queue", "The outbound queue: messages waiting to leave, retry, delete")


class RecipientSchema(Schema):
    address = fields.String(required=True)
    state = fields.String(required=True)
    attempts = fields.Integer(required=True)
    next_attempt_at = fields.String(required=True, allow_none=True)
    last_attempt_at = fields.String(required=True, allow_none=True)
    last_reply = fields.String(required=True, allow_none=True)


class QueuedMessageSchema(Schema):
    queue_id = fields.String(required=True)
    sender = fields.String(required=True)
    size = fields.Integer(required=True)
    subject = fields.String(required=True, allow_none=True)
    created_at = fields.String(required=True)
    recipients = fields.List(fields.Nested(RecipientSchema), required=True)


class QueuePageSchema(PageSchema):
    items = fields.List(fields.Nested(QueuedMessageSchema), required=True)
    next_after = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Cursor of the next page: pass it as `after`"},
    )


class QueueListArgs(PageArgs):
    search = fields.String(metadata={"description": "Sender, recipient or queue id"})
    after = fields.String(
        validate=validate.Length(max=100),
        metadata={
            "description": "Cursor paging: the messages after this one — the previous "
            "answer's next_after (empty: from the oldest); fast at any depth, `page` ignored"
        },
    )


class CountSchema(Schema):
    recipients = fields.Integer(required=True, metadata={"description": "Recipients affected"})


def _message(queue_id: str) -> Any:
    """The open or finished message, if the token's admin may see it; else as if missing."""
    message = outbound.find(db.session, queue_id)
    if not outbound.visible(db.session, message, scope()):
        raise NotFound(f"no queued message {message.queue_id}", "queue_id")
    return message


@bp.get("")
@bp.arguments(QueueListArgs, location="query")
@bp.response(200, QueuePageSchema)
@problems(bp, 422)
def list_queue(args: dict[str, Any]) -> dict[str, Any]:
    """Messages with recipients still to deliver, oldest first."""
    filters = {"domain_ids": scope(), "search": args.get("search"), "per_page": args["per_page"]}
    if "after" in args:
        keyset = outbound.visible_after(db.session, args["after"], **filters)
        return keyset_page_of(keyset, [outbound.message_record(m) for m in keyset.items])
    page = outbound.visible_page(db.session, page=args["page"], **filters)
    result = page_of(page, [outbound.message_record(message) for message in page.items])
    result["next_after"] = (
        outbound.queue_cursor(page.items[-1]) if page.has_next and page.items else None
    )
    return result


@bp.get("/<string:queue_id>")
@bp.response(200, QueuedMessageSchema)
@problems(bp, 404)
def get_message(queue_id: str) -> dict[str, Any]:
    """One queued message with each recipient's state and last reply."""
    return outbound.message_record(_message(queue_id))


@bp.post("/<string:queue_id>/retry")
@bp.response(200, CountSchema)
@problems(bp, 404, *BODY_PROBLEMS)
def retry(queue_id: str) -> dict[str, Any]:
    """Make the message's deferred recipients due now."""
    message = _message(queue_id)
    count = outbound.retry(db.session, message.queue_id, actor=actor(), domain_ids=scope())
    db.session.commit()
    return {"recipients": count}


@bp.delete("/<string:queue_id>")
@bp.response(200, CountSchema)
@problems(bp, 404)
def delete(queue_id: str) -> dict[str, Any]:
    """Take the message's undelivered recipients out of the queue (no bounce is sent)."""
    message = _message(queue_id)
    count = outbound.delete(db.session, message.queue_id, actor=actor())
    db.session.commit()
    return {"recipients": count}
