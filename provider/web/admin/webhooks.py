"""Webhooks in the panel: endpoints (add, edit, delete, rotate the secret, send a test event),
deliveries with their attempts, redeliver. A domain admin sees and manages their own only."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from provider.errors import NotFound, ProviderError
from provider.extensions import db
from provider.models import DeliveryState, WebhookEndpoint
from provider.services import webhooks
from provider.web.admin import bp
from provider.web.admin.access import actor, current_admin, int_arg, show_error
from provider.web.admin.forms import ConfirmForm, WebhookForm

EVENT_CHOICES = [(name, name) for name in webhooks.EVENT_TYPES]


def get_endpoint_or_404(endpoint_id: int) -> WebhookEndpoint:
    try:
        return webhooks.get_endpoint(db.session, endpoint_id, current_admin())
    except NotFound:
        abort(404)


def _form(endpoint: WebhookEndpoint | None = None) -> WebhookForm:
    form = WebhookForm(obj=endpoint)
    form.events.choices = EVENT_CHOICES
    return form


@bp.get("/webhooks")
def webhook_endpoints() -> str:
    endpoints = webhooks.list_endpoints(db.session, current_admin())
    return render_template("admin/webhooks/list.html", endpoints=endpoints)


@bp.route("/webhooks/new", methods=["GET", "POST"])
def create_webhook() -> str:
    form = _form()
    if form.validate_on_submit():
        try:
            made = webhooks.create_endpoint(
                db.session,
                url=form.url.data or "",
                events=form.events.data or [],
                description=form.description.data or "",
                admin=current_admin(),
                actor=actor(),
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            # Not a redirect: the secret is shown this once, on this answer only.
            return render_template(
                "admin/webhooks/secret.html", endpoint=made.endpoint, secret=made.secret, new=True
            )
    return render_template("admin/webhooks/new.html", form=form)


@bp.route("/webhooks/<int:endpoint_id>", methods=["GET", "POST"])
def webhook_endpoint(endpoint_id: int) -> Response | str:
    endpoint = get_endpoint_or_404(endpoint_id)
    form = _form(endpoint)
    if form.validate_on_submit():
        try:
            webhooks.update_endpoint(
                db.session,
                endpoint,
                url=form.url.data or "",
                events=form.events.data or [],
                description=form.description.data or "",
                active=form.active.data,
                actor=actor(),
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            endpoint = get_endpoint_or_404(endpoint_id)
            show_error(form, exc)
        else:
            flash("Endpoint saved.", "success")
            return redirect(url_for("admin.webhook_endpoint", endpoint_id=endpoint.id))
    deliveries = webhooks.list_deliveries(
        db.session, current_admin(), endpoint_id=endpoint.id, limit=50
    )
    return render_template(
        "admin/webhooks/detail.html", endpoint=endpoint, form=form, deliveries=deliveries
    )


@bp.post("/webhooks/<int:endpoint_id>/rotate")
def rotate_webhook_secret(endpoint_id: int) -> Response | str:
    endpoint = get_endpoint_or_404(endpoint_id)
    if not ConfirmForm().validate_on_submit():
        return redirect(url_for("admin.webhook_endpoint", endpoint_id=endpoint.id))
    made = webhooks.rotate_secret(db.session, endpoint, actor=actor())
    db.session.commit()
    return render_template(
        "admin/webhooks/secret.html", endpoint=made.endpoint, secret=made.secret, new=False
    )


@bp.post("/webhooks/<int:endpoint_id>/test")
def test_webhook(endpoint_id: int) -> Response:
    endpoint = get_endpoint_or_404(endpoint_id)
    if ConfirmForm().validate_on_submit():
        webhooks.send_test_event(db.session, endpoint, actor=actor())
        db.session.commit()
        flash("A test event is queued; it appears below once it has been sent.", "success")
    return redirect(url_for("admin.webhook_endpoint", endpoint_id=endpoint.id))


@bp.post("/webhooks/<int:endpoint_id>/delete")
def delete_webhook(endpoint_id: int) -> Response:
    endpoint = get_endpoint_or_404(endpoint_id)
    if ConfirmForm().validate_on_submit():
        url = endpoint.url
        webhooks.delete_endpoint(db.session, endpoint, actor=actor())
        db.session.commit()
        flash(f"Endpoint {url} deleted with its deliveries.", "success")
    return redirect(url_for("admin.webhook_endpoints"))


@bp.get("/webhooks/deliveries")
def webhook_deliveries() -> str:
    state = request.args.get("state") or None
    if state not in {None, *(s.value for s in DeliveryState)}:
        state = None
    endpoint_id = int_arg("endpoint")
    deliveries = webhooks.list_deliveries(
        db.session, current_admin(), endpoint_id=endpoint_id, state=state, limit=200
    )
    return render_template(
        "admin/webhooks/deliveries.html",
        deliveries=deliveries,
        state=state,
        states=[s.value for s in DeliveryState],
    )


@bp.post("/webhooks/deliveries/<int:delivery_id>/redeliver")
def redeliver_webhook(delivery_id: int) -> Response:
    try:
        delivery = webhooks.get_delivery(db.session, delivery_id, current_admin())
    except NotFound:
        abort(404)
    if ConfirmForm().validate_on_submit():
        webhooks.redeliver(db.session, delivery, actor=actor())
        db.session.commit()
        flash(f"Event {delivery.event.public_id} queued again.", "success")
    return redirect(url_for("admin.webhook_endpoint", endpoint_id=delivery.endpoint_id))
