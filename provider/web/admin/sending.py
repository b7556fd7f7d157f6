"""Sending on the mailbox page: what it sent, its limits (override them), suspend and resume."""

from __future__ import annotations

from typing import Any

from flask import flash, g, redirect, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import StringField
from wtforms.validators import Length, Optional

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Mailbox
from provider.services import sending
from provider.web.admin import bp
from provider.web.admin.access import actor, get_mailbox_or_404, show_error
from provider.web.admin.forms import ConfirmForm
from provider.web.admin.mailboxes import render_mailbox_page

LIMIT_HINT = f"Recipients, {sending.LIMIT_MIN} to {sending.LIMIT_MAX}. Empty: the plan's setting."


class SendingLimitsForm(FlaskForm):
    """The overrides as text: empty means "the plan's setting"; the service checks the range."""

    send_limit_hour = StringField("Per hour", validators=[Optional(), Length(max=20)])
    send_limit_day = StringField("Per day", validators=[Optional(), Length(max=20)])


def _limits_form_for(mailbox: Mailbox) -> SendingLimitsForm:
    return SendingLimitsForm(
        formdata=None,
        data={
            "send_limit_hour": str(mailbox.send_limit_hour or ""),
            "send_limit_day": str(mailbox.send_limit_day or ""),
        },
    )


@bp.context_processor
def sending_section_context() -> dict[str, Any]:
    def sending_section(mailbox: Mailbox) -> dict[str, Any]:
        """What templates/admin/mailboxes/_sending.html shows; a refused form keeps its input
        and errors (the view leaves it in `g`)."""
        overview = sending.overview(db.session, mailbox)
        return {
            "overview": overview,
            "busiest": max((day.accepted for day in overview.last_days), default=0),
            "plan_limits": sending.plan_limits(mailbox.plan),
            "form": g.get("sending_form") or _limits_form_for(mailbox),
            "hint": LIMIT_HINT,
        }

    return {"sending_section": sending_section}


def _back(mailbox: Mailbox) -> Response:
    return redirect(url_for("admin.mailbox", mailbox_id=mailbox.id, _anchor="sending"))


@bp.post("/mailboxes/<int:mailbox_id>/sending/limits")
def set_sending_limits(mailbox_id: int) -> Response | str:
    mailbox = get_mailbox_or_404(mailbox_id)
    form = SendingLimitsForm()
    if form.validate_on_submit():
        try:
            changed = sending.set_limits(
                db.session,
                mailbox,
                actor=actor(),
                per_hour=form.send_limit_hour.data or "",
                per_day=form.send_limit_day.data or "",
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            if changed:
                flash(f"Sending limits of {mailbox.address} saved.", "success")
            return _back(mailbox)
    g.sending_form = form
    return render_mailbox_page(mailbox)


@bp.post("/mailboxes/<int:mailbox_id>/sending/suspend")
def suspend_sending(mailbox_id: int) -> Response:
    mailbox = get_mailbox_or_404(mailbox_id)
    if ConfirmForm().validate_on_submit():
        sending.suspend_sending(db.session, mailbox, actor=actor())
        db.session.commit()
        flash(f"Sending from {mailbox.address} suspended.", "success")
    return _back(mailbox)


@bp.post("/mailboxes/<int:mailbox_id>/sending/resume")
def resume_sending(mailbox_id: int) -> Response:
    mailbox = get_mailbox_or_404(mailbox_id)
    if ConfirmForm().validate_on_submit():
        sending.resume_sending(db.session, mailbox, actor=actor())
        db.session.commit()
        flash(f"{mailbox.address} may send again.", "success")
    return _back(mailbox)
