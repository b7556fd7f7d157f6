"""Bad requests stop early and every error is our own page: NUL guard, bounded ids, handlers."""

from __future__ import annotations

import contextlib
import json
from typing import Any
from xml.sax.saxutils import escape

from flask import Flask, has_request_context, render_template, request
from werkzeug.exceptions import BadRequest, HTTPException, InternalServerError
from werkzeug.routing import IntegerConverter, Map

from provider.extensions import db

# The largest id a URL may carry: a signed 32-bit integer, what an id column holds on
# PostgreSQL (SQLAlchemy even casts the value to INTEGER). Above it a route does not match (404)
# instead of the database failing on the value (a 500). IMAP UIDs (32-bit unsigned, never
# looked up in the database) use UID_ROUTE_ARGUMENT.
MAX_URL_INTEGER = 2**31 - 1
MAX_UID = 2**32 - 1
UID_ROUTE_ARGUMENT = f"<int(max={MAX_UID}):uid>"
NUL_REFUSED = (
    "The request contained a NUL character, which no field accepts. Go back and check what "
    "was typed or pasted."
)
TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    413: "Too much data",
    429: "Please wait",
    500: "Something went wrong",
}
# Our words for the errors whose Werkzeug description says nothing useful to a person.
MESSAGES = {
    400: "The request could not be understood. Go back, check what was entered and try again.",
    403: "You are not allowed to see this page.",
    404: "There is nothing at this address. Check the link, or go back.",
    405: "This page cannot be used that way. Go back and use the form or link on the page.",
    413: "The form sent more data than this site accepts.",
    429: "Too many requests from here. Please try again later.",
    500: "Something went wrong on our side. Nothing was changed; please try again later.",
}


class BoundedIntegerConverter(IntegerConverter):
    """`<int:…>` that only matches numbers a database integer can hold (and the default
    everywhere, so a route added later is bounded without thinking of it)."""

    def __init__(
        self,
        map: Map,
        fixed_digits: int = 0,
        min: int | None = None,
        max: int | None = None,
        signed: bool = False,
    ) -> None:
        super().__init__(map, fixed_digits, min, MAX_URL_INTEGER if max is None else max, signed)


def has_nul(*values: Any) -> bool:
    return any(isinstance(value, str) and "\x00" in value for value in values)


def refuse_nul() -> None:
    """400 for a NUL anywhere in the path, query or form (names and values): no field means
    one, and PostgreSQL cannot even compare a text with one (the driver raises)."""
    if has_nul(request.path, *(request.view_args or {}).values()):
        raise BadRequest(NUL_REFUSED)
    for key, value in request.args.items(multi=True):
        if has_nul(key, value):
            raise BadRequest(NUL_REFUSED)
    if request.mimetype in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        for key, value in request.form.items(multi=True):
            if has_nul(key, value):
                raise BadRequest(NUL_REFUSED)


def _template() -> str:
    """The error page of the part of the site the request went to."""
    path = request.path
    if path == "/admin" or path.startswith("/admin/"):
        return "admin/error.html"
    if path == "/account" or path.startswith("/account/"):
        return "account/error.html"
    return "error.html"


def _message(error: HTTPException) -> str:
    """A description given to abort() is ours; Werkzeug's class default is replaced."""
    code = error.code or 500
    default = type(error).description
    if error.description and error.description != default:
        return str(error.description)
    return MESSAGES.get(code, str(error.description or ""))


def _wanted_format() -> str:
    """ "xml" for the mail clients' configuration files (autoconfig, autodiscover) and clients
    that ask for XML, "json" for clients that prefer JSON (and for /api/), else "html"."""
    if not has_request_context():
        return "html"
    path = request.path
    if path.lower().endswith(".xml"):
        return "xml"
    if path.startswith("/api/"):
        return "json"
    offered = ["text/html", "application/json", "application/problem+json", "application/xml"]
    best = request.accept_mimetypes.best_match(offered, default="text/html")
    if best in ("application/json", "application/problem+json"):
        return "json"
    return "xml" if best == "application/xml" else "html"


def _machine_error(
    kind: str, code: int, title: str, message: str
) -> tuple[str, int, dict[str, str]]:
    if kind == "json":  # RFC 9457 problem details
        problem = {"type": "about:blank", "title": title, "status": code, "detail": message}
        body = json.dumps(problem)
        return body, code, {"Content-Type": "application/problem+json"}
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<error><status>{code}</status><title>{escape(title)}</title>"
        f"<detail>{escape(message)}</detail></error>\n"
    )
    return body, code, {"Content-Type": "application/xml; charset=utf-8"}


def http_error(
    error: HTTPException,
) -> tuple[str, int] | tuple[str, int, dict[str, str]] | HTTPException:
    code = error.code
    if code is None or code < 400:
        return error
    if has_request_context() and request.path.startswith("/api/v1/") and code < 500:
        # No route matched under /api/v1 (404, 405): the API's problem, its words, Allow.
        from provider.web.api.core import http_error as api_http_error

        return api_http_error(error)  # type: ignore[return-value]
    if code >= 500:
        return server_error(error)
    title = TITLES.get(code, error.name)
    kind = _wanted_format()
    if kind != "html":
        return _machine_error(kind, code, title, _message(error))
    return render_template(_template(), code=code, title=title, message=_message(error)), code


def server_error(error: Exception) -> tuple[str, int] | tuple[str, int, dict[str, str]]:
    """Our 500 page, drawn without the database (which may be what failed): the generic
    layout, after the failed transaction is rolled back. The exception is already logged."""
    with contextlib.suppress(Exception):  # the database may be gone; the page must still show
        db.session.rollback()
    code = getattr(error, "code", None) or 500
    title = TITLES.get(code, "Something went wrong")
    message = MESSAGES[500] if code == 500 else _message(error)  # type: ignore[arg-type]
    kind = _wanted_format()
    if kind != "html":
        return _machine_error(kind, code, title, message)
    try:
        return render_template("error.html", code=code, title=title, message=message), code
    except Exception:  # a broken template must not turn into Werkzeug's page
        return f"{title}\n\n{message}\n", code, {"Content-Type": "text/plain; charset=utf-8"}


def register_error_pages(app: Flask) -> None:
    """Call before any blueprint is registered (the int converter applies to rules as they
    are added)."""
    app.url_map.converters["int"] = BoundedIntegerConverter
    app.before_request(refuse_nul)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(InternalServerError, server_error)


__all__ = [
    "MAX_UID",
    "MAX_URL_INTEGER",
    "UID_ROUTE_ARGUMENT",
    "BoundedIntegerConverter",
    "register_error_pages",
]
