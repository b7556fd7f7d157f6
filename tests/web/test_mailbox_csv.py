"""The panel's CSV import (dry-run preview, then create) and export, CSRF and tenant limits."""

from __future__ import annotations

import base64
import csv
import io
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from provider.models import AuditEvent, Domain, Mailbox
from provider.services import auth, mailbox_csv
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, make_admin, make_domain, make_mailbox
from tests.web.conftest import count, text_of

GOOD = "a long enough passphrase"


def upload(client: FlaskClient, data: bytes, **extra: Any):
    return client.post(
        "/admin/mailboxes/import",
        data={"file": (io.BytesIO(data), "mailboxes.csv"), **extra},
        content_type="multipart/form-data",
    )


def upload_token(html: str) -> str:
    match = re.search(r'name="upload" value="([0-9a-f]{32})"', html)
    assert match, "no Create button on the page"
    return match.group(1)


def row_errors(html: str, line: int) -> str:
    match = re.search(rf'<tr data-line="{line}">(.*?)</tr>', html, re.S)
    assert match, f"no row for line {line}"
    return re.sub(r"<[^>]+>", "", match.group(1))


def test_pages_are_linked_and_need_a_login(app: Flask, client: FlaskClient, logged_in: FlaskClient):
    page = text_of(logged_in.get("/admin/mailboxes"))
    assert 'href="/admin/mailboxes/import"' in page and 'href="/admin/mailboxes/export"' in page
    form = text_of(logged_in.get("/admin/mailboxes/import"))
    assert 'enctype="multipart/form-data"' in form and 'name="file"' in form
    stranger = app.test_client()
    assert stranger.get("/admin/mailboxes/import").status_code == 302
    assert stranger.get("/admin/mailboxes/export").status_code == 302
    assert upload(stranger, b"a@x.test,8,imap,generate\n").status_code == 302


def test_dry_run_preview_then_create_shows_made_up_passwords_once(
    logged_in: FlaskClient, session: Session, app: Flask
):
    make_domain(session)
    data = (
        "address,quota,protocols,password\n"
        f"a@example.test,8,imap,{GOOD}\n"
        "b@example.test,9,pop3,generate\n"
    )
    preview = upload(logged_in, data.encode())
    html = text_of(preview)
    assert preview.status_code == 200
    assert "Dry run: 2 mailboxes would be created" in html
    assert "would create" in row_errors(html, 2) and "password made up" in row_errors(html, 3)
    assert count(session, Mailbox) == 0
    assert preview.headers["Cache-Control"] == "private, no-store"

    token = upload_token(html)
    done = logged_in.post("/admin/mailboxes/import/apply", data={"upload": token})
    page = text_of(done)
    assert done.status_code == 200 and "2 mailboxes created" in page
    assert done.headers["Cache-Control"] == "private, no-store"
    shown = re.search(r'<textarea id="passwords-csv"[^>]*>(.*?)</textarea>', page, re.S)
    assert shown
    rows = list(csv.reader(io.StringIO(shown.group(1))))
    assert rows[0] == ["address", "password"] and rows[1][0] == "b@example.test"
    assert auth.authenticate_mailbox(session, "b@example.test", rows[1][1]) is not None
    href = re.search(r'href="data:text/csv;base64,([^"]+)"', page)
    assert href and base64.b64decode(href.group(1)).decode() == shown.group(1).replace("&#34;", '"')
    assert count(session, Mailbox) == 2
    assert (
        session.scalar(select(AuditEvent.actor).where(AuditEvent.action == "mailbox.import"))
        == f"admin:{ADMIN_EMAIL}"
    )

    # The checked file is used once: a second Create finds it gone and creates nothing.
    again = logged_in.post("/admin/mailboxes/import/apply", data={"upload": token})
    assert "the checked file is gone" in text_of(again)
    assert count(session, Mailbox) == 2


def test_errors_are_shown_by_line_and_column_with_no_create_button(
    logged_in: FlaskClient, session: Session
):
    make_domain(session)
    data = f"a@example.test,8,imap,{GOOD}\nb@example.test,7,imap,short\n".encode()
    html = text_of(upload(logged_in, data))
    assert "1 of 2 rows have errors: nothing was created" in html
    errors = row_errors(html, 2)
    assert "quota: quota must be between 8 and 100 GB, not 7 GB" in errors
    assert "password: password must be at least 8 characters" in errors
    assert 'name="upload"' not in html
    assert count(session, Mailbox) == 0


def test_a_file_error_and_a_missing_file_are_shown(logged_in: FlaskClient, session: Session):
    html = text_of(upload(logged_in, b"\xff\xfe a,b\n"))
    assert "The file cannot be imported" in html and "line 1: the file is not UTF-8 text" in html
    missing = logged_in.post("/admin/mailboxes/import", data={}, content_type="multipart/form-data")
    assert "choose a CSV file" in text_of(missing)


def test_an_upload_token_of_another_shape_or_admin_finds_nothing(
    logged_in: FlaskClient, app: Flask, session: Session
):
    make_domain(session)
    token = upload_token(text_of(upload(logged_in, f"a@example.test,8,imap,{GOOD}\n".encode())))
    for bad in ("../../etc/passwd", "", "x" * 32):
        response = logged_in.post("/admin/mailboxes/import/apply", data={"upload": bad})
        assert "the checked file is gone" in text_of(response)
    make_admin(session, "second@example.com")
    other = app.test_client()
    other.post("/admin/login", data={"email": "second@example.com", "password": ADMIN_PASSWORD})
    stolen = other.post("/admin/mailboxes/import/apply", data={"upload": token})
    assert "the checked file is gone" in text_of(stolen)
    assert count(session, Mailbox) == 0


