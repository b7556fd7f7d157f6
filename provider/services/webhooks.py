"""Webhooks: endpoints, the durable outbox of events, signed POSTs, retries — every rule once.

An event is written (`emit`) into the session of the change that caused it, as one
`webhook_events` row and one `webhook_deliveries` row per endpoint that wants it: it commits
with the change or not at all, and nothing is sent from the request that made it. A deliverer
(`deliver_due`, run by the outbound process's `WebhookDeliverer` thread) claims due deliveries
with a conditional UPDATE of `claimed_until`, posts them with a short timeout, and records
every attempt. A later delivery for the same object and endpoint waits while an earlier one
is still pending, so receivers see one object's events in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, has_app_context
from sqlalchemy import Select, delete, exists, false, or_, select, update
from sqlalchemy.orm import Session, aliased, selectinload

from provider.errors import InvalidInput, NotFound
from provider.models import (
    AdminUser,
    DeliveryState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from provider.services import audit
from provider.services.audit import Actor
from provider.services.clock import now
from provider.services.reports import Page, paginate

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "mailbox.created",
    "mailbox.updated",
    "mailbox.deleted",
    "mailbox.suspended",
    "quota.warning",
    "trial.reminder",
    "trial.expired",
    "trial.converted",
    "trial.deleted",
    "backup.failed",
    "sending.suspended",
)
# Sent by "send test event" only, to the one endpoint asked; never subscribed to.
TEST_EVENT = "webhook.test"
URL_MAX = 2048
DESCRIPTION_MAX = 200
SECRET_PREFIX = "whsec_"
# Headers of every POST (the signature is Stripe's form: "t=<unix time>,v1=<hex HMAC>").
EVENT_HEADER = "Webhook-Id"
TIMESTAMP_HEADER = "Webhook-Timestamp"
SIGNATURE_HEADER = "Webhook-Signature"
USER_AGENT = "mail-provider-webhooks/1"
# Of a receiver's answer only this much is read (and the first 500 characters are kept).
RESPONSE_READ_MAX = 4096
EXCERPT_MAX = 500
ERROR_MAX = 500
ROW_ID_MAX = 2**31 - 1


def _setting(name: str, default: Any) -> Any:
    return current_app.config.get(name, default) if has_app_context() else default


# --- endpoints -------------------------------------------------------------------------------


def parse_url(value: str) -> str:
    """An endpoint URL: http or https, a host, no user or password in it, at most URL_MAX
    characters, no spaces or control characters."""
    url = str(value).strip()
    if not url:
        raise InvalidInput("give the URL that receives the events", "url")
    if len(url) > URL_MAX:
        raise InvalidInput(f"the URL may have at most {URL_MAX} characters", "url")
    if any(ord(character) <= 32 or ord(character) == 127 for character in url):
        raise InvalidInput("the URL may not contain spaces or control characters", "url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput(f"{url[:80]!r} is not a URL", "url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput("the URL must start with http:// or https://", "url")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput(
            "the URL may not carry a user name or password; the signature proves the sender",
            "url",
        )
    if not parts.hostname:
        raise InvalidInput("the URL needs a host name", "url")
    if port == 0:
        raise InvalidInput("the URL's port must be from 1 to 65535", "url")
    if parts.fragment:
        raise InvalidInput("the URL may not have a #fragment", "url")
    return url


def parse_events(values: Iterable[str] | str) -> list[str]:
    """The chosen event types (known ones only, at least one), in EVENT_TYPES order."""
    names = values.split(",") if isinstance(values, str) else list(values)
    chosen = {str(name).strip().lower() for name in names if str(name).strip()}
    unknown = sorted(chosen - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput(
            f"unknown event {unknown[0][:60]!r}: choose from {', '.join(EVENT_TYPES)}", "events"
        )
    if not chosen:
        raise InvalidInput("choose at least one event", "events")
    return [name for name in EVENT_TYPES if name in chosen]


def _check_description(value: str) -> str:
    text = " ".join(str(value).split())
    if any(ord(character) < 32 or ord(character) == 127 for character in text):
        raise InvalidInput(
            "the description may not contain control characters (NUL, …)", "description"
        )
    if len(text) > DESCRIPTION_MAX:
        raise InvalidInput(
            f"the description may have at most {DESCRIPTION_MAX} characters", "description"
        )
    return text


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class NewSecret:
    """An endpoint and its signing secret, shown this once (at creation or rotation)."""

    endpoint: WebhookEndpoint
    secret: str


def create_endpoint(
    session: Session,
    *,
    url: str,
    events: Iterable[str] | str,
    admin: AdminUser | None,
    description: str = "",
    actor: Actor,
) -> NewSecret:
    """Register a URL for events. `admin` None: the operator's (CLI), for every domain."""
    url, chosen, description = parse_url(url), parse_events(events), _check_description(description)
    if admin is not None and not admin.active:
        raise InvalidInput(f"{admin.email} is not an active admin", "admin")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        admin=admin,
        url=url,
        events=chosen,
        secret=secret,
        description=description,
        active=True,
        created_at=now(),
    )
    session.add(endpoint)
    session.flush()
    audit.record(
        session, actor, "webhook.create", f"webhook:{endpoint.id}", after=_audited(endpoint)
    )
    return NewSecret(endpoint, secret)


