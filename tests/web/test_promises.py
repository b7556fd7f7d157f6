"""The pages promise only what exists today: no webmail (issue 11). Sending and identities exist
since issue 12, sorting rules, vacation and forwarding since issue 13, so the pages may name
them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from provider.models import Mailbox
from tests.conftest import MAILBOX_PASSWORD, login, make_admin, make_domain, make_mailbox

# Features that do not exist yet (webmail) and "this website" as a way to read mail. Whole
# words, case-insensitive, in the visible text of each page. Sending and identities (issue 12),
# rules, vacation and forwarding (issue 13) exist.
PROMISES = re.compile(r"\b(webmail|web mail|this website)\b", re.I)


def visible_text(html: str) -> str:
    """The page's text as a reader sees it: no tags, attributes, scripts or the filter forms'
    own "Filter" buttons (a list filter is a real feature of the admin lists)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", html)
    return re.sub(r"\s+", " ", text)


def promises_in(response: Any) -> list[str]:
    assert response.status_code == 200, response.status_code
    return PROMISES.findall(visible_text(response.get_data(as_text=True)))


@pytest.fixture
def mailbox(session: Session) -> Mailbox:
    make_domain(session, "example.test", signup_enabled=True)
    return make_mailbox(session, "alice@example.test", protocols="both")


@pytest.mark.parametrize("url", ["/signup", "/terms", "/account/login", "/admin/login"])
def test_public_pages_promise_nothing_that_does_not_exist(
    client: FlaskClient, mailbox: Mailbox, url: str
):
    assert promises_in(client.get(url)) == []


def test_the_signup_done_page_promises_nothing_that_does_not_exist(
    app: Flask, client: FlaskClient, mailbox: Mailbox
):
    response = client.post(
        "/signup",
        data={
            "local_part": "bob",
            "domain": "example.test",
            "password": "a long enough pass phrase",
            "password_confirm": "a long enough pass phrase",
            "contact_email": "bob@elsewhere.test",
            "protocol": "both",
            "accept_terms": "y",
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    assert promises_in(client.get("/signup/done")) == []


def test_the_account_overview_promises_nothing_that_does_not_exist(
    client: FlaskClient, mailbox: Mailbox
):
    response = client.post(
        "/account/login", data={"email": mailbox.address, "password": MAILBOX_PASSWORD}
    )
    assert response.status_code == 302
    assert promises_in(client.get("/account/")) == []
    assert promises_in(client.get("/account/backups")) == []


def test_the_admin_mailbox_forms_promise_nothing_that_does_not_exist(
    client: FlaskClient, session: Session, mailbox: Mailbox
):
    make_admin(session)
    assert login(client).status_code == 302
    assert promises_in(client.get("/admin/mailboxes/new")) == []
    assert promises_in(client.get(f"/admin/mailboxes/{mailbox.id}")) == []


def test_the_pages_that_name_the_submission_server_promise_nothing_else(
    app: Flask, client: FlaskClient, mailbox: Mailbox
):
    app.config.update(SUBMISSION_SERVED=True, SUBMISSIONS_PORT=1465)
    response = client.post(
        "/account/login", data={"email": mailbox.address, "password": MAILBOX_PASSWORD}
    )
    assert response.status_code == 302
    overview = client.get("/account/")
    assert 'data-protocol="smtp"' in overview.get_data(as_text=True)
    assert promises_in(overview) == []
