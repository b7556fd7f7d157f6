"""Domains: list with mailbox counts, create, open or close signup, the postmaster target,
delete when empty."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from werkzeug.wrappers import Response

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Domain
from provider.services import delivery, provisioning, reports
from provider.web.admin import bp
from provider.web.admin.access import (
    actor,
    current_admin,
    get_domain_or_404,
    require_superadmin,
    scope,
    show_error,
    superadmin_required,
)
from provider.web.admin.forms import ConfirmForm, DomainForm, DomainPostmasterForm


def _render_list(form: DomainForm | None) -> str:
    summaries = reports.domain_summaries(db.session, scope())
    return render_template("admin/domains/list.html", summaries=summaries, form=form)


@bp.get("/domains")
def domains() -> str:
    return _render_list(DomainForm() if current_admin().is_superadmin else None)


@bp.post("/domains")
@superadmin_required
def create_domain() -> Response | str:
    form = DomainForm()
    if form.validate_on_submit():
        try:
            domain = provisioning.create_domain(
                db.session,
                form.name.data or "",
                signup_enabled=bool(form.signup_enabled.data),
                actor=actor(),
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Domain {domain.name} added.", "success")
            return redirect(url_for("admin.domains"))
    return _render_list(form)


@bp.post("/domains/<int:domain_id>/signup")
def toggle_domain_signup(domain_id: int) -> Response:
    domain = get_domain_or_404(domain_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        provisioning.set_domain_signup(db.session, domain, not domain.signup_enabled, actor=actor())
        db.session.commit()
        state = "open" if domain.signup_enabled else "closed"
        flash(f"Public trial signup for {domain.name} is now {state}.", "success")
    return redirect(url_for("admin.domains"))


def _render_domain(domain: Domain, form: DomainPostmasterForm) -> str:
    targets = [d.address for d in delivery.postmaster_targets(db.session, domain.name)]
    return render_template(
        "admin/domains/detail.html",
        domain=domain,
        form=form,
        postmaster_goes_to=targets,
        postmaster_spool=delivery.postmaster_spool_path(domain.name),
    )


@bp.get("/domains/<int:domain_id>")
def domain_detail(domain_id: int) -> str:
    domain = get_domain_or_404(domain_id)
    form = DomainPostmasterForm(data={"postmaster": ", ".join(domain.postmaster_addresses)})
    return _render_domain(domain, form)


@bp.post("/domains/<int:domain_id>/postmaster")
def update_domain_postmaster(domain_id: int) -> Response | str:
    domain = get_domain_or_404(domain_id)
    form = DomainPostmasterForm()
    if form.validate_on_submit():
        try:
            provisioning.set_domain_postmaster(
                db.session,
                domain,
                form.postmaster.data or "",
                actor=actor(),
                allowed_domain_ids=scope(),
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Postmaster of {domain.name} saved.", "success")
            return redirect(url_for("admin.domain_detail", domain_id=domain.id))
    return _render_domain(domain, form)


@bp.get("/domains/<int:domain_id>/delete/confirm")
def confirm_delete_domain(domain_id: int) -> str:
    domain = get_domain_or_404(domain_id)
    require_superadmin()
    return render_template("admin/domains/delete.html", domain=domain, form=ConfirmForm())


@bp.post("/domains/<int:domain_id>/delete")
def delete_domain(domain_id: int) -> Response | str:
    domain = get_domain_or_404(domain_id)
    require_superadmin()
    form = ConfirmForm()
    if form.validate_on_submit():
        name = domain.name
        try:
            provisioning.delete_domain(db.session, domain, actor=actor())
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Domain {name} deleted.", "success")
            return redirect(url_for("admin.domains"))
    return render_template("admin/domains/delete.html", domain=domain, form=form)