def _audited(endpoint: WebhookEndpoint) -> dict[str, Any]:
    record = endpoint.to_dict()
    record.pop("created_at")
    return record


def update_endpoint(
    session: Session,
    endpoint: WebhookEndpoint,
    *,
    url: str | None = None,
    events: Iterable[str] | str | None = None,
    description: str | None = None,
    active: bool | None = None,
    actor: Actor,
) -> WebhookEndpoint:
    """Change an endpoint; everything is checked before anything is set."""
    before = _audited(endpoint)
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = parse_url(url)
    if events is not None:
        changes["events"] = parse_events(events)
    if description is not None:
        changes["description"] = _check_description(description)
    if active is not None:
        changes["active"] = bool(active)
    for name, value in changes.items():
        setattr(endpoint, name, value)
    after = _audited(endpoint)
    if after != before:
        session.flush()
        audit.record(
            session, actor, "webhook.update", f"webhook:{endpoint.id}", before=before, after=after
        )
    return endpoint


def rotate_secret(session: Session, endpoint: WebhookEndpoint, *, actor: Actor) -> NewSecret:
    """A new signing secret, at once: deliveries from now on are signed with it."""
    endpoint.secret = new_secret()
    endpoint.secret_rotated_at = now()
    session.flush()
    audit.record(session, actor, "webhook.rotate_secret", f"webhook:{endpoint.id}")
    return NewSecret(endpoint, endpoint.secret)


def delete_endpoint(session: Session, endpoint: WebhookEndpoint, *, actor: Actor) -> None:
    """Remove an endpoint with its deliveries and their attempts."""
    before = _audited(endpoint)
    session.delete(endpoint)
    session.flush()
    audit.record(session, actor, "webhook.delete", f"webhook:{before['id']}", before=before)


def get_endpoint(
    session: Session, endpoint_id: int, viewer: AdminUser | None = None
) -> WebhookEndpoint:
    """The endpoint, if `viewer` (None: the operator) may see it; NotFound otherwise."""
    endpoint = session.get(WebhookEndpoint, endpoint_id) if _row_id(endpoint_id) else None
    if endpoint is None or not can_see(viewer, endpoint):
        raise NotFound(f"no webhook endpoint with id {endpoint_id}", "id")
    return endpoint


def _row_id(value: int) -> bool:
    """Whether a number can be a row id at all (PostgreSQL refuses to compare an integer
    column with a number beyond its range, so a huge id must not reach the query)."""
    return 0 < value <= ROW_ID_MAX


