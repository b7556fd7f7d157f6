"""The panel's API pages: tokens (made, shown once, listed, revoked) and the API reference,
drawn on the server from the OpenAPI document (no script, no CDN: it obeys our CSP)."""

from __future__ import annotations

import re
from typing import Any

from flask import abort, current_app, flash, make_response, redirect, render_template, url_for
from werkzeug.wrappers import Response

from provider.errors import ProviderError
from provider.extensions import db
from provider.services import tokens
from provider.services.clock import now
from provider.web.admin import bp
from provider.web.admin.access import actor, current_admin, show_error
from provider.web.admin.forms import ApiTokenForm, ConfirmForm
from provider.web.api import spec

METHOD_ORDER = {"get": 0, "post": 1, "patch": 2, "put": 3, "delete": 4}


def _visible_tokens() -> list[Any]:
    """A superadmin sees every token; a domain admin only their own."""
    admin = current_admin()
    return tokens.list_tokens(db.session, None if admin.is_superadmin else admin)


def _render_tokens(form: ApiTokenForm, new_secret: str | None = None) -> str:
    return render_template(
        "admin/api/tokens.html",
        form=form,
        tokens=_visible_tokens(),
        new_secret=new_secret,
        moment=now(),
    )


@bp.get("/api-tokens")
def api_tokens() -> str:
    return _render_tokens(ApiTokenForm(formdata=None))


@bp.post("/api-tokens")
def create_api_token() -> Response:
    """Make a token acting as the logged-in admin. Its secret is in this one answer only (not
    a redirect: a flashed secret would sit in the signed, readable session cookie)."""
    form = ApiTokenForm()
    if form.validate_on_submit():
        allowed = [part for part in re.split(r"[\s,]+", form.allowed_ips.data or "") if part]
        try:
            made = tokens.create_token(
                db.session,
                current_admin(),
                name=form.name.data or "",
                scope=form.scope.data or "read",
                expires_days=form.expires_days.data,
                allowed_ips=allowed or None,
                actor=actor(),
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc, {"expires": "expires_days"})
        else:
            response = make_response(_render_tokens(ApiTokenForm(formdata=None), made.secret))
            response.headers["Cache-Control"] = "no-store"  # the secret: never from a cache
            return response
    return make_response(_render_tokens(form))


@bp.post("/api-tokens/<int:token_id>/revoke")
def revoke_api_token(token_id: int) -> Response:
    form = ConfirmForm()
    if not form.validate_on_submit():
        abort(400)
    admin = current_admin()
    try:
        token = tokens.get_token(db.session, token_id)
    except ProviderError:
        abort(404)
    if not admin.is_superadmin and token.admin_id != admin.id:
        abort(404)  # another admin's token: as if it did not exist
    tokens.revoke_token(db.session, token, actor=actor())
    db.session.commit()
    flash(f"Token {token.name} revoked: it is refused from now on.", "success")
    return redirect(url_for("admin.api_tokens"))


def _resolve(document: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
    if not schema:
        return {}
    reference = schema.get("$ref")
    if reference:
        name = reference.rsplit("/", 1)[-1]
        return {"name": name, **document["components"]["schemas"].get(name, {})}
    if schema.get("type") == "array" and "items" in schema:
        inner = _resolve(document, schema["items"])
        return {"name": f"list of {inner.get('name', 'items')}", "items_schema": inner}
    return schema


def _type_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "oneOf" in schema:
        return " or ".join(_type_text(option) for option in schema["oneOf"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(str(part) for part in kind)
    if kind == "array":
        return f"list of {_type_text(schema.get('items', {}))}"
    return str(kind)


def reference_operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every operation of the document, in path order, shaped for the reference template."""
    operations = []
    for path in sorted(document["paths"]):
        for method, operation in sorted(
            document["paths"][path].items(), key=lambda item: METHOD_ORDER.get(item[0], 9)
        ):
            if method not in METHOD_ORDER:
                continue
            body = operation.get("requestBody", {}).get("content", {})
            body_schema = _resolve(document, next(iter(body.values()))["schema"]) if body else {}
            responses = []
            for status, answer in sorted(operation.get("responses", {}).items()):
                content = answer.get("content", {})
                shape = (
                    _resolve(document, next(iter(content.values()))["schema"]) if content else {}
                )
                responses.append(
                    {"status": status, "description": answer.get("description", ""), "shape": shape}
                )
            operations.append(
                {
                    "id": f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", ""),
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description", ""),
                    "tag": (operation.get("tags") or [""])[0],
                    "parameters": [
                        {
                            "name": parameter["name"],
                            "in": parameter["in"],
                            "required": parameter.get("required", False),
                            "type": _type_text(parameter.get("schema", {})),
                            "description": parameter.get("description", ""),
                        }
                        for parameter in operation.get("parameters", [])
                    ],
                    "body": _fields(body_schema),
                    "responses": responses,
                }
            )
    return operations


def _fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "type": _type_text(field),
            "required": name in required,
            "description": field.get("description", ""),
        }
        for name, field in schema.get("properties", {}).items()
    ]


@bp.get("/api")
def api_reference() -> str:
    document = spec(current_app)
    operations = reference_operations(document)
    schemas = {
        name: _fields(schema) for name, schema in sorted(document["components"]["schemas"].items())
    }
    return render_template(
        "admin/api/reference.html", document=document, operations=operations, schemas=schemas
    )
