"""The owner's sender addresses (/account/identities): switch extra identities on and off and
name them; only an admin adds addresses."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import BooleanField, StringField

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Identity, Mailbox
from provider.services import identities
from provider.services.audit import Actor
from provider.web.account import bp
from provider.web.account.sessions import current_mailbox


class OwnerIdentityForm(FlaskForm):
    """One extra identity as its owner edits it (the address itself is the admin's choice)."""

    display_name = StringField("Display name")
    enabled = BooleanField("Use this address")


def _owner() -> Mailbox:
    mailbox = current_mailbox()
    assert mailbox is not None  # require_login ran
    return mailbox


def _own_identity_or_404(mailbox: Mailbox, identity_id: int) -> Identity:
    """Another mailbox's identity answers 404 like a missing one."""
    identity = db.session.get(Identity, identity_id)
    if identity is None or identity.mailbox_id != mailbox.id:
        abort(404)
    return identity


def _render(
    failed: OwnerIdentityForm | None = None, failed_id: int | None = None
) -> tuple[str, int]:
    mailbox = _owner()
    overview = identities.sender_overview(db.session, mailbox)
    forms = {}
    for entry in overview.identities:
        assert entry.identity_id is not None
        if entry.identity_id == failed_id and failed is not None:
            forms[entry.identity_id] = failed
        else:
            forms[entry.identity_id] = OwnerIdentityForm(
                formdata=None,
                prefix=f"i{entry.identity_id}",
                data={"display_name": entry.display_name, "enabled": entry.enabled},
            )
    return render_template(
        "account/identities.html", mailbox=mailbox, overview=overview, forms=forms
    ), 200


@bp.get("/identities")
def identities_page() -> tuple[str, int]:
    return _render()


@bp.post("/identities/<int:identity_id>")
def update_identity(identity_id: int) -> Response | tuple[str, int]:
    mailbox = _owner()
    identity = _own_identity_or_404(mailbox, identity_id)
    form = OwnerIdentityForm(prefix=f"i{identity.id}")
    if not mailbox.imap_enabled:
        # The rows a POP3-only policy keeps are not the owner's to use (the page says why).
        abort(404)
    if form.validate_on_submit():
        try:
            identities.set_identity(
                db.session,
                identity,
                actor=Actor(f"mailbox:{mailbox.address}", request.remote_addr),
                # A post without the field (a script toggling only) keeps the name.
                display_name=(
                    form.display_name.data if form.display_name.name in request.form else None
                ),
                enabled=bool(form.enabled.data),
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            target = form.display_name if exc.field == "display_name" else None
            if target is not None:
                target.errors = [*target.errors, exc.message]
            else:
                form.form_errors.append(exc.message)
        else:
            state = "in use" if identity.enabled else "switched off"
            flash(f"{identity.address} saved: {state}.", "success")
            return redirect(url_for("account.identities_page"))  # type: ignore[return-value]
    return _render(form, identity.id)