def can_see(viewer: AdminUser | None, endpoint: WebhookEndpoint) -> bool:
    """Superadmins (and the operator) see every endpoint; a domain admin only their own."""
    return viewer is None or viewer.is_superadmin or endpoint.admin_id == viewer.id


def list_endpoints(session: Session, viewer: AdminUser | None = None) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).order_by(WebhookEndpoint.id)
    if viewer is not None and not viewer.is_superadmin:
        query = query.where(WebhookEndpoint.admin_id == viewer.id)
    return list(session.scalars(query))


# --- the outbox ------------------------------------------------------------------------------


def _receives(endpoint: WebhookEndpoint, event_type: str, domain: str | None) -> bool:
    if not endpoint.active or event_type not in endpoint.events:
        return False
    admin = endpoint.admin
    if admin is None:
        return True
    if not admin.active:
        return False
    if admin.is_superadmin:
        return True
    return domain is not None and any(d.name == domain for d in admin.domains)


def _first_due(moment: datetime) -> tuple[datetime, datetime]:
    return moment, moment + timedelta(hours=float(_setting("WEBHOOK_RETRY_HOURS", 24)))


def emit(
    session: Session,
    event_type: str,
    *,
    domain: str | None,
    object_key: str,
    data: dict[str, Any],
) -> WebhookEvent | None:
    """Put an event in the outbox, in the caller's transaction, for every endpoint that wants
    it (its type chosen; a superadmin's or the operator's, or its admin manages `domain`).
    None when no endpoint wants it (nothing is written)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event_type!r}")
    wanted = [e for e in _active_endpoints(session) if _receives(e, event_type, domain)]
    if not wanted:
        return None
    return _write_event(session, event_type, domain, object_key, data, wanted)


def emit_many(
    session: Session, event_type: str, events: Iterable[tuple[str | None, str, dict[str, Any]]]
) -> int:
    """`emit` for many objects at once, each (domain, object_key, data), reading the endpoints
    once (the CSV import's thousands of mailbox.created). Returns how many were written."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event_type!r}")
    endpoints = _active_endpoints(session)
    written = 0
    for domain, object_key, data in events:
        wanted = [e for e in endpoints if _receives(e, event_type, domain)]
        if wanted:
            _write_event(session, event_type, domain, object_key, data, wanted)
            written += 1
    return written


def _active_endpoints(session: Session) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.active.is_(True))
            .options(selectinload(WebhookEndpoint.admin).selectinload(AdminUser.domains))
        )
    )


def _write_event(
    session: Session,
    event_type: str,
    domain: str | None,
    object_key: str,
    data: dict[str, Any],
    endpoints: list[WebhookEndpoint],
) -> WebhookEvent:
    moment = now()
    event = WebhookEvent(
        public_id="evt_" + uuid.uuid4().hex,
        type=event_type,
        domain=domain,
        object_key=object_key[:400],
        created_at=moment,
        data=data,
    )
    session.add(event)
    session.flush()
    due, give_up = _first_due(moment)
    for endpoint in endpoints:
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id,
                event_id=event.id,
                object_key=event.object_key,
                state=DeliveryState.PENDING.value,
                attempts=0,
                created_at=moment,
                next_attempt_at=due,
                give_up_at=give_up,
            )
        )
    session.flush()
    return event


def mailbox_key(address: str) -> str:
    return f"mailbox:{address}"


def send_test_event(
    session: Session, endpoint: WebhookEndpoint, *, actor: Actor
) -> WebhookDelivery:
    """Queue a `webhook.test` event for this endpoint only (delivered like any other)."""
    event = _write_event(
        session,
        TEST_EVENT,
        None,
        f"webhook:{endpoint.id}",
        {"endpoint_id": endpoint.id, "message": "a test event sent from the admin panel"},
        [endpoint],
    )
    audit.record(session, actor, "webhook.test", f"webhook:{endpoint.id}")
    return session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)
    ).one()