def test_an_address_taken_between_dry_run_and_create_stops_everything(
    logged_in: FlaskClient, session: Session
):
    make_domain(session)
    data = f"a@example.test,8,imap,{GOOD}\nb@example.test,8,imap,{GOOD}\n".encode()
    token = upload_token(text_of(upload(logged_in, data)))
    make_mailbox(session, "b@example.test")
    html = text_of(logged_in.post("/admin/mailboxes/import/apply", data={"upload": token}))
    assert "mailbox b@example.test already exists" in row_errors(html, 2)
    assert count(session, Mailbox) == 1


def test_too_big_an_upload_is_refused_before_it_is_read(logged_in: FlaskClient, session: Session):
    # Encoded here, in memory: the test client would spool a body this big to a temporary
    # file that it leaves open when the server answers without reading it.
    body = b"a" * (mailbox_csv.MAX_IMPORT_BYTES + 128 * 1024)
    boundary, payload = encode_multipart(
        MultiDict({"file": FileStorage(io.BytesIO(body), "big.csv")})
    )
    response = logged_in.post(
        "/admin/mailboxes/import",
        data=payload,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    assert response.status_code == 413
    assert "The file is too big" in text_of(response)


def test_domain_admins_import_and_export_only_their_domains(
    as_domain_admin: FlaskClient, session: Session, tenants: tuple[Domain, Domain]
):
    mine, other = tenants
    make_mailbox(session, "theirs@other.test")
    make_mailbox(session, "ours@mine.test")
    data = f"a@mine.test,8,imap,{GOOD}\nb@other.test,8,imap,{GOOD}\nc@none.test,8,imap,{GOOD}\n"
    html = text_of(upload(as_domain_admin, data.encode()))
    refused = "address: you can only use addresses in the domains you manage"
    assert refused in row_errors(html, 2) and refused in row_errors(html, 3)
    assert "would create" in row_errors(html, 1)

    exported = as_domain_admin.get("/admin/mailboxes/export")
    assert exported.status_code == 200
    assert exported.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="mailboxes.csv"' in exported.headers["Content-Disposition"]
    body = exported.get_data(as_text=True)
    assert "ours@mine.test" in body and "theirs@other.test" not in body
    assert as_domain_admin.get(f"/admin/mailboxes/export?domain={other.id}").status_code == 404
    assert as_domain_admin.get("/admin/mailboxes/export?domain=x").status_code == 404
    own = as_domain_admin.get(f"/admin/mailboxes/export?domain={mine.id}")
    assert 'filename="mailboxes-mine.test.csv"' in own.headers["Content-Disposition"]


def test_export_guards_formulas_and_round_trips_through_the_panel(
    logged_in: FlaskClient, session: Session
):
    make_domain(session)
    make_mailbox(session, "-dash@example.test", contact_email="=home@customer.test")
    exported = logged_in.get("/admin/mailboxes/export").get_data()
    assert b"'-dash@example.test" in exported and b"'=home@customer.test" in exported
    session.delete(session.scalar(select(Mailbox)))
    session.commit()
    token = upload_token(text_of(upload(logged_in, exported)))
    assert "1 mailbox created" in text_of(
        logged_in.post("/admin/mailboxes/import/apply", data={"upload": token})
    )
    assert logged_in.get("/admin/mailboxes/export").get_data() == exported


@pytest.fixture
def csrf_app(app_config: dict) -> dict:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def test_import_without_a_csrf_token_is_refused(csrf_app: dict, client: FlaskClient, session):
    make_admin(session)
    make_domain(session)
    page = text_of(client.get("/admin/login"))
    token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page)
    assert token
    client.post(
        "/admin/login",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token.group(1)},
    )
    refused = upload(client, f"a@example.test,8,imap,{GOOD}\n".encode())
    assert refused.status_code == 400
    form = text_of(client.get("/admin/mailboxes/import"))
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf
    accepted = upload(client, f"a@example.test,8,imap,{GOOD}\n".encode(), csrf_token=csrf.group(1))
    assert "Dry run: 1 mailbox would be created" in text_of(accepted)
    apply = client.post(
        "/admin/mailboxes/import/apply", data={"upload": upload_token(text_of(accepted))}
    )
    assert apply.status_code == 400 and count(session, Mailbox) == 0


def test_a_hash_from_another_server_is_shown_as_kept_and_a_bad_one_at_its_cell(
    logged_in: FlaskClient, session: Session
) -> None:
    make_domain(session)
    crypt = pytest.importorskip("crypt", reason="no crypt module on this Python")
    moved = "{SHA512-CRYPT}" + crypt.crypt("the old passphrase", "$6$abcdefgh")
    page = upload(logged_in, f"moved@example.test,8,imap,{moved}\n".encode())
    html = page.get_data(as_text=True)
    assert "hash kept ({SHA512-CRYPT})" in row_errors(html, 1)
    assert "{BLF-CRYPT}" in html  # the hint names the schemes
    logged_in.post("/admin/mailboxes/import/apply", data={"upload": upload_token(html)})
    session.expire_all()
    stored = session.scalar(select(Mailbox.password_hash))
    assert stored == moved
    bad = upload(logged_in, b"x@example.test,8,imap,{MD5}abc\n").get_data(as_text=True)
    assert "password: unknown password scheme {MD5}" in row_errors(bad, 1)
