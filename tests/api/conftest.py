"""API fixtures: the app on a real socket (Werkzeug, port 0), tokens, and a `requests` client
that checks every response it sees against the app's own OpenAPI document."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from flask import Flask
from jsonschema import Draft202012Validator
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from provider.models import AdminUser
from provider.services import tokens
from provider.web.api import spec
from tests.conftest import TEST_ACTOR, make_admin, make_domain

PROBLEM_TYPE = "application/problem+json"


@pytest.fixture
def api_server(app: Flask) -> Iterator[str]:
    """The app on a real socket: Werkzeug's threaded server on 127.0.0.1, a free port (it
    stops cleanly: serve_forever returns on shutdown, then the socket closes)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


class SchemaChecker:
    """Finds the operation a request went to in the OpenAPI document and validates the
    response: its status is one the operation documents, its body fits the schema."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.routes: list[tuple[re.Pattern[str], str]] = []
        for template in document["paths"]:
            parts = [
                "[^/]+" if part.startswith("{") else re.escape(part) for part in template.split("/")
            ]
            self.routes.append((re.compile("^" + "/".join(parts) + "$"), template))
        self.seen: set[tuple[str, str, int]] = set()

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        """As Werkzeug routes: fixed path parts before parameters (/mailboxes/export is not the
        mailbox "export"), and a path whose template lacks the method may match another."""
        by_specificity = sorted(self.routes, key=lambda route: route[1].count("{"))
        for pattern, template in by_specificity:
            if pattern.match(path):
                found = self.document["paths"][template].get(method.lower())
                if found:
                    return template, found
        return None

    def check(self, response: requests.Response) -> None:
        request = response.request
        path = requests.utils.urlparse(request.url).path
        if not path.startswith("/api/v1/") or path == "/api/v1/openapi.json":
            return
        found = self.operation(str(request.method), path)
        if found is None:
            # No such operation: the answer must still be a problem (404 or 405).
            assert response.status_code in (404, 405), (request.method, path)
            assert response.headers["Content-Type"] == PROBLEM_TYPE
            return
        template, operation = found
        documented = operation["responses"]
        status = str(response.status_code)
        assert status in documented, (
            f"{request.method} {template} answered {status}, not documented "
            f"(documented: {sorted(documented)}): {response.text[:300]}"
        )
        self.seen.add((str(request.method), template, response.status_code))
        content = documented[status].get("content")
        if not content:
            assert not response.content, f"{request.method} {template} {status} has a body"
            return
        if response.status_code >= 400:
            assert response.headers["Content-Type"] == PROBLEM_TYPE
        media_type, documented_body = next(iter(content.items()))
        if not media_type.endswith("json"):
            # A file (the CSV export): the answer is of the documented type, as text.
            assert response.headers["Content-Type"].split(";")[0] == media_type
            assert documented_body["schema"] == {"type": "string"}
            response.content.decode("utf-8")
            return
        schema = documented_body["schema"]
        validator = Draft202012Validator({**schema, "components": self.document["components"]})
        errors = sorted(validator.iter_errors(response.json()), key=str)
        assert not errors, f"{request.method} {template} {status}: {errors[0]}"


@dataclass
class ApiClient:
    """`requests` against the live server with one token; every response schema-checked."""

    base: str
    secret: str | None
    checker: SchemaChecker

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.secret is not None:
            headers.setdefault("Authorization", f"Bearer {self.secret}")
        response = requests.request(method, self.base + path, headers=headers, timeout=30, **kwargs)
        self.checker.check(response)
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def checker(app: Flask) -> SchemaChecker:
    return SchemaChecker(spec(app))


def token_for(session: Session, admin: AdminUser, scope: str = "write", **options: Any) -> str:
    made = tokens.create_token(
        session,
        admin,
        name=options.pop("name", "billing"),
        scope=scope,
        actor=TEST_ACTOR,
        **options,
    )
    session.commit()
    return made.secret


@pytest.fixture
def superadmin(session: Session) -> AdminUser:
    return make_admin(session)


@pytest.fixture
def api(
    api_server: str, session: Session, superadmin: AdminUser, checker: SchemaChecker
) -> ApiClient:
    """A superadmin's write token."""
    return ApiClient(api_server, token_for(session, superadmin), checker)


@pytest.fixture
def client_for(api_server: str, checker: SchemaChecker) -> Any:
    """Make an ApiClient for any token secret (or none)."""

    def make(secret: str | None) -> ApiClient:
        return ApiClient(api_server, secret, checker)

    return make


__all__ = ["ApiClient", "make_domain", "token_for"]