def redeliver(session: Session, delivery: WebhookDelivery, *, actor: Actor) -> WebhookDelivery:
    """Send a delivery's event to its endpoint again, as a new delivery (after the ones already
    queued for that object, so the order per object still holds)."""
    moment = now()
    due, give_up = _first_due(moment)
    again = WebhookDelivery(
        endpoint_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        object_key=delivery.object_key,
        state=DeliveryState.PENDING.value,
        attempts=0,
        created_at=moment,
        next_attempt_at=due,
        give_up_at=give_up,
    )
    session.add(again)
    session.flush()
    audit.record(
        session,
        actor,
        "webhook.redeliver",
        f"webhook:{delivery.endpoint_id}",
        after={"delivery": again.id, "of": delivery.id, "event": delivery.event.public_id},
    )
    return again


def get_delivery(
    session: Session, delivery_id: int, viewer: AdminUser | None = None
) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id) if _row_id(delivery_id) else None
    if delivery is None or not can_see(viewer, delivery.endpoint):
        raise NotFound(f"no webhook delivery with id {delivery_id}", "id")
    return delivery


def deliveries_select(
    viewer: AdminUser | None = None,
    *,
    endpoint_id: int | None = None,
    state: str | None = None,
) -> Select[tuple[WebhookDelivery]]:
    """The deliveries `viewer` may see (None: the operator, all), newest first, with their
    event, endpoint and attempts loaded; `state` must be pending, delivered or failed."""
    query = (
        select(WebhookDelivery)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .options(
            selectinload(WebhookDelivery.event),
            selectinload(WebhookDelivery.endpoint).selectinload(WebhookEndpoint.admin),
            selectinload(WebhookDelivery.attempt_log),
        )
        .order_by(WebhookDelivery.id.desc())
    )
    if viewer is not None and not viewer.is_superadmin:
        query = query.where(WebhookEndpoint.admin_id == viewer.id)
    if endpoint_id is not None:
        # An id no row can have finds nothing (and never reaches PostgreSQL's integer compare).
        query = query.where(
            WebhookDelivery.endpoint_id == endpoint_id if _row_id(endpoint_id) else false()
        )
    if state is not None:
        if state not in {s.value for s in DeliveryState}:
            raise InvalidInput(
                f"state must be pending, delivered or failed, not {state!r}", "state"
            )
        query = query.where(WebhookDelivery.state == state)
    return query


