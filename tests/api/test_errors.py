"""Every /api/v1 error is an RFC 9457 problem with the offending field, and bad input (bad
bytes, NUL, huge numbers, deep nesting, huge bodies) is refused cleanly with nothing written."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.errors import ProviderError
from provider.models import Domain, Mailbox
from provider.services import provisioning, quota
from tests.api.conftest import PROBLEM_TYPE, ApiClient
from tests.conftest import make_domain


def _problem(response: requests.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM_TYPE
    body = response.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"]
    return body  # type: ignore[no-any-return]


def test_unknown_route_is_a_404_problem(api: ApiClient) -> None:
    _problem(api.get("/api/v1/nothing-here"), 404)


def test_wrong_method_is_a_405_problem_with_allow(api: ApiClient) -> None:
    response = api.request("PUT", "/api/v1/domains", json={})
    _problem(response, 405)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_a_form_body_is_415(api: ApiClient) -> None:
    _problem(api.post("/api/v1/domains", data={"name": "example.test"}), 415)


@pytest.mark.parametrize("body", [b"{bad", b"\xff\xfe", b'{"name": "a.test",}', b"[" * 100_000])
def test_a_body_that_is_not_json_is_400(api: ApiClient, session: Session, body: bytes) -> None:
    response = api.post("/api/v1/domains", data=body, headers={"Content-Type": "application/json"})
    assert _problem(response, 400)["errors"] == {"_body": ["Invalid JSON body."]}
    assert session.scalar(select(func.count()).select_from(Domain)) == 0


def test_deep_nesting_is_refused_before_any_parsing_of_fields(api: ApiClient) -> None:
    deep = "[" * 40 + "]" * 40
    response = api.post(
        "/api/v1/domains",
        data=f'{{"name": {deep}}}',
        headers={"Content-Type": "application/json"},
    )
    assert "nested deeper" in _problem(response, 422)["detail"]


def test_a_body_over_a_mebibyte_is_413(api: ApiClient) -> None:
    response = api.post("/api/v1/domains", json={"name": "a" * (1024 * 1024 + 10)})
    _problem(response, 413)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "bob\u0000@example.test"),
        ("contact_email", "x\u0000@y.test"),
        ("password", "p\u0000assphrase long"),
    ],
)
def test_a_nul_in_any_string_is_422_naming_the_field(
    api: ApiClient, session: Session, field: str, value: str
) -> None:
    make_domain(session, "example.test")
    body = {"address": "bob@example.test", "quota_gb": 8, "protocols": ["imap"], field: value}
    errors = _problem(api.post("/api/v1/mailboxes", json=body), 422)["errors"]
    assert errors == {field: ["may not contain a NUL character"]}
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 0


def _service_message(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except ProviderError as error:
        return error.message
    raise AssertionError("the service accepted it")


@pytest.mark.parametrize("given", [2, "7.99", 101, "1e400", "NaN", "lots", 10**400, True])
def test_quota_out_of_range_answers_422_with_the_forms_words(
    api: ApiClient, session: Session, given: object
) -> None:
    make_domain(session, "example.test")
    body = {"address": "bob@example.test", "quota_gb": given, "protocols": "imap"}
    if given == 10**400:  # a JSON number too big for a float
        data = (
            '{"address": "bob@example.test", "quota_gb": 1' + "0" * 400 + ', "protocols": "imap"}'
        )
        response = api.post(
            "/api/v1/mailboxes", data=data, headers={"Content-Type": "application/json"}
        )
        given = Decimal("1" + "0" * 400)
    else:
        response = api.post("/api/v1/mailboxes", json=body)
    errors = _problem(response, 422)["errors"]
    assert errors == {"quota_gb": [_service_message(lambda: quota.quota_bytes_from_gb(given))]}
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 0


@pytest.mark.parametrize("protocols", ["smtp", [], ["imap", "imap4"], "", ["IMAP", 7]])
def test_bad_protocols_answer_422_with_the_forms_words(
    api: ApiClient, session: Session, protocols: object
) -> None:
    make_domain(session, "example.test")
    body = {"address": "bob@example.test", "quota_gb": 8, "protocols": protocols}
    errors = _problem(api.post("/api/v1/mailboxes", json=body), 422)["errors"]
    expected = _service_message(lambda: provisioning.parse_protocols(protocols))  # type: ignore[arg-type]
    assert errors == {"protocols": [expected]}


@pytest.mark.parametrize(
    "address", ["no-at-sign", "Bob Smith@example.test", "a@@example.test", "x" * 400]
)
def test_bad_addresses_answer_422_on_address(
    api: ApiClient, session: Session, address: str
) -> None:
    make_domain(session, "example.test")
    body = {"address": address, "quota_gb": 8, "protocols": "imap"}
    errors = _problem(api.post("/api/v1/mailboxes", json=body), 422)["errors"]
    assert list(errors) == ["address"]  # type: ignore[arg-type]


def test_unknown_and_missing_fields_are_422_by_name(api: ApiClient) -> None:
    response = api.post("/api/v1/mailboxes", json={"address": "a@b.test", "colour": "red"})
    errors = _problem(response, 422)["errors"]
    assert set(errors) == {"colour", "quota_gb", "protocols"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "query", ["page=0", "per_page=501", "per_page=x", "page=99999999999999", "sort=password"]
)
def test_bad_paging_or_sorting_is_422(api: ApiClient, query: str) -> None:
    field = query.partition("=")[0]
    assert field in _problem(api.get(f"/api/v1/mailboxes?{query}"), 422)["errors"]  # type: ignore[operator]


def test_a_nul_in_the_query_or_path_is_refused(api: ApiClient) -> None:
    assert api.get("/api/v1/mailboxes?search=a%00b").status_code == 400
    assert api.get("/api/v1/mailboxes/a%00b@example.test").status_code == 400


@pytest.mark.parametrize("field", ["address", "password", "contact_email"])
def test_a_lone_surrogate_is_422_naming_the_field(
    api: ApiClient, session: Session, field: str
) -> None:
    make_domain(session, "example.test")
    body = {
        "address": "bob@example.test",
        "quota_gb": 8,
        "protocols": "imap",
        "password": "long passphrase ok",
    }
    raw = json.dumps(body)[:-1] + f', "{field}": "x\\ud800y"}}'
    response = api.post("/api/v1/mailboxes", data=raw, headers={"Content-Type": "application/json"})
    errors = _problem(response, 422)["errors"]
    assert errors == {field: ["is not valid Unicode text (a lone surrogate)"]}
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 0


def test_long_search_text_is_refused_or_answered(api: ApiClient) -> None:
    response = api.get("/api/v1/mailboxes?search=" + "a" * 5000)
    assert response.status_code in (200, 422)
