"""Identities on the mailbox page: the sender addresses, add an extra one, switch, delete."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, g, redirect, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import HiddenField, StringField
from wtforms.validators import AnyOf, DataRequired, Length

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Identity, Mailbox
from provider.services import identities
from provider.web.admin import bp
from provider.web.admin.access import actor, current_admin, get_mailbox_or_404, show_error
from provider.web.admin.forms import ConfirmForm
from provider.web.admin.mailboxes import render_mailbox_page

ADDRESS_MAX = 320


class IdentityForm(FlaskForm):
    """An extra sender address; the rules (scope, owner, POP3-only) are the service's."""

    # Ids of their own: the alias form on the same page has an `address` field too.
    address = StringField(
        "Identity address",
        validators=[DataRequired(), Length(max=ADDRESS_MAX)],
        id="identity-address",
    )
    display_name = StringField(
        "Display name",
        id="identity-display-name",
    )


class IdentitySwitchForm(FlaskForm):
    enabled = HiddenField(validators=[AnyOf(["0", "1"])])


def get_identity_or_404(identity_id: int) -> Identity:
    identity = db.session.get(Identity, identity_id)
    if identity is None or not current_admin().can_manage(identity.mailbox.domain_id):
        abort(404)
    return identity


@bp.context_processor
def identity_section_context() -> dict[str, Any]:
    def identity_section(mailbox: Mailbox) -> dict[str, Any]:
        """What templates/admin/mailboxes/_identities.html shows; a refused form keeps its
        input and errors (the view leaves it in `g`)."""
        return {
            "overview": identities.sender_overview(db.session, mailbox),
            "form": g.get("identity_form") or IdentityForm(formdata=None),
        }

    return {"identity_section": identity_section}


@bp.post("/mailboxes/<int:mailbox_id>/identities")
def create_identity(mailbox_id: int) -> Response | str:
    mailbox = get_mailbox_or_404(mailbox_id)
    form = IdentityForm()
    if form.validate_on_submit():
        try:
            identity = identities.add_identity(
                db.session,
                mailbox,
                form.address.data or "",
                form.display_name.data or "",
                actor=actor(),
                admin=current_admin(),
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"{mailbox.address} may now send as {identity.address}.", "success")
            return redirect(url_for("admin.mailbox", mailbox_id=mailbox.id, _anchor="identities"))
    g.identity_form = form
    return render_mailbox_page(mailbox)


@bp.post("/identities/<int:identity_id>/enabled")
def switch_identity(identity_id: int) -> Response:
    identity = get_identity_or_404(identity_id)
    form = IdentitySwitchForm()
    if form.validate_on_submit():
        enabled = form.enabled.data == "1"
        identities.set_identity(db.session, identity, actor=actor(), enabled=enabled)
        db.session.commit()
        state = "switched on" if enabled else "switched off"
        flash(f"Identity {identity.address} {state}.", "success")
    else:
        flash("That request was not understood; nothing changed.", "error")
    return redirect(url_for("admin.mailbox", mailbox_id=identity.mailbox_id, _anchor="identities"))


@bp.post("/identities/<int:identity_id>/delete")
def delete_identity(identity_id: int) -> Response:
    identity = get_identity_or_404(identity_id)
    mailbox_id = identity.mailbox_id
    if ConfirmForm().validate_on_submit():
        address = identity.address
        identities.delete_identity(db.session, identity, actor=actor())
        db.session.commit()
        flash(f"Identity {address} deleted.", "success")
    return redirect(url_for("admin.mailbox", mailbox_id=mailbox_id, _anchor="identities"))