def list_deliveries(
    session: Session,
    viewer: AdminUser | None = None,
    *,
    endpoint_id: int | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[WebhookDelivery]:
    """Deliveries newest first, with their event, endpoint and attempts."""
    query = deliveries_select(viewer, endpoint_id=endpoint_id, state=state)
    return list(session.scalars(query.limit(max(1, min(limit, 1000)))))


def page_deliveries(
    session: Session,
    viewer: AdminUser | None = None,
    *,
    endpoint_id: int | None = None,
    state: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> Page[WebhookDelivery]:
    """One page of the deliveries `viewer` may see, newest first, with the total (the API)."""
    query = deliveries_select(viewer, endpoint_id=endpoint_id, state=state)
    return paginate(session, query, page, per_page)


# --- signing ---------------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>" with the endpoint's secret, as hex."""
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance: int = 300, at: float | None = None
) -> bool:
    """What a receiver does: the header's v1 matches and its time is within `tolerance`
    seconds of now (so an old request replayed later is refused)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if at is None else at) - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def request_body(event: WebhookEvent) -> bytes:
    return json.dumps(event.payload(), separators=(",", ":"), sort_keys=True).encode("utf-8")


# --- posting ---------------------------------------------------------------------------------


def _clean(text: str, limit: int) -> str:
    """A receiver's text (answer, Location, error) as storable, readable text: control
    characters (NUL first: PostgreSQL refuses it in text) become U+FFFD, cut to `limit`."""
    return "".join(
        "\ufffd" if (ord(c) < 32 and c not in "\n\t") or ord(c) == 127 else c for c in text[:limit]
    )


@dataclass(frozen=True)
class PostResult:
    status: int | None
    error: str | None
    excerpt: str | None
    seconds: float

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class TargetRefused(Exception):
    """The URL's host resolves to an address webhooks may not reach."""


def _allowed_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


def _resolve(host: str, port: int, allow_private: bool) -> str:
    """One address to connect to. Unless WEBHOOK_ALLOW_PRIVATE_TARGETS, every address the name
    has must be public: an endpoint may not reach the provider's own network (SSRF), and the
    address checked is the one connected to (no second lookup a DNS rebinding could change)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"cannot resolve {host}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise TargetRefused(f"cannot resolve {host}")
    if not allow_private:
        refused = [a for a in addresses if not _allowed_address(a)]
        if refused:
            raise TargetRefused(
                f"{host} resolves to {refused[0]}, a private or local address "
                "(WEBHOOK_ALLOW_PRIVATE_TARGETS is off)"
            )
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address already checked, whatever the name resolves to by now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


def _shut(sock: socket.socket | None, fired: threading.Event) -> None:
    fired.set()
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.shutdown(socket.SHUT_RDWR)


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    allow_private: bool,
) -> PostResult:
    """POST once: no redirect is followed (a 3xx is a failure naming where it pointed), at
    most RESPONSE_READ_MAX bytes of the answer are read, `timeout` bounds the whole exchange."""
    started = time.monotonic()
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection | None = None
    watchdog: threading.Timer | None = None
    fired = threading.Event()
    try:
        address = _resolve(host, port, allow_private)
        kind = _PinnedHTTPSConnection if secure else _PinnedHTTPConnection
        connection = kind(host, port, address, timeout)
        connection.connect()
        # A receiver that trickles its answer a byte at a time would restart every read's
        # timeout; at the deadline the socket is shut down, which ends any read at once.
        watchdog = threading.Timer(
            max(0.0, timeout - (time.monotonic() - started)), _shut, [connection.sock, fired]
        )
        watchdog.daemon = True
        watchdog.start()
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(RESPONSE_READ_MAX)
        status = response.status
        error = None
        if fired.is_set():
            # Cut off mid-answer: what was read may look whole (headers end at EOF), but the
            # receiver did not finish answering in time, so it is not a delivery.
            raise TimeoutError
        if 300 <= status < 400:
            location = _clean(response.getheader("Location") or "", 200)
            error = f"redirect to {location or '(no Location)'} not followed"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
        excerpt = _clean(data.decode("utf-8", "replace"), EXCERPT_MAX) or None
        return PostResult(status, error, excerpt, time.monotonic() - started)
    except TargetRefused as exc:
        return PostResult(None, _clean(str(exc), ERROR_MAX), None, time.monotonic() - started)
    except Exception as exc:  # whatever went wrong, it is a failed attempt, told in one line
        if fired.is_set():
            text = f"no complete answer within {timeout:g} s"
        elif str(exc):
            text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        else:
            text = type(exc).__name__
        return PostResult(None, _clean(text, ERROR_MAX), None, time.monotonic() - started)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if connection is not None:
            connection.close()


# --- delivering ------------------------------------------------------------------------------


def backoff(attempts: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before the next try after `attempts` failures: base·2^(n-1), at most `cap`,
    the upper half jittered ("equal jitter") so receivers coming back are not hit in step."""
    delay = min(cap, base * (2 ** min(max(attempts - 1, 0), 30)))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


@dataclass
class DeliveryPass:
    """What one pass of the deliverer did."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    delivery_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "retrying": self.retrying, "failed": self.failed}


def _due_ids(
    session: Session, moment: datetime, limit: int, skip_endpoints: set[int] | None = None
) -> list[int]:
    earlier = aliased(WebhookDelivery)
    pending = DeliveryState.PENDING.value
    blocked = exists().where(
        earlier.endpoint_id == WebhookDelivery.endpoint_id,
        earlier.object_key == WebhookDelivery.object_key,
        earlier.state == pending,
        earlier.id < WebhookDelivery.id,
    )
    query = (
        select(WebhookDelivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.state == pending,
            WebhookDelivery.next_attempt_at <= moment,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < moment),
            WebhookEndpoint.active.is_(True),
            ~blocked,
        )
        .order_by(WebhookDelivery.id)
        .limit(limit)
    )
    if skip_endpoints:
        query = query.where(WebhookDelivery.endpoint_id.not_in(skip_endpoints))
    return list(session.scalars(query))


def claim(session: Session, delivery_id: int, worker: str, moment: datetime, hold: float) -> bool:
    """Take a due delivery for `worker` until moment + hold; one conditional UPDATE, so of two
    deliverers exactly one gets it (on SQLite and PostgreSQL alike). Commits."""
    taken = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.PENDING.value,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < moment),
        )
        .values(claimed_until=moment + timedelta(seconds=hold), claimed_by=worker)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return bool(taken)


def deliver_due(session: Session, *, worker: str | None = None, limit: int = 50) -> DeliveryPass:
    """Post every due delivery this worker can claim (one at a time, in id order), record each
    attempt, and schedule a retry or give up. No transaction is open while a POST waits."""
    worker = worker or f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:8]}"
    timeout = float(_setting("WEBHOOK_TIMEOUT_SECONDS", 5))
    allow_private = bool(_setting("WEBHOOK_ALLOW_PRIVATE_TARGETS", False))
    report = DeliveryPass()
    # An endpoint that did not answer 2xx is left alone for the rest of the pass: its other
    # objects' deliveries would most likely fail too, and each could cost a whole timeout.
    resting: set[int] = set()
    # Rounds: delivering an object's first event makes its next one due in the same pass.
    for _round in range(limit):
        moment = now()
        candidates = _due_ids(session, moment, limit, resting)
        session.rollback()
        claimed_any = False
        for delivery_id in candidates:
            if claim(session, delivery_id, worker, moment, timeout * 2 + 30):
                claimed_any = True
                endpoint_id, delivered = _attempt(
                    session, delivery_id, worker, timeout, allow_private, report
                )
                if not delivered:
                    resting.add(endpoint_id)
                if len(report.delivery_ids) >= limit:
                    return report
                # Re-read: what this attempt delivered may unblock the next of its object.
                break
        if not claimed_any:
            break
    return report


def _attempt(
    session: Session,
    delivery_id: int,
    worker: str,
    timeout: float,
    allow_private: bool,
    report: DeliveryPass,
) -> tuple[int, bool]:
    """Post one claimed delivery and record the attempt; (its endpoint id, delivered?)."""
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    if delivery is None:  # its endpoint was deleted since the claim
        session.rollback()
        return 0, False
    event, endpoint = delivery.event, delivery.endpoint
    endpoint_id = endpoint.id
    body = request_body(event)
    timestamp = int(now().timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event.public_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature_header(endpoint.secret, timestamp, body),
    }
    url, attempts, give_up = endpoint.url, delivery.attempts + 1, delivery.give_up_at
    session.rollback()  # nothing held open while the receiver takes its time
    started = now()
    result = post(url, body, headers, timeout=timeout, allow_private=allow_private)
    moment = now()
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_status": result.status,
        "last_error": result.error,
        "claimed_until": None,
        "claimed_by": None,
    }
    if result.delivered:
        values |= {"state": DeliveryState.DELIVERED.value, "finished_at": moment}
    else:
        if moment >= give_up:
            values |= {"state": DeliveryState.FAILED.value, "finished_at": moment}
        else:
            wait = backoff(
                attempts,
                base=float(_setting("WEBHOOK_RETRY_BASE_SECONDS", 30)),
                cap=float(_setting("WEBHOOK_RETRY_MAX_SECONDS", 3600)),
            )
            values["next_attempt_at"] = min(moment + timedelta(seconds=wait), give_up)
    # Only while the claim is still ours: a deliverer that overran its claim records nothing
    # over another's attempt.
    recorded = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.claimed_by == worker)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    # The attempt is kept even when the claim was lost (it did happen), unless the delivery
    # itself is gone: its endpoint was deleted while the POST was on its way.
    still_there = recorded or session.get(WebhookDelivery, delivery_id) is not None
    if still_there:
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                started_at=started,
                duration_ms=round(result.seconds * 1000),
                status_code=result.status,
                error=result.error,
                response_excerpt=result.excerpt,
            )
        )
    session.commit()
    report.delivery_ids.append(delivery_id)
    if not recorded:
        log.warning("webhook delivery %d: claim lost while posting", delivery_id)
    elif result.delivered:
        report.delivered += 1
    elif values.get("state") == DeliveryState.FAILED.value:
        report.failed += 1
        log.warning("webhook delivery %d to %s failed for good: %s", delivery_id, url, result.error)
    else:
        report.retrying += 1
    return endpoint_id, result.delivered


PRUNE_BATCH = 500


def prune_finished(session: Session, keep_days: float) -> int:
    """Delete deliveries delivered or failed more than `keep_days` ago, with their attempts,
    then events no delivery refers to any more; pending ones stay, however old. Batches of
    PRUNE_BATCH, each its own transaction. Returns how many deliveries went."""
    cutoff = now() - timedelta(days=keep_days)
    removed = 0
    while True:
        ids = list(
            session.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.state != DeliveryState.PENDING.value,
                    WebhookDelivery.finished_at < cutoff,
                )
                .order_by(WebhookDelivery.id)
                .limit(PRUNE_BATCH)
            )
        )
        if not ids:
            break
        session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)))
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
        session.commit()
        removed += len(ids)
    orphaned = ~exists().where(WebhookDelivery.event_id == WebhookEvent.id)
    session.execute(delete(WebhookEvent).where(WebhookEvent.created_at < cutoff, orphaned))
    session.commit()
    return removed


def deliver_pending(app: Flask) -> dict[str, Any]:
    """One pass in its own app context (the deliverer thread and tests call this)."""
    from provider.extensions import db

    with app.app_context():
        try:
            return deliver_due(db.session).to_dict()
        finally:
            db.session.remove()


class WebhookDeliverer:
    """Threads that post due deliveries every WEBHOOK_POLL_SECONDS (in the outbound process,
    next to the queue runner: both are "things leaving the installation" and need a loop of
    seconds, finer than the scheduler's minutes). WEBHOOK_CONCURRENCY threads share the work
    through the claims, so one receiver that hangs holds up one thread, not every endpoint."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def died(self) -> bool:
        """Whether a thread ended although no one asked it to stop."""
        return not self.stopping.is_set() and any(not t.is_alive() for t in self.threads)

    def start(self) -> None:
        count = int(self.app.config.get("WEBHOOK_CONCURRENCY", 4))
        for number in range(max(1, count)):
            thread = threading.Thread(
                target=self._loop, name=f"webhook-deliverer-{number}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        interval = float(self.app.config.get("WEBHOOK_POLL_SECONDS", 2))
        while not self.stopping.is_set():
            try:
                deliver_pending(self.app)
            except Exception:  # the loop survives a database hiccup; the next pass retries
                log.exception("webhook delivery pass failed")
            self.stopping.wait(interval)


__all__ = [
    "EVENT_TYPES",
    "WebhookDeliverer",
    "create_endpoint",
    "deliver_due",
    "emit",
    "verify_signature",
]
