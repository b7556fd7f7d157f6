"""Mailboxes from and to CSV in the panel: upload with a dry-run preview, apply, export."""

from __future__ import annotations

import base64
import re
import secrets
import time
from pathlib import Path

from flask import Flask, abort, current_app, make_response, render_template, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from provider.errors import ProviderError
from provider.extensions import db
from provider.services import auth, mailbox_csv
from provider.services.mailbox_csv import ImportReport
from provider.web.admin import bp
from provider.web.admin.access import actor, current_admin, get_domain_or_404, int_arg, scope

IMPORT_ENDPOINTS = frozenset({"admin.import_mailboxes", "admin.apply_mailbox_import"})
# The request body may carry the file plus the multipart framing and the CSRF token.
MAX_UPLOAD_BODY = mailbox_csv.MAX_IMPORT_BYTES + 64 * 1024
# A checked file waits this long for "Create" before it is removed.
UPLOAD_KEEP_SECONDS = 3600
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}$")


def _limit_upload_size() -> None:
    """Bound the body of an import before anything (the CSRF check) parses it: a bigger one
    answers 413 and never reaches the disk."""
    if request.endpoint in IMPORT_ENDPOINTS:
        request.max_content_length = MAX_UPLOAD_BODY


@bp.record_once
def _install_upload_limit(state: BlueprintSetupState) -> None:
    app: Flask = state.app
    # First of the app's before-request functions: CSRFProtect's reads the form.
    app.before_request_funcs.setdefault(None, []).insert(0, _limit_upload_size)


@bp.errorhandler(RequestEntityTooLarge)
def upload_too_large(error: RequestEntityTooLarge) -> tuple[str, int]:
    return render_template(
        "admin/error.html",
        code=413,
        title="The file is too big",
        message=(
            f"An import takes at most {mailbox_csv.MAX_IMPORT_BYTES} bytes and "
            f"{mailbox_csv.MAX_IMPORT_ROWS} rows: split the file."
        ),
    ), 413


def _uploads() -> Path:
    return Path(current_app.config["DATA_DIR"]) / "imports"


def _upload_path(token: str) -> Path | None:
    """Where the checked file of this admin waits; None for a token of the wrong shape."""
    if not UPLOAD_NAME.match(token):
        return None
    return _uploads() / f"{current_admin().id}-{token}.csv"


def _keep_upload(data: bytes) -> str:
    """Keep a checked file for the apply step (never in the page or the cookie: up to 4 MiB);
    files left over an hour are removed on the way."""
    directory = _uploads()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cutoff = time.time() - UPLOAD_KEEP_SECONDS
    for old in directory.glob("*.csv"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    token = secrets.token_hex(16)
    path = _upload_path(token)
    assert path is not None
    path.write_bytes(data)
    path.chmod(0o600)
    return token


def _render(report: ImportReport | None = None, *, upload: str = "", status: int = 200) -> Response:
    response = make_response(
        render_template(
            "admin/mailboxes/import.html",
            report=report,
            upload=upload,
            max_rows=mailbox_csv.MAX_IMPORT_ROWS,
            max_bytes=mailbox_csv.MAX_IMPORT_BYTES,
            columns=mailbox_csv.COLUMNS,
            hash_schemes=auth.IMPORTABLE_SCHEMES,
            domains=current_admin().domains if scope() is not None else None,
        ),
        status,
    )
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.route("/mailboxes/import", methods=["GET", "POST"])
def import_mailboxes() -> Response:
    """GET: the upload form. POST (field `file`): the dry run, every row's outcome."""
    if request.method == "GET":
        return _render()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        report = ImportReport(file_errors=[mailbox_csv.RowError(0, None, "choose a CSV file")])
        return _render(report)
    data = upload.stream.read(mailbox_csv.MAX_IMPORT_BYTES + 1)
    report = mailbox_csv.check_import(db.session, data, scope=scope())
    db.session.rollback()
    return _render(report, upload=_keep_upload(data) if report.ok else "")


@bp.post("/mailboxes/import/apply")
def apply_mailbox_import() -> Response:
    """POST (field `upload`, from the dry run): create every mailbox of the checked file."""
    path = _upload_path(request.form.get("upload", ""))
    if path is None or not path.is_file():
        report = ImportReport(
            file_errors=[
                mailbox_csv.RowError(
                    0, None, "the checked file is gone (kept for an hour); upload it again"
                )
            ]
        )
        return _render(report)
    data = path.read_bytes()
    try:
        report = mailbox_csv.import_mailboxes(db.session, data, scope=scope(), actor=actor())
        if report.applied:
            db.session.commit()
    except ProviderError as exc:
        db.session.rollback()
        report = ImportReport(file_errors=[mailbox_csv.RowError(0, None, exc.message)])
    if not report.applied:
        # Something changed since the dry run (an address taken meanwhile): show it all again.
        db.session.rollback()
        return _render(report)
    path.unlink(missing_ok=True)
    passwords_csv = report.passwords_csv()
    response = make_response(
        render_template(
            "admin/mailboxes/imported.html",
            report=report,
            passwords_csv=passwords_csv,
            passwords_href="data:text/csv;base64,"
            + base64.b64encode(passwords_csv.encode()).decode(),
        )
    )
    response.headers["Cache-Control"] = "private, no-store"  # the passwords are in it
    return response


@bp.get("/mailboxes/export")
def export_mailboxes() -> Response:
    """The admin's mailboxes (of one domain with `?domain=ID`) as a CSV download."""
    domain_ids = scope()
    name = "mailboxes"
    if request.args.get("domain"):
        domain_id = int_arg("domain")
        if domain_id is None:
            abort(404)
        domain = get_domain_or_404(domain_id)
        domain_ids, name = {domain.id}, f"mailboxes-{domain.name}"
    text = mailbox_csv.export_csv(db.session, domain_ids=domain_ids)
    response = make_response(text)
    response.headers["Content-Type"] = "text/csv; charset=utf-8"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    response.headers["Cache-Control"] = "private, no-store"
    return response
