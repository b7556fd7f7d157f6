"""What every /api/v1 resource shares: bearer auth, scope, rate limit, idempotency, problems."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from flask_smorest import Api
from flask_smorest import Blueprint as ApiBlueprint
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from marshmallow import EXCLUDE, Schema, fields, validate
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from provider.errors import InvalidInput, ProviderError
from provider.extensions import csrf, db
from provider.models import AdminUser, ApiToken
from provider.services import audit, idempotency, ratelimit, tokens
from provider.services.audit import Actor
from provider.services.reports import KeysetPage, Page

PREFIX = "/api/v1"
PROBLEM_JSON = "application/problem+json"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_PER_PAGE = 500
# The only body type the API reads; anything else (a form post, XML) is refused with 415.
JSON_TYPES = frozenset({"application/json"})
MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32
View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class BodyRule:
    """What a route reads as its body: the media types it takes and how many bytes at most."""

    types: frozenset[str]
    max_bytes: int
    # "as JSON (Content-Type: application/json)": the end of the 415 answer's sentence.
    how: str

    @property
    def is_json(self) -> bool:
        return self.types == JSON_TYPES


JSON_BODY = BodyRule(JSON_TYPES, MAX_BODY_BYTES, "as JSON (Content-Type: application/json)")


class ProblemSchema(Schema):
    """RFC 9457 problem details; `errors` names each offending field with its messages."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Offending field → messages (the words the panel's forms use)"},
    )


class ProviderApi(Api):  # type: ignore[misc]
    """flask-smorest's Api without its app-wide error handler (the panel keeps its own pages;
    /api/v1's problems come from each API blueprint's handlers) and its `flask openapi` command
    (the schema is served at /api/v1/openapi.json)."""

    ERROR_SCHEMA = ProblemSchema

    def _register_error_handlers(self) -> None:
        pass


class PageArgs(Schema):
    """page/per_page of every list (1-based; a page past the end gives the last page)."""

    class Meta:
        unknown = EXCLUDE

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=2**31 - 1))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_PER_PAGE))


class PageSchema(Schema):
    total = fields.Integer(required=True, metadata={"description": "Rows matching, all pages"})
    page = fields.Integer(
        required=True, allow_none=True, metadata={"description": "null when paged by cursor"}
    )
    per_page = fields.Integer(required=True)
    pages = fields.Integer(required=True)
    total_is_estimate = fields.Boolean(
        required=True,
        metadata={
            "description": "true when more rows match than the server counts exactly "
            "(LIST_EXACT_TOTAL_MAX, PostgreSQL): `total` and `pages` are then the database's "
            "estimate, never below the rows known to exist; page by `after`/`next_after` or "
            "until a short page to read them all"
        },
    )


