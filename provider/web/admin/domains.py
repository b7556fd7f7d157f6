"""Domains: list with mailbox counts, create, open or close signup, the postmaster target,
the DNS records to publish and their check, DKIM keys, delete when empty."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Domain
from provider.services import delivery, dkim, dns_records, provisioning, reports
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


@bp.route("/domains/<int:domain_id>/signup", methods=["GET", "POST"])
def toggle_domain_signup(domain_id: int) -> Response | str:
    """GET: ask before opening or closing public signup. POST: set the state the confirmation
    names (`signup` = open|closed, so a repeated post changes nothing more); without it, flip."""
    domain = get_domain_or_404(domain_id)
    form = ConfirmForm()
    if request.method == "GET":
        return render_template(
            "admin/domains/signup.html", domain=domain, form=form, open=not domain.signup_enabled
        )
    if form.validate_on_submit():
        wanted = request.form.get("signup")
        if wanted not in ("open", "closed", None):
            abort(400)
        enable = not domain.signup_enabled if wanted is None else wanted == "open"
        provisioning.set_domain_signup(db.session, domain, enable, actor=actor())
        db.session.commit()
        state = "open" if domain.signup_enabled else "closed"
        flash(f"Public trial signup for {domain.name} is now {state}.", "success")
    return redirect(url_for("admin.domains"))


def _render_domain(
    domain: Domain,
    form: DomainPostmasterForm,
    checked: list[dns_records.CheckResult] | None = None,
) -> str:
    targets = [d.address for d in delivery.postmaster_targets(db.session, domain.name)]
    if checked is None:
        records = dns_records.expected_records(db.session, domain)
    else:
        records = [result.record for result in checked]
    return render_template(
        "admin/domains/detail.html",
        domain=domain,
        form=form,
        postmaster_goes_to=targets,
        postmaster_spool=delivery.postmaster_spool_path(domain.name),
        dns_records=records,
        zone_text=dns_records.zone_text(records),
        checked=checked,
        dkim_keys=dkim.list_keys(db.session, domain),
        key_state=dkim.key_state,
        action_form=ConfirmForm(),
    )


def _postmaster_form(domain: Domain) -> DomainPostmasterForm:
    return DomainPostmasterForm(data={"postmaster": ", ".join(domain.postmaster_addresses)})


@bp.get("/domains/<int:domain_id>")
def domain_detail(domain_id: int) -> str:
    domain = get_domain_or_404(domain_id)
    return _render_domain(domain, _postmaster_form(domain))


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


@bp.post("/domains/<int:domain_id>/dns/check")
def check_domain_dns(domain_id: int) -> Response | str:
    """Ask DNS for each record and show the answers on the page (nothing is stored)."""
    domain = get_domain_or_404(domain_id)
    if not ConfirmForm().validate_on_submit():
        return redirect(url_for("admin.domain_detail", domain_id=domain.id))
    try:
        results = dns_records.check(db.session, domain)
    except ProviderError as exc:  # a bad DNS_RESOLVER setting
        flash(f"DNS check failed: {exc.message}", "error")
        return redirect(url_for("admin.domain_detail", domain_id=domain.id))
    return _render_domain(domain, _postmaster_form(domain), checked=results)


@bp.post("/domains/<int:domain_id>/dkim/rotate")
def rotate_domain_dkim(domain_id: int) -> Response:
    domain = get_domain_or_404(domain_id)
    if not ConfirmForm().validate_on_submit():
        return redirect(url_for("admin.domain_detail", domain_id=domain.id))
    try:
        key = dkim.rotate(db.session, domain, actor=actor())
        db.session.commit()
    except ProviderError as exc:
        db.session.rollback()
        flash(exc.message, "error")
    else:
        flash(
            f"New DKIM key {key.selector} signs {domain.name}'s mail from now on. Publish its "
            "record; keep the old ones published until mail signed with them has arrived.",
            "success",
        )
    return redirect(url_for("admin.domain_detail", domain_id=domain.id) + "#dkim")


@bp.post("/domains/<int:domain_id>/dkim/retire")
def retire_domain_dkim(domain_id: int) -> Response:
    domain = get_domain_or_404(domain_id)
    if ConfirmForm().validate_on_submit():
        selector = request.form.get("selector", "")
        try:
            key = dkim.retire(db.session, domain, selector, actor=actor())
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            flash(exc.message, "error")
        else:
            flash(
                f"DKIM key {key.selector} retired: its record may now be removed from DNS.",
                "success",
            )
    return redirect(url_for("admin.domain_detail", domain_id=domain.id) + "#dkim")


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
