"""Aliases: add one to a mailbox, delete one, and a searchable list of all of them."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from provider.errors import ProviderError
from provider.extensions import db
from provider.services import provisioning, reports
from provider.web.admin import bp
from provider.web.admin.access import (
    actor,
    get_alias_or_404,
    get_mailbox_or_404,
    page_arg,
    require_address_in_scope,
    scope,
    show_error,
)
from provider.web.admin.forms import AliasForm, ConfirmForm
from provider.web.admin.mailboxes import render_mailbox_page


@bp.get("/aliases")
def aliases() -> str:
    search = request.args.get("q", "").strip()
    page = reports.list_aliases(
        db.session,
        search=search,
        domain_ids=scope(),
        page=page_arg(),
        per_page=int(current_app.config["PAGE_SIZE"]),
    )
    return render_template("admin/aliases/list.html", page=page, search=search)


@bp.post("/mailboxes/<int:mailbox_id>/aliases")
def create_alias(mailbox_id: int) -> Response | str:
    mailbox = get_mailbox_or_404(mailbox_id)
    form = AliasForm()
    if form.validate_on_submit():
        address = form.address.data or ""
        try:
            require_address_in_scope(address)
            alias = provisioning.create_alias(db.session, address, mailbox, actor=actor())
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Alias {alias.address} now delivers to {mailbox.address}.", "success")
            return redirect(url_for("admin.mailbox", mailbox_id=mailbox.id))
    return render_mailbox_page(mailbox, alias_form=form)


@bp.post("/aliases/<int:alias_id>/delete")
def delete_alias(alias_id: int) -> Response:
    alias = get_alias_or_404(alias_id)
    mailbox_id = alias.mailbox_id
    form = ConfirmForm()
    if form.validate_on_submit():
        address = alias.address
        provisioning.delete_alias(db.session, alias, actor=actor())
        db.session.commit()
        flash(f"Alias {address} deleted.", "success")
    if request.form.get("back") == "list":
        return redirect(url_for("admin.aliases"))
    return redirect(url_for("admin.mailbox", mailbox_id=mailbox_id))