def page_of(page: Page[Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "items": items,
        "total": page.total,
        "page": page.page,
        "per_page": page.per_page,
        "pages": page.pages,
        "total_is_estimate": page.total_is_estimate,
    }


def keyset_page_of(page: KeysetPage[Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """A page read by cursor: `page` is null, `next_after` the cursor of the next one."""
    return {
        "items": items,
        "total": page.total,
        "page": None,
        "per_page": page.per_page,
        "pages": page.pages,
        "total_is_estimate": page.total_is_estimate,
        "next_after": page.next_after,
    }


# --- problems ------------------------------------------------------------------------------


def problem(
    status: int,
    detail: str,
    *,
    errors: Mapping[str, list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """An RFC 9457 problem; `extra` adds members of the route's own (its schema names them)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error",
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = dict(errors)
    body.update(extra or {})
    response = current_app.response_class(
        json.dumps(body), status=status, mimetype=PROBLEM_JSON, headers=dict(headers or {})
    )
    return response


def _flat_errors(messages: Any) -> dict[str, list[str]]:
    """webargs' {location: {field: [messages]}} as {field: [messages]} (nested fields dotted)."""
    flat: dict[str, list[str]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            flat.setdefault(prefix or "_body", []).extend(value)
        else:
            flat.setdefault(prefix or "_body", []).append(str(value))

    if isinstance(messages, Mapping):
        for inner in messages.values():  # drop the location (json, query)
            walk("", inner)
    return flat


def provider_error(error: ProviderError) -> Response:
    """A broken rule: its own status (a bad value is 422), its message next to its field."""
    db.session.rollback()
    status = 422 if isinstance(error, InvalidInput) else error.http_status
    errors = {error.field: [error.message]} if error.field else None
    headers = {}
    if isinstance(error, tokens.TokenRefused) and status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="api", error="invalid_token"'
    return problem(status, error.message, errors=errors, headers=headers)


def http_error(error: HTTPException) -> Response:
    db.session.rollback()
    code = error.code or 500
    data = getattr(error, "data", None) or {}
    errors = _flat_errors(data.get("messages")) if "messages" in data else None
    if code == 400 and errors and "_body" in errors:
        detail = "the body is not valid JSON"
    elif errors:
        detail = "; ".join(f"{field}: {' '.join(text)}" for field, text in errors.items())
    else:
        detail = str(error.description or HTTPStatus(code).phrase)
    headers = dict(data.get("headers") or {})
    if code == 405:
        valid = getattr(error, "valid_methods", None)
        if valid:
            headers["Allow"] = ", ".join(sorted(valid))
    return problem(code, detail, errors=errors, headers=headers)


# --- who is asking -------------------------------------------------------------------------


def current_token() -> ApiToken:
    return g.api_token  # type: ignore[no-any-return]


def current_admin() -> AdminUser:
    return current_token().admin


def scope() -> set[int] | None:
    """Domain ids the token's admin manages; None for a superadmin (every domain)."""
    return current_admin().managed_domain_ids()


def actor() -> Actor:
    """The audit actor of a write through the API: the token's name (and its admin)."""
    token = current_token()
    return Actor(audit.actor_name(f"token:{token.name} ({token.admin.email})"), request.remote_addr)


def require_superadmin() -> None:
    if not current_admin().is_superadmin:
        raise tokens.TokenNotFromHere("only a superadmin's token may do this")


def in_scope(domain_ids: Collection[int] | None, domain_id: int) -> bool:
    return domain_ids is None or domain_id in domain_ids


# --- the hooks every API blueprint runs ----------------------------------------------------


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _rate_limiter() -> tuple[FixedWindowRateLimiter, Any]:
    found = current_app.extensions.get("api_rate_limiter")
    if found is None:
        storage = storage_from_string(
            ratelimit.storage_uri(str(current_app.config["RATELIMIT_STORAGE_URI"]), current_app)
        )
        found = (FixedWindowRateLimiter(storage), parse(str(current_app.config["API_RATE_LIMIT"])))
        current_app.extensions["api_rate_limiter"] = found
    return found  # type: ignore[no-any-return]


def _rate_limited(token: ApiToken) -> Response | None:
    limiter, limit = _rate_limiter()
    if limiter.hit(limit, "api-token", str(token.id)):
        return None
    reset_at = limiter.get_window_stats(limit, "api-token", str(token.id)).reset_time
    wait = max(1, math.ceil(reset_at - time.time()))
    return problem(
        429,
        f"too many requests with this token (limit {limit}); try again in {wait} s",
        headers={"Retry-After": str(wait)},
    )


def takes_body(rule: BodyRule) -> Callable[[View], View]:
    """Let a route read another body than JSON of at most MAX_BODY_BYTES (the CSV import:
    text/csv up to 4 MiB). The rule rides on the view function; flask-smorest's wrappers
    (functools.wraps) carry it up to the function the URL map calls."""

    def decorate(view: View) -> View:
        view.api_body_rule = rule  # type: ignore[attr-defined]
        return view

    return decorate


def _body_rule() -> BodyRule:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "api_body_rule", JSON_BODY)


def _bad_body() -> Response | None:
    """A body the API will not read: too big (413), not the route's type (415: JSON unless the
    route says otherwise), unreadable (400), nested too deep or a NUL or lone surrogate in any
    string (422: no field takes one, and PostgreSQL cannot store it). Checked before any view
    parses it."""
    if request.method in READ_METHODS or request.method == "DELETE":
        return None
    rule = _body_rule()
    too_big = problem(413, f"the body may have at most {rule.max_bytes} bytes")
    if request.content_length is not None and request.content_length > rule.max_bytes:
        return too_big
    # A body sent without Content-Length (chunked) is read up to one byte past the bound, no
    # further (Werkzeug stops there silently), so one too long is told from one that fits.
    request.max_content_length = rule.max_bytes + 1
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        return too_big
    if len(body) > rule.max_bytes:
        return too_big
    if not body and request.mimetype == "":
        return None  # no body at all (e.g. POST …/dkim/rotate)
    if request.mimetype not in rule.types:
        return problem(415, f"send the body {rule.how}")
    if not rule.is_json:
        return None  # the view reads it (the CSV import checks every cell itself)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return problem(400, "the body is not valid JSON", errors={"_body": ["Invalid JSON body."]})
    found = _nul_or_depth(document)
    if found is not None:
        field, message = found
        return problem(422, f"{field}: {message}", errors={field: [message]})
    return None


def _bad_text(text: str) -> str | None:
    """What no field accepts in a string: a NUL, or a lone surrogate (JSON's "\\ud800"), which
    is no Unicode character and which neither hashing nor the database can encode."""
    if "\x00" in text:
        return "may not contain a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    return None


def _nul_or_depth(document: Any) -> tuple[str, str] | None:
    """The first field holding a NUL or a lone surrogate, or nested deeper than MAX_DEPTH,
    with what is wrong."""
    pending: list[tuple[str, Any, int]] = [("_body", document, 0)]
    while pending:
        field, value, depth = pending.pop()
        if depth > MAX_DEPTH:
            return field, f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            problem_text = _bad_text(value)
            if problem_text:
                return field, problem_text
        if isinstance(value, dict):
            for key, inner in value.items():
                if _bad_text(key):
                    return "_body", f"a field name {_bad_text(key)}"
                name = key if field == "_body" else f"{field}.{key}"
                pending.append((name, inner, depth + 1))
        elif isinstance(value, list):
            pending.extend((field, inner, depth + 1) for inner in value)
    return None


def before_api_request() -> Response | None:
    """Bearer token (never the panel's session cookie), scope, rate limit, body type, and a
    stored answer for a repeated Idempotency-Key."""
    secret = _bearer()
    if secret is None:
        return problem(
            401,
            "send a token: Authorization: Bearer <token> (provider token create)",
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    token = tokens.authenticate(db.session, secret, request.remote_addr)
    g.api_token = token
    limited = _rate_limited(token)
    if limited is not None:
        return limited
    if request.method not in READ_METHODS and token.scope != "write":
        return problem(403, "this token may only read (scope read); writing needs scope write")
    bad = _bad_body()
    if bad is not None:
        return bad
    key = request.headers.get("Idempotency-Key")
    if request.method == "POST" and key is not None:
        idempotency.check_key(key)
        print_ = idempotency.fingerprint(
            request.method, request.full_path.rstrip("?"), request.get_data(cache=True)
        )
        stored = idempotency.find(db.session, token.id, key, print_)
        if stored is not None:
            response = current_app.response_class(
                stored.body,
                status=stored.status_code,
                mimetype=PROBLEM_JSON if stored.status_code >= 400 else "application/json",
            )
            response.headers["Idempotent-Replayed"] = "true"
            return response
        g.idempotency = (key, print_)
    return None


def after_api_request(response: Response) -> Response:
    """Keep a keyed POST's answer for its retries; never a session cookie on an API answer."""
    pending = g.pop("idempotency", None)
    if pending is not None and response.status_code < 500 and response.status_code != 429:
        key, print_ = pending
        idempotency.remember(
            db.session,
            current_token().id,
            key,
            print_,
            response.status_code,
            response.get_data(as_text=True),
        )
    response.headers.setdefault("Cache-Control", "no-store")
    response.vary.add("Authorization")
    return response


def guarded(blueprint: ApiBlueprint) -> ApiBlueprint:
    """Attach the token check, the problem handlers and the CSRF exemption to a blueprint."""
    csrf.exempt(blueprint)
    blueprint.before_request(before_api_request)
    blueprint.after_request(after_api_request)
    blueprint.register_error_handler(ProviderError, provider_error)
    blueprint.register_error_handler(HTTPException, http_error)
    return blueprint


# What any route may answer: a NUL in the URL (400), no or a bad token (401), not allowed
# (403), too many requests (429).
COMMON_PROBLEMS = (400, 401, 403, 429)
# What a route reading a body may answer besides: too big (413), not JSON (415), a bad value
# (422).
BODY_PROBLEMS = (413, 415, 422)


def problems(blueprint: ApiBlueprint, *codes: int) -> Callable[[Any], Any]:
    """Document each problem status a route can answer, the common ones included (they all
    share ProblemSchema)."""

    def decorate(view: Any) -> Any:
        for code in sorted(set(COMMON_PROBLEMS) | set(codes)):
            view = blueprint.alt_response(
                code, schema=ProblemSchema, description="Problem details (RFC 9457)"
            )(view)
        return view

    return decorate


def resource(name: str, description: str) -> ApiBlueprint:
    return guarded(
        ApiBlueprint(
            f"api_{name}", __name__, url_prefix=f"{PREFIX}/{name}", description=description
        )
    )


def register(app: Flask, api: ProviderApi, blueprints: list[ApiBlueprint]) -> None:
    for blueprint in blueprints:
        api.register_blueprint(blueprint)
