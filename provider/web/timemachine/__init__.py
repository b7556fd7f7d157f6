"""The time machine pages, shared by the admin panel and the mailbox owner's portal (/account).

Each front end resolves *which* mailbox (the admin's scope check, or the owner's own session)
and builds a `TimeMachine`; everything below works on that one mailbox only, so a snapshot id
or UID typed into a URL can never reach another mailbox's backups.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NoReturn

from flask import abort, current_app, flash, redirect, render_template, request, send_file, url_for
from werkzeug.wrappers import Response

from provider.backup.manifest import Manifest, ManifestMessage
from provider.errors import InvalidInput, NotFound, ProviderError
from provider.extensions import db
from provider.models import Mailbox
from provider.services import backups
from provider.services.audit import Actor
from provider.services.reports import Page
from provider.web.timemachine.forms import RestoreForm, SearchForm, SnapshotNowForm
from provider.web.timemachine.message import render_message

INBOX = "INBOX"
ALL_FOLDERS = "*"  # never a folder name: the mail store refuses "*" in names
SHORTFALL_NAMES_SHOWN = 5


@dataclass(frozen=True)
class TimeMachine:
    """One mailbox's time machine as one front end shows it.

    `endpoint_prefix` + a page name is the Flask endpoint ("admin.mailbox_" + "backups"),
    `url_values` the arguments every URL of that front end needs, `template_dir` the folder of
    its thin page templates (its own layout around the shared blocks in timemachine/).
    """

    mailbox: Mailbox
    actor: Actor
    endpoint_prefix: str
    template_dir: str
    url_values: Mapping[str, Any] = field(default_factory=dict)
    for_owner: bool = False  # wording: "your mailbox" rather than the address

    def url(self, page: str, **values: Any) -> str:
        return url_for(f"{self.endpoint_prefix}{page}", **self.url_values, **values)

    def render(self, template: str, /, **context: Any) -> str:
        return render_template(
            f"{self.template_dir}/{template}.html", tm=self, mailbox=self.mailbox, **context
        )


@dataclass(frozen=True)
class MessageRow:
    """A manifest entry with its internal date as a datetime (UTC) for the templates, and
    whether the live mailbox has lost it (no message with the same content anywhere now)."""

    entry: ManifestMessage
    received: datetime
    gone: bool = False

    @classmethod
    def of(cls, entry: ManifestMessage, present: set[str] | None = None) -> MessageRow:
        gone = present is not None and entry.sha256 not in present
        return cls(entry, datetime.fromtimestamp(entry.internal_date, UTC), gone)


@dataclass(frozen=True)
class FolderRow:
    name: str
    special_use: str | None
    messages: int
    bytes: int
    gone: int = 0


# --- reading a snapshot ---------------------------------------------------------------------


def _fail(tm: TimeMachine, error: ProviderError) -> NoReturn:
    """A missing snapshot, folder or message is a 404 (as another mailbox's would be); anything
    else (a damaged snapshot, an unreadable object) goes back to the list with its message."""
    if isinstance(error, NotFound | InvalidInput):
        abort(404)
    flash(error.message, "error")
    abort(redirect(tm.url("backups")))


def load_manifest(tm: TimeMachine, snapshot_id: str) -> Manifest:
    try:
        return backups.load_manifest(db.session, tm.mailbox.address, snapshot_id)
    except ProviderError as error:
        _fail(tm, error)


def folder_rows(manifest: Manifest, present: set[str] | None = None) -> list[FolderRow]:
    """The snapshot's folders, INBOX first, with their message counts, sizes and how many of
    their messages are gone from the mailbox now."""
    counts: dict[str, list[int]] = {}
    for entry in manifest.messages:
        totals = counts.setdefault(entry.folder, [0, 0, 0])
        totals[0] += 1
        totals[1] += entry.size
        if present is not None and entry.sha256 not in present:
            totals[2] += 1
    rows = [
        FolderRow(f.name, f.special_use, *counts.get(f.name, [0, 0, 0])) for f in manifest.folders
    ]
    return sorted(rows, key=lambda row: (row.name != INBOX, row.name.casefold()))


def find_folder(manifest: Manifest, folder: str) -> str | None:
    """The snapshot's spelling of a folder name (INBOX in any case), or None."""
    if folder.upper() == INBOX:
        return INBOX
    return folder if folder in {f.name for f in manifest.folders} else None


def search_messages(
    messages: Iterable[ManifestMessage],
    *,
    folder: str | None = None,
    subject: str = "",
    sender: str = "",
    since: date | None = None,
    until: date | None = None,
    present: set[str] | None = None,
    only_gone: bool = False,
) -> list[MessageRow]:
    """Messages of one folder (or all) whose subject and sender contain the given text
    (case-insensitive) and whose internal date (UTC day) is within [since, until]; newest first.
    With `present` (the mailbox's digests now) rows say whether they are gone; `only_gone`
    keeps those alone."""
    subject, sender = subject.strip().casefold(), sender.strip().casefold()
    found = []
    for entry in messages:
        if folder is not None and entry.folder != folder:
            continue
        if subject and subject not in entry.subject.casefold():
            continue
        if sender and sender not in entry.sender.casefold():
            continue
        row = MessageRow.of(entry, present)
        day = row.received.date()
        if (since and day < since) or (until and day > until):
            continue
        if only_gone and not row.gone:
            continue
        found.append(row)
    found.sort(key=lambda row: (row.entry.internal_date, row.entry.uid), reverse=True)
    return found


def _page_of(rows: Sequence[MessageRow]) -> Page[MessageRow]:
    per_page = int(current_app.config["PAGE_SIZE"])
    pages = max(1, math.ceil(len(rows) / per_page))
    number = min(max(request.args.get("page", 1, type=int) or 1, 1), pages)
    start = (number - 1) * per_page
    return Page(list(rows[start : start + per_page]), len(rows), number, per_page)


def _entry_or_404(manifest: Manifest, folder: str, uid: int) -> ManifestMessage:
    name = find_folder(manifest, folder)
    for entry in manifest.messages:
        if entry.folder == name and entry.uid == uid:
            return entry
    abort(404)


# --- pages ----------------------------------------------------------------------------------


def snapshots_page(tm: TimeMachine) -> str:
    """The snapshot list with "take a snapshot now", and the restore history (or the POP3-only
    note)."""
    address = tm.mailbox.address
    per_hour = backups.owner_snapshots_per_hour()
    left = backups.owner_snapshots_left(db.session, address, tm.actor) if tm.for_owner else None
    return tm.render(
        "snapshots",
        snapshots=backups.list_snapshots(db.session, address),
        history=backups.restore_history(db.session, address),
        backed_up=tm.mailbox.imap_enabled,
        retention_days=backups.retention_days(),
        snapshot_form=SnapshotNowForm(formdata=None),
        can_snapshot=tm.mailbox.imap_enabled and (not tm.for_owner or per_hour > 0),
        owner_per_hour=per_hour,
        owner_left=left,
        nightly_at=_nightly_backup_time(),
    )


def _nightly_backup_time() -> datetime | None:
    """When the scheduled backup job runs next (None when it is not scheduled)."""
    from jobs.scheduler import get_job, next_run
    from provider.services import clock

    job = get_job("backup")
    if job is None:
        return None
    try:
        return next_run(job.cron(current_app._get_current_object()), clock.now())  # type: ignore[attr-defined]
    except ValueError:
        return None


def snapshot_action(tm: TimeMachine) -> Response:
    """POST: take a snapshot now (owners within their hourly allowance), audited."""
    if not SnapshotNowForm().validate_on_submit():
        flash("The form expired: reload the page and try again.", "error")
        return redirect(tm.url("backups"))
    try:
        run = backups.snapshot_now(
            db.session, tm.mailbox.address, actor=tm.actor, rate_limited=tm.for_owner
        )
    except ProviderError as error:
        db.session.rollback()
        flash(error.message, "error")
        return redirect(tm.url("backups"))
    plural = "message" if run.messages == 1 else "messages"
    flash(f"Snapshot taken: {run.messages} {plural}.", "success")
    assert run.snapshot is not None
    return redirect(tm.url("backup_snapshot", snapshot_id=run.snapshot))


def snapshot_page(
    tm: TimeMachine, snapshot_id: str, restore_form: RestoreForm | None = None
) -> str:
    """One snapshot, read-only: its folders, a folder's messages (searchable), restore buttons."""
    manifest = load_manifest(tm, snapshot_id)
    wanted = request.args.get("folder", INBOX)
    if restore_form is not None and restore_form.folder.data:
        wanted = restore_form.folder.data
    folder = None if wanted == ALL_FOLDERS else find_folder(manifest, wanted)
    if folder is None and wanted != ALL_FOLDERS:
        abort(404)
    search = SearchForm(request.args)
    present = backups.present_digests(db.session, tm.mailbox.address, manifest)
    only_gone = bool(search.gone.data)
    rows: list[MessageRow] = []
    if search.validate():
        rows = search_messages(
            manifest.messages,
            folder=folder,
            subject=search.q.data or "",
            sender=search.sender.data or "",
            since=search.since.data,
            until=search.until.data,
            present=present,
            only_gone=only_gone,
        )
    searching = any(request.args.get(name) for name in ("q", "sender", "since", "until"))
    gone_total = sum(1 for entry in manifest.messages if entry.sha256 not in present)
    if restore_form is None:
        restore_form = RestoreForm(formdata=None, data={"folder": folder or ""})
    return tm.render(
        "snapshot",
        snapshot=manifest,
        folders=folder_rows(manifest, present),
        folder=folder,
        all_folders=ALL_FOLDERS,
        search=search,
        searching=searching,
        only_gone=only_gone,
        gone_total=gone_total,
        page=_page_of(rows),
        restore_form=restore_form,
    )


def message_page(tm: TimeMachine, snapshot_id: str, uid: int) -> str:
    """A message's headers and text (HTML only ever as text), attachments by name."""
    manifest = load_manifest(tm, snapshot_id)
    entry = _entry_or_404(manifest, request.args.get("folder", INBOX), uid)
    try:
        data = backups.read_message(db.session, tm.mailbox.address, snapshot_id, entry.folder, uid)
    except ProviderError as error:
        _fail(tm, error)
    present = backups.present_digests(db.session, tm.mailbox.address, manifest)
    return tm.render(
        "message",
        snapshot=manifest,
        message=MessageRow.of(entry, present),
        view=render_message(data),
        restore_form=RestoreForm(formdata=None, data={"folder": entry.folder}),
    )


def eml_filename(entry: ManifestMessage) -> str:
    """A file name from the subject (letters, digits, spaces, dashes), or message-<uid>."""
    stem = re.sub(r"[^\w\- ]+", "", entry.subject, flags=re.UNICODE)
    stem = " ".join(stem.split())[:80].strip()
    return f"{stem or f'message-{entry.uid}'}.eml"


def eml_download(tm: TimeMachine, snapshot_id: str, uid: int) -> Response:
    """The message's exact bytes as an attachment (message/rfc822), never shown inline."""
    manifest = load_manifest(tm, snapshot_id)
    entry = _entry_or_404(manifest, request.args.get("folder", INBOX), uid)
    try:
        data = backups.read_message(db.session, tm.mailbox.address, snapshot_id, entry.folder, uid)
    except ProviderError as error:
        _fail(tm, error)
    response = send_file(
        io.BytesIO(data),
        mimetype="message/rfc822",
        as_attachment=True,
        download_name=eml_filename(entry),
        max_age=0,
    )
    response.headers["Cache-Control"] = "private, no-store"
    return response


# --- restore --------------------------------------------------------------------------------


def report_messages(report: backups.RestoreReport, for_owner: bool) -> list[tuple[str, str]]:
    """The restore report as (flash category, sentence) pairs."""
    from provider.web.admin.filters import human_size

    messages: list[tuple[str, str]] = []
    plural = "message" if report.restored == 1 else "messages"
    if report.restored:
        text = f"Restored {report.restored} {plural} ({human_size(report.restored_bytes)})"
        if report.folders_created:
            text += "; folders created again: " + ", ".join(report.folders_created)
        messages.append(("success", text + "."))
    if report.skipped:
        were = "was" if report.skipped == 1 else "were"
        lead = "Nothing to restore: " if not report.restored and not report.shortfall else ""
        messages.append(
            ("info", f"{lead}{report.skipped} already present in the mailbox {were} left alone.")
        )
    if report.shortfall:
        names = [
            f"“{m.get('subject') or '(no subject)'}” ({m.get('folder')})"
            for m in report.shortfall_messages[:SHORTFALL_NAMES_SHOWN]
        ]
        more = report.shortfall - len(names)
        listed = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        advice = (
            "Make room (empty the Trash or delete old mail), then restore again"
            if for_owner
            else "Raise the quota or make room, then restore again"
        )
        messages.append(
            (
                "error",
                f"{report.shortfall} message{'s' if report.shortfall != 1 else ''} "
                f"({human_size(report.shortfall_bytes)}) did not fit in the quota and "
                f"{'were' if report.shortfall != 1 else 'was'} not restored: {listed}. "
                f"{advice}: what is already back will not be copied twice.",
            )
        )
    if report.unreadable:
        messages.append(
            (
                "error",
                f"{len(report.unreadable)} message(s) could not be read from the backup "
                "(run a backup verify).",
            )
        )
    if not messages:
        messages.append(("info", "The selection was empty: nothing was restored."))
    return messages


def restore_action(tm: TimeMachine, snapshot_id: str) -> Response | str:
    """POST: restore what was chosen, then show the report above the restore history."""
    load_manifest(tm, snapshot_id)  # a snapshot of another mailbox is a 404, form or no form
    form = RestoreForm()
    if not form.validate_on_submit():
        return snapshot_page(tm, snapshot_id, form)
    scope = form.scope()
    folder = (form.folder.data or "").strip() or None
    uids = form.uid.data or []
    if folder == ALL_FOLDERS:
        folder = None
    if scope is None:
        form.form_errors.append("Choose what to restore.")
    elif scope in ("messages", "folder") and folder is None:
        form.form_errors.append("Open a folder first.")
    elif scope == "messages" and not uids:
        form.uid.errors = ["Tick the messages to restore first."]
    if form.form_errors or form.uid.errors:
        return snapshot_page(tm, snapshot_id, form)
    try:
        report = backups.restore(
            db.session,
            tm.mailbox.address,
            snapshot_id,
            folder=None if scope == "mailbox" else folder,
            uids=uids if scope == "messages" else None,
            into=(form.into.data or "").strip() or None,
            actor=tm.actor,
        )
    except ProviderError as error:
        db.session.rollback()
        if error.field == "into":
            form.into.errors = [error.message]
        else:
            form.form_errors.append(error.message)
        return snapshot_page(tm, snapshot_id, form)
    for category, text in report_messages(report, tm.for_owner):
        flash(text, category)
    return redirect(tm.url("backups") + "#history")
