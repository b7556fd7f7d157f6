"""/api/v1/mailboxes/import and /export through the real server: the dry run's report, the
all-or-nothing apply with made-up passwords once, errors by line and column, the route's own
4 MiB bound, Idempotency-Key replays, domain admins, read tokens, and the CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Mailbox
from provider.services import auth, mailbox_csv, quota
from tests.api.conftest import ApiClient, token_for
from tests.conftest import make_admin, make_domain, make_mailbox

CSV = {"Content-Type": "text/csv; charset=utf-8"}
GOOD = "a long enough passphrase"
IMPORT = "/api/v1/mailboxes/import"
FILE = (
    "address,quota,protocols,password,plan,contact\r\n"
    f"carol@example.test,10,imap,{GOOD},paid,\r\n"
    "dave@example.test,12.5 GB,both,generate,trial,owner@customer.example\r\n"
    "erin@example.test,8,pop3,generate,,\r\n"
)


def _mailboxes(session: Session) -> list[str]:
    session.expire_all()
    return list(session.scalars(select(Mailbox.address).order_by(Mailbox.address)))


def _maildirs(app: Flask) -> list[str]:
    root = Path(app.config["DATA_DIR"]) / "mail"
    return sorted(
        f"{home.name}@{home.parent.name}"
        for home in root.glob("*/*")
        if (home / "Maildir").is_dir()
    )


def _verifies(session: Session, address: str, password: str) -> bool:
    session.expire_all()
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address))
    assert mailbox is not None
    return auth.verify_password(mailbox.password_hash, password).ok


def test_a_dry_run_reports_every_row_and_creates_nothing(
    app: Flask, api: ApiClient, session: Session
) -> None:
    make_domain(session, "example.test")
    response = api.post(f"{IMPORT}?dry_run=true", data=FILE, headers=CSV)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["ok"], report["applied"], report["created"], report["passwords"]) == (
        True,
        False,
        0,
        [],
    )
    assert [
        (r["line"], r["address"], r["outcome"], r["generate_password"]) for r in report["rows"]
    ] == [
        (2, "carol@example.test", "create", False),
        (3, "dave@example.test", "create", True),
        (4, "erin@example.test", "create", True),
    ]
    assert _mailboxes(session) == [] and _maildirs(app) == []


def test_a_dry_run_of_bad_rows_is_200_with_errors_by_line_and_column(
    api: ApiClient, session: Session
) -> None:
    make_mailbox(session, "taken@example.test")
    text = (
        "address,quota,protocols,password\r\n"
        "ok@example.test,10,imap,generate\r\n"
        "low@example.test,7,imap,generate\r\n"
        "taken@example.test,10,smtp,generate\r\n"
    )
    report = api.post(f"{IMPORT}?dry_run=1", data=text, headers=CSV).json()
    assert report["ok"] is False and report["applied"] is False
    assert [r["outcome"] for r in report["rows"]] == ["create", "error", "error"]
    assert report["rows"][1]["errors"] == [
        {"line": 3, "column": "quota", "message": "quota must be between 8 and 100 GB, not 7 GB"}
    ]
    assert {(e["column"], e["message"]) for e in report["rows"][2]["errors"]} == {
        ("address", "mailbox taken@example.test already exists"),
        ("protocols", "unknown protocol 'smtp': choose imap, pop3 or both"),
    }


def test_apply_creates_every_mailbox_and_shows_made_up_passwords_once(
    app: Flask, api: ApiClient, session: Session
) -> None:
    make_domain(session, "example.test")
    response = api.post(IMPORT, data=FILE, headers=CSV)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["applied"], body["ok"], body["created"]) == (True, True, 3)
    assert [m["address"] for m in body["mailboxes"]] == [
        "carol@example.test",
        "dave@example.test",
        "erin@example.test",
    ]
    dave = body["mailboxes"][1]
    assert dave["quota_bytes"] == int(12.5 * quota.GIB) and dave["protocols"] == ["imap", "pop3"]
    assert (dave["plan"], dave["contact_email"]) == ("trial", "owner@customer.example")
    made_up = {p["address"]: p["password"] for p in body["passwords"]}
    assert sorted(made_up) == ["dave@example.test", "erin@example.test"]
    for address, password in made_up.items():
        assert _verifies(session, address, password)
    assert _verifies(session, "carol@example.test", GOOD)
    assert _maildirs(app) == ["carol@example.test", "dave@example.test", "erin@example.test"]
    # The passwords are never shown again: not in the mailbox, not in the export.
    shown = api.get("/api/v1/mailboxes/dave@example.test").text
    exported = api.get("/api/v1/mailboxes/export").text
    assert all(p not in shown and p not in exported for p in made_up.values())
    summary = session.scalar(select(AuditEvent).where(AuditEvent.action == "mailbox.import"))
    assert summary is not None and summary.actor.startswith("token:billing (")


def test_one_bad_row_is_422_by_line_and_column_and_nothing_is_created(
    app: Flask, api: ApiClient, session: Session
) -> None:
    make_domain(session, "example.test")
    text = FILE + "frank@example.test,500,imap,generate,,\r\nbad@nowhere.test,10,imap,short,,\r\n"
    response = api.post(IMPORT, data=text, headers=CSV)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"] == {
        "line 5, quota": ["quota must be between 8 and 100 GB, not 500 GB"],
        "line 6, address": ["domain nowhere.test is not hosted here; add it first"],
        "line 6, password": ["password must be at least 8 characters"],
    }
    assert problem["detail"] == "2 of 5 rows have errors; nothing was created"
    assert [r["outcome"] for r in problem["report"]["rows"]] == ["create"] * 3 + ["error"] * 2
    assert problem["report"]["applied"] is False and problem["report"]["passwords"] == []
    assert _mailboxes(session) == [] and _maildirs(app) == []


def test_a_file_that_cannot_be_read_is_422_naming_its_line(
    api: ApiClient, session: Session
) -> None:
    make_domain(session, "example.test")
    cases = [
        (b"address,quota,protocols,password\r\nx@example.test,8,imap,caf\xe9\r\n", "line 2"),
        (b'x@example.test,8,"imap\r\n', "line 1"),
        (b"address,quota,colour,password,protocols\r\n", "line 1"),
        (b"   \r\n", "file"),
        (b"", "file"),
    ]
    for data, where in cases:
        response = api.post(IMPORT, data=data, headers=CSV)
        assert response.status_code == 422, (data, response.text)
        assert list(response.json()["errors"]) == [where], (data, response.json())
        dry = api.post(f"{IMPORT}?dry_run=true", data=data, headers=CSV)
        assert dry.status_code == 200 and dry.json()["file_errors"], data
    assert _mailboxes(session) == []


def test_hostile_cells_are_errors_of_their_cell(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    text = (
        "address,quota,protocols,password,plan,contact\r\n"
        "nul\x00@example.test,8,imap,generate,,\r\n"
        "ok@example.test,8,imap,generate,,a\tb@customer.example\r\n"
        f"long@example.test,{'9' * 5000},imap,generate,,\r\n"
    )
    problem = api.post(IMPORT, data=text.encode(), headers=CSV).json()
    assert set(problem["errors"]) == {"line 2, address", "line 3, contact", "line 4, quota"}
    assert "control characters" in problem["errors"]["line 2, address"][0]
    assert _mailboxes(session) == []


def test_only_csv_is_taken_and_up_to_four_mebibytes(api: ApiClient, session: Session) -> None:
    make_domain(session, "example.test")
    as_json = api.post(IMPORT, json={"address": "x@example.test"})
    assert as_json.status_code == 415 and "text/csv" in as_json.json()["detail"]
    form = api.post(IMPORT, data={"file": FILE})
    assert form.status_code == 415
    also_csv = api.post(
        f"{IMPORT}?dry_run=true", data=FILE, headers={"Content-Type": "application/csv"}
    )
    assert also_csv.status_code == 200
    # Over the JSON routes' 1 MiB and under the import's 4 MiB: read, and refused by the
    # service for its row count, not by its size.
    row = "u{:05d}" + "x" * 50 + "@example.test,8,imap,generate,paid," + "c" * 60 + "@c.example\r\n"
    big = "".join(row.format(i) for i in range(mailbox_csv.MAX_IMPORT_ROWS + 1))
    assert 1024 * 1024 < len(big) < mailbox_csv.MAX_IMPORT_BYTES
    counted = api.post(f"{IMPORT}?dry_run=true", data=big, headers=CSV)
    assert counted.status_code == 200, counted.text[:300]
    assert "more than 10000 rows" in counted.json()["file_errors"][0]["message"]
    too_big = api.post(IMPORT, data=b"x" * (mailbox_csv.MAX_IMPORT_BYTES + 1), headers=CSV)
    assert too_big.status_code == 413
    assert str(mailbox_csv.MAX_IMPORT_BYTES) in too_big.json()["detail"]
    assert _mailboxes(session) == []


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"a" * min(size, total - sent)
        sent += size


def test_a_chunked_body_without_length_stops_at_the_routes_bound(
    api: ApiClient, session: Session
) -> None:
    """No Content-Length to refuse up front: reading stops past the bound (4 MiB here, the
    JSON routes' 1 MiB elsewhere), never buffering the rest."""
    make_domain(session, "example.test")
    csv_body = api.post(IMPORT, data=_chunks(mailbox_csv.MAX_IMPORT_BYTES + 100_000), headers=CSV)
    assert csv_body.status_code == 413, csv_body.text
    json_body = api.post(
        "/api/v1/domains",
        data=_chunks(1024 * 1024 + 100_000),
        headers={"Content-Type": "application/json"},
    )
    assert json_body.status_code == 413, json_body.text
    fits = api.post(
        f"{IMPORT}?dry_run=true", data=iter([FILE[:40].encode(), FILE[40:].encode()]), headers=CSV
    )
    assert fits.status_code == 200 and len(fits.json()["rows"]) == 3


def test_an_idempotency_key_replays_the_import_instead_of_creating_twice(
    api: ApiClient, session: Session
) -> None:
    make_domain(session, "example.test")
    key = {**CSV, "Idempotency-Key": "import-2026-12-07"}
    first = api.post(IMPORT, data=FILE, headers=key)
    again = api.post(IMPORT, data=FILE, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # the same made-up passwords, nothing made anew
    assert len(_mailboxes(session)) == 3
    assert session.scalar(select(func.count()).where(AuditEvent.action == "mailbox.import")) == 1
    # The same key for another request (a dry run is another URL) is refused.
    other = api.post(f"{IMPORT}?dry_run=true", data=FILE, headers=key)
    assert other.status_code == 422 and list(other.json()["errors"]) == ["Idempotency-Key"]
    # Without a key the same file is simply refused: every address is taken now.
    unkeyed = api.post(IMPORT, data=FILE, headers=CSV)
    assert unkeyed.status_code == 422 and len(unkeyed.json()["errors"]) == 3


def test_a_domain_admins_token_imports_and_exports_its_domains_only(
    client_for: Any, session: Session
) -> None:
    mine = make_domain(session, "mine.test")
    make_mailbox(session, "victim@theirs.test")
    make_mailbox(session, "me@mine.test")
    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[mine])
    client: ApiClient = client_for(token_for(session, tenant))
    text = "new@mine.test,8,imap,generate\r\nsneaky@theirs.test,8,imap,generate\r\n"
    response = client.post(IMPORT, data=text, headers=CSV)
    assert response.status_code == 422
    assert response.json()["errors"] == {
        "line 2, address": ["you can only use addresses in the domains you manage"]
    }
    # A domain that is not hosted at all reads the same (no oracle).
    nowhere = client.post(
        f"{IMPORT}?dry_run=true", data="x@nowhere.test,8,imap,generate\r\n", headers=CSV
    )
    assert nowhere.json()["rows"][0]["errors"][0]["message"] == (
        "you can only use addresses in the domains you manage"
    )
    made = client.post(IMPORT, data="new@mine.test,8,imap,generate\r\n", headers=CSV)
    assert made.status_code == 201 and [m["address"] for m in made.json()["mailboxes"]] == [
        "new@mine.test"
    ]
    exported = client.get("/api/v1/mailboxes/export")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["address"] for r in rows] == ["me@mine.test", "new@mine.test"]
    assert client.get("/api/v1/mailboxes/export?domain=theirs.test").status_code == 404
    assert client.get("/api/v1/mailboxes/export?domain=mine.test").status_code == 200
    assert "victim" not in exported.text


