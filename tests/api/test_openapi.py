"""The OpenAPI 3.1 document: served without a token, generated from the routes (every /api/v1
route is in it), and its schemas are valid JSON Schema 2020-12."""

from __future__ import annotations

import re

import requests
from flask import Flask
from jsonschema import Draft202012Validator


def test_served_as_openapi_3_1_without_a_token(api_server: str) -> None:
    response = requests.get(f"{api_server}/api/v1/openapi.json", timeout=10)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]


def test_every_api_route_is_documented(app: Flask, api_server: str) -> None:
    document = requests.get(f"{api_server}/api/v1/openapi.json", timeout=10).json()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule == "/api/v1/openapi.json":
            continue
        template = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert template in document["paths"], rule.rule
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operation = document["paths"][template].get(method.lower())
            assert operation is not None, (method, rule.rule)
            assert {"401", "403", "429"} <= set(operation["responses"]), (method, rule.rule)


def test_every_schema_is_valid_json_schema(app: Flask, api_server: str) -> None:
    document = requests.get(f"{api_server}/api/v1/openapi.json", timeout=10).json()
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises SchemaError naming the fault
