"""Mailboxes: the searchable list, create, detail and edit, suspend, password reset, delete."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Mailbox, MailboxStatus
from provider.services import provisioning, reports, trials, upgrades
from provider.services.quota import current_bounds, format_gb
from provider.web.admin import bp
from provider.web.admin.access import (
    actor,
    get_mailbox_or_404,
    int_arg,
    page_arg,
    scope,
    show_error,
)
from provider.web.admin.filters import gb_text
from provider.web.admin.forms import (
    POP3_ACTION_HELP,
    POP3_ACTION_LABELS,
    PROTOCOL_HELP,
    AliasForm,
    ConfirmForm,
    MailboxCreateForm,
    MailboxEditForm,
    PasswordForm,
    choices,
)


def _quota_limits() -> dict[str, str]:
    """min/max attributes of the quota input (a browser hint; the service enforces them)."""
    bounds = current_bounds()
    return {"min": format_gb(bounds.min_gb), "max": format_gb(bounds.max_gb)}


@bp.get("/mailboxes")
def mailboxes() -> str:
    visible = scope()
    domain_filter = int_arg("domain")
    domain_ids = visible
    if domain_filter is not None:
        # A domain outside the admin's scope filters down to nothing rather than leaking rows.
        allowed = visible is None or domain_filter in visible
        domain_ids = {domain_filter} if allowed else set()
    sort = request.args.get("sort", "address")
    if sort not in reports.MAILBOX_SORTS:
        sort = "address"
    descending = request.args.get("order") == "desc"
    search = request.args.get("q", "").strip()
    page = reports.list_mailboxes(
        db.session,
        search=search,
        domain_ids=domain_ids,
        sort=sort,
        descending=descending,
        page=page_arg(),
        per_page=int(current_app.config["PAGE_SIZE"]),
    )
    return render_template(
        "admin/mailboxes/list.html",
        page=page,
        search=search,
        sort=sort,
        descending=descending,
        domain_filter=domain_filter,
        domains=reports.list_domains(db.session, visible),
        upgrade_pending=upgrades.pending_mailbox_ids(db.session, [m.id for m in page.items]),
    )


@bp.route("/mailboxes/new", methods=["GET", "POST"])
def create_mailbox() -> Response | str:
    domains = reports.list_domains(db.session, scope())
    form = MailboxCreateForm()
    form.domain.choices = choices({domain.id: domain.name for domain in domains})
    if request.method == "GET":
        form.quota_gb.data = _quota_limits()["min"]
        if int_arg("domain") in {domain.id for domain in domains}:
            form.domain.data = int_arg("domain")
    if form.validate_on_submit():
        domain_name = next(domain.name for domain in domains if domain.id == form.domain.data)
        try:
            mailbox = provisioning.create_mailbox(
                db.session,
                f"{(form.local_part.data or '').strip()}@{domain_name}",
                form.password.data or "",
                form.quota_gb.data,
                form.protocols.data or "",
                actor=actor(),
                plan=form.plan.data or "paid",
                contact_email=form.contact_email.data,
                pop3_action=form.pop3_action.data or "keep",
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            # The service speaks of the whole address; on this form that is the local part.
            show_error(form, exc, {"address": "local_part"})
        else:
            flash(f"Mailbox {mailbox.address} created.", "success")
            return redirect(url_for("admin.mailbox", mailbox_id=mailbox.id))
    return render_template(
        "admin/mailboxes/new.html",
        form=form,
        has_domains=bool(domains),
        quota_limits=_quota_limits(),
        protocol_help=PROTOCOL_HELP,
        pop3_action_help=POP3_ACTION_HELP,
    )


def _edit_form_for(mailbox: Mailbox) -> MailboxEditForm:
    """The edit form filled from the mailbox (never from a request meant for another form)."""
    return MailboxEditForm(
        formdata=None,
        data={
            "quota_gb": gb_text(mailbox.quota_bytes),
            "protocols": reports.protocol_policy(mailbox.imap_enabled, mailbox.pop3_enabled),
            "plan": mailbox.plan,
            "contact_email": mailbox.contact_email or "",
            "pop3_action": mailbox.pop3_action,
        },
    )


def render_mailbox_page(
    mailbox: Mailbox,
    *,
    edit_form: MailboxEditForm | None = None,
    password_form: PasswordForm | None = None,
    alias_form: AliasForm | None = None,
) -> str:
    """The mailbox page with its forms; the one that was posted keeps its input and errors."""
    edit_form = edit_form or _edit_form_for(mailbox)
    password_form = password_form or PasswordForm(formdata=None)
    alias_form = alias_form or AliasForm(formdata=None)
    return render_template(
        "admin/mailboxes/detail.html",
        mailbox=mailbox,
        aliases=sorted(mailbox.aliases, key=lambda alias: alias.address),
        edit_form=edit_form,
        password_form=password_form,
        alias_form=alias_form,
        quota_limits=_quota_limits(),
        protocol_help=PROTOCOL_HELP,
        pop3_action_help=POP3_ACTION_HELP,
        pop3_action_labels=POP3_ACTION_LABELS,
        upgrade_request=upgrades.pending_request(db.session, mailbox),
    )


@bp.get("/mailboxes/<int:mailbox_id>")
def mailbox(mailbox_id: int) -> str:
    return render_mailbox_page(get_mailbox_or_404(mailbox_id))


@bp.post("/mailboxes/<int:mailbox_id>")
def update_mailbox(mailbox_id: int) -> Response | str:
    mailbox = get_mailbox_or_404(mailbox_id)
    shown_quota = gb_text(mailbox.quota_bytes)
    form = MailboxEditForm()
    if form.validate_on_submit():
        submitted_quota = (form.quota_gb.data or "").strip()
        try:
            provisioning.update_mailbox(
                db.session,
                mailbox,
                actor=actor(),
                # The page shows the quota rounded; sent back untouched, it is no change.
                quota_gb=None if submitted_quota == shown_quota else submitted_quota,
                protocols=form.protocols.data,
                plan=form.plan.data,
                contact_email=form.contact_email.data or "",
                pop3_action=form.pop3_action.data or None,
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Mailbox {mailbox.address} saved.", "success")
            return redirect(url_for("admin.mailbox", mailbox_id=mailbox.id))
    return render_mailbox_page(mailbox, edit_form=form)


def _set_status(mailbox_id: int, status: MailboxStatus, done: str) -> Response:
    mailbox = get_mailbox_or_404(mailbox_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        try:
            provisioning.update_mailbox(db.session, mailbox, actor=actor(), status=status.value)
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            flash(exc.message, "error")
        else:
            flash(f"Mailbox {mailbox.address} {done}.", "success")
    return redirect(url_for("admin.mailbox", mailbox_id=mailbox.id))


@bp.post("/mailboxes/<int:mailbox_id>/suspend")
def suspend_mailbox(mailbox_id: int) -> Response:
    return _set_status(mailbox_id, MailboxStatus.SUSPENDED, "suspended")


@bp.post("/mailboxes/<int:mailbox_id>/reactivate")
def reactivate_mailbox(mailbox_id: int) -> Response:
    return _set_status(mailbox_id, MailboxStatus.ACTIVE, "reactivated")


@bp.post("/mailboxes/<int:mailbox_id>/convert")
def convert_mailbox(mailbox_id: int) -> Response:
    """Convert a trial to paid: ends the trial lifecycle and restores an expired one at once."""
    mailbox = get_mailbox_or_404(mailbox_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        try:
            trials.convert_to_paid(db.session, mailbox.address, actor=actor())
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            flash(exc.message, "error")
        else:
            flash(f"Mailbox {mailbox.address} converted to paid.", "success")
    return redirect(url_for("admin.mailbox", mailbox_id=mailbox.id))


@bp.post("/mailboxes/<int:mailbox_id>/password")
def reset_mailbox_password(mailbox_id: int) -> Response | str:
    mailbox = get_mailbox_or_404(mailbox_id)
    form = PasswordForm()
    if form.validate_on_submit():
        try:
            provisioning.update_mailbox(
                db.session, mailbox, actor=actor(), password=form.password.data or ""
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"New password set for {mailbox.address}.", "success")
            return redirect(url_for("admin.mailbox", mailbox_id=mailbox.id))
    return render_mailbox_page(mailbox, password_form=form)


@bp.get("/mailboxes/<int:mailbox_id>/delete/confirm")
def confirm_delete_mailbox(mailbox_id: int) -> str:
    mailbox = get_mailbox_or_404(mailbox_id)
    return render_template("admin/mailboxes/delete.html", mailbox=mailbox, form=ConfirmForm())


@bp.post("/mailboxes/<int:mailbox_id>/delete")
def delete_mailbox(mailbox_id: int) -> Response | str:
    mailbox = get_mailbox_or_404(mailbox_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        address = mailbox.address
        try:
            provisioning.delete_mailbox(db.session, mailbox, actor=actor())
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Mailbox {address} deleted.", "success")
            return redirect(url_for("admin.mailboxes"))
    return render_template("admin/mailboxes/delete.html", mailbox=mailbox, form=form)