def test_a_read_token_exports_but_cannot_import(
    client_for: Any, session: Session, superadmin: Any
) -> None:
    make_mailbox(session, "alice@example.test")
    reader: ApiClient = client_for(token_for(session, superadmin, scope="read", name="ro"))
    assert reader.post(IMPORT, data=FILE, headers=CSV).status_code == 403
    assert reader.post(f"{IMPORT}?dry_run=true", data=FILE, headers=CSV).status_code == 403
    assert reader.get("/api/v1/mailboxes/export").status_code == 200
    assert _mailboxes(session) == ["alice@example.test"]


def test_export_is_the_imports_columns_as_a_csv_download(
    api: ApiClient, runner: Any, session: Session
) -> None:
    make_mailbox(session, "zed@example.test", quota_gb=12)
    make_mailbox(session, "-dash@example.test")
    make_mailbox(session, "amy@example.org")
    response = api.get("/api/v1/mailboxes/export")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == 'attachment; filename="mailboxes.csv"'
    assert response.headers["Cache-Control"] == "no-store"
    assert response.text.count("\r\n") == 4  # CRLF, as spreadsheets write
    cli = runner.invoke(args=["mailbox", "export"]).output  # (the runner reads \r\n as \n)
    assert response.text.replace("\r\n", "\n") == cli.replace("\r\n", "\n")  # the CLI's file
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == list(mailbox_csv.COLUMNS)
    assert [r[0] for r in rows[1:]] == [
        "'-dash@example.test",
        "amy@example.org",
        "zed@example.test",
    ]
    assert rows[3][1:4] == ["12", "imap", "generate"]
    one = api.get("/api/v1/mailboxes/export?domain=example.org")
    assert one.headers["Content-Disposition"] == 'attachment; filename="mailboxes-example.org.csv"'
    assert [r[0] for r in csv.reader(io.StringIO(one.text))][1:] == ["amy@example.org"]
    missing = api.get("/api/v1/mailboxes/export?domain=nowhere.test")
    assert missing.status_code == 404


