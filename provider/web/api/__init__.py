"""The provisioning REST API at /api/v1 (flask-smorest): resources, auth and the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from provider.web.api.core import PREFIX, ProviderApi

API_VERSION = "1.0.0"
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "A token from `provider token create` or the panel's API tokens page",
}

schema_bp = Blueprint("api_schema", __name__, url_prefix=PREFIX)


@schema_bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3.1 document, generated from the routes and their schemas (no token needed:
    it holds no data)."""
    return jsonify(spec(current_app))


def spec(app: Flask) -> dict[str, Any]:
    return app.extensions["provider_api"].spec.to_dict()  # type: ignore[no-any-return]


def init_api(app: Flask) -> None:
    """Build the API's spec and register its blueprints (called by create_app)."""
    from provider.extensions import csrf
    from provider.web.api import aliases, audit, domains, jobs, mailboxes, queue, webhooks
    from provider.web.api import mailbox_csv as _csv_routes  # noqa: F401  (on mailboxes.bp)

    api = ProviderApi(
        spec_kwargs={
            "title": "Mail provider provisioning API",
            "version": API_VERSION,
            "openapi_version": "3.1.0",
            "servers": [{"url": "/"}],
            "security": [{"bearerAuth": []}],
            "info": {
                "description": "Everything the panel and the CLI do, as JSON. Errors are "
                "RFC 9457 problem details (application/problem+json)."
            },
        }
    )
    api.init_app(app)
    # flask-smorest adds a `flask openapi` command; the schema is served here instead.
    app.cli.commands.pop("openapi", None)
    api.spec.components.security_scheme("bearerAuth", SECURITY_SCHEME)
    blueprints = (domains.bp, mailboxes.bp, aliases.bp, audit.bp, queue.bp, jobs.bp)
    for blueprint in (*blueprints, webhooks.bp, webhooks.deliveries_bp):
        api.register_blueprint(blueprint)
    csrf.exempt(schema_bp)
    app.register_blueprint(schema_bp)
    app.extensions["provider_api"] = api
