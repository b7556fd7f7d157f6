"""Trial upgrade requests in the admin panel: decline one with a message for the customer
(converting is the mailbox's Convert to paid, which answers the request too)."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import TextAreaField
from wtforms.validators import DataRequired, Length

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import UpgradeRequest
from provider.services import upgrades
from provider.web.admin import bp
from provider.web.admin.access import actor, get_mailbox_or_404, scope, show_error


class DeclineForm(FlaskForm):
    message = TextAreaField(
        "Message to the customer",
        validators=[
            DataRequired("Say why, in a few words: the customer reads this."),
            Length(max=upgrades.DECLINE_MESSAGE_MAX),
        ],
    )


def _request_or_404(mailbox_id: int, request_id: int) -> UpgradeRequest:
    mailbox = get_mailbox_or_404(mailbox_id)  # another domain's mailbox is a 404 here
    try:
        return upgrades.get_request(db.session, mailbox, request_id)
    except ProviderError:
        abort(404)


@bp.route(
    "/mailboxes/<int:mailbox_id>/upgrade-requests/<int:request_id>/decline",
    methods=["GET", "POST"],
)
def decline_upgrade(mailbox_id: int, request_id: int) -> Response | str:
    upgrade = _request_or_404(mailbox_id, request_id)
    form = DeclineForm()
    if upgrade.pending and form.validate_on_submit():
        try:
            upgrades.decline(db.session, upgrade, form.message.data or "", actor=actor())
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(
                f"Upgrade request of {upgrade.mailbox.address} declined; the customer sees your "
                "message on their account page.",
                "success",
            )
            return redirect(url_for("admin.mailbox", mailbox_id=mailbox_id))  # type: ignore[return-value]
    return render_template("admin/mailboxes/decline_upgrade.html", upgrade=upgrade, form=form)


# App-wide like the queue's count: the admin layout is also used by app-rendered error pages.
@bp.app_context_processor
def upgrades_nav_context() -> dict[str, Any]:
    def upgrade_pending_count() -> int:
        """Upgrade requests waiting, for the Mailboxes nav link (this admin's domains only)."""
        if not current_user.is_authenticated or not hasattr(current_user, "managed_domain_ids"):
            return 0
        return len(upgrades.pending_requests(db.session, scope()))

    return {"upgrade_pending_count": upgrade_pending_count}