def test_imported_mailboxes_are_announced_to_webhooks_like_created_ones(
    api: ApiClient, session: Session
) -> None:
    make_domain(session, "example.test")
    hook = {"url": "https://billing.example/in", "events": ["mailbox.created"]}
    assert api.post("/api/v1/webhooks", json=hook).status_code == 201
    bad = FILE + "x@nowhere.test,8,imap,generate,,\r\n"
    assert api.post(IMPORT, data=bad, headers=CSV).status_code == 422
    assert api.get("/api/v1/webhook-deliveries").json()["total"] == 0  # nothing made, no event
    assert api.post(IMPORT, data=FILE, headers=CSV).status_code == 201
    deliveries = api.get("/api/v1/webhook-deliveries").json()["items"]
    assert sorted(d["object"] for d in deliveries) == [
        "mailbox:carol@example.test",
        "mailbox:dave@example.test",
        "mailbox:erin@example.test",
    ]
    assert {d["type"] for d in deliveries} == {"mailbox.created"}


def _migrated(password: str) -> str:
    """A {SSHA512} hash, as a Dovecot passwd-file holds it."""
    import base64
    import hashlib

    digest = hashlib.sha512(password.encode() + b"saltsalt").digest()
    return "{SSHA512}" + base64.b64encode(digest + b"saltsalt").decode()


def test_hashes_from_another_server_are_kept_and_a_bad_one_is_422_at_its_cell(
    app: Flask, api: ApiClient, session: Session
) -> None:
    make_domain(session, "example.test")
    argon2 = auth.hash_password("moved too", auth.HashParams(8192, 1, 1))
    text = (
        "address,quota,protocols,password\r\n"
        f"moved@example.test,8,imap,{_migrated('the old passphrase')}\r\n"
        f'argon@example.test,8,imap,"{argon2}"\r\n'
    )
    dry = api.post(IMPORT + "?dry_run=true", data=text, headers=CSV).json()
    assert [row["password_scheme"] for row in dry["rows"]] == ["{SSHA512}", "{ARGON2ID}"]
    bad = api.post(IMPORT, data=text + "x@example.test,8,imap,{SHA512-CRYPT}$6$x\r\n", headers=CSV)
    assert bad.status_code == 422 and list(bad.json()["errors"]) == ["line 4, password"]
    assert "not a valid {SHA512-CRYPT} hash" in bad.json()["errors"]["line 4, password"][0]
    applied = api.post(IMPORT, data=text, headers=CSV)
    assert applied.status_code == 201, applied.text
    assert applied.json()["passwords"] == []
    assert _verifies(session, "moved@example.test", "the old passphrase")
    assert _verifies(session, "argon@example.test", "moved too")
    assert "{SHA512-CRYPT}" in api.get("/api/v1/openapi.json").text  # the body's description
