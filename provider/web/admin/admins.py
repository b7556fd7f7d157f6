"""Admin accounts (superadmins only): list, create, change domains, reset password, delete."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_login import login_user
from werkzeug.wrappers import Response
from wtforms.fields.choices import SelectChoice

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import AdminUser, Domain
from provider.services import admins as admin_service
from provider.services import reports
from provider.web.admin import bp
from provider.web.admin.access import (
    actor,
    current_admin,
    get_admin_or_404,
    show_error,
    superadmin_required,
)
from provider.web.admin.forms import (
    AdminCreateForm,
    AdminDomainsForm,
    ConfirmForm,
    PasswordForm,
    choices,
)


def _domain_choices() -> list[SelectChoice]:
    return choices({domain.id: domain.name for domain in reports.list_domains(db.session)})


def _chosen_domains(ids: list[int] | None) -> list[Domain]:
    return reports.list_domains(db.session, set(ids or ()))


@bp.get("/admins")
@superadmin_required
def admins() -> str:
    return render_template("admin/admins/list.html", admins=reports.list_admins(db.session))


@bp.route("/admins/new", methods=["GET", "POST"])
@superadmin_required
def create_admin() -> Response | str:
    form = AdminCreateForm()
    form.domains.choices = _domain_choices()
    if form.validate_on_submit():
        try:
            admin = admin_service.create_admin(
                db.session,
                form.email.data or "",
                form.password.data or "",
                superadmin=bool(form.superadmin.data),
                domains=_chosen_domains(form.domains.data),
                actor=actor(),
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Admin {admin.email} created.", "success")
            return redirect(url_for("admin.admin_account", admin_id=admin.id))
    return render_template("admin/admins/new.html", form=form)


def _render_admin(
    admin: AdminUser,
    *,
    domains_form: AdminDomainsForm | None = None,
    password_form: PasswordForm | None = None,
) -> str:
    if domains_form is None:
        domains_form = AdminDomainsForm(
            formdata=None, data={"domains": [domain.id for domain in admin.domains]}
        )
    domains_form.domains.choices = _domain_choices()
    password_form = password_form or PasswordForm(formdata=None)
    return render_template(
        "admin/admins/detail.html",
        account=admin,
        domains_form=domains_form,
        password_form=password_form,
    )


@bp.get("/admins/<int:admin_id>")
@superadmin_required
def admin_account(admin_id: int) -> str:
    return _render_admin(get_admin_or_404(admin_id))


@bp.post("/admins/<int:admin_id>/domains")
@superadmin_required
def set_admin_domains(admin_id: int) -> Response | str:
    admin = get_admin_or_404(admin_id)
    form = AdminDomainsForm()
    form.domains.choices = _domain_choices()
    if form.validate_on_submit():
        try:
            admin_service.set_admin_domains(
                db.session, admin, _chosen_domains(form.domains.data), actor=actor()
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Domains of {admin.email} saved.", "success")
            return redirect(url_for("admin.admin_account", admin_id=admin.id))
    return _render_admin(admin, domains_form=form)


@bp.post("/admins/<int:admin_id>/password")
@superadmin_required
def reset_admin_password(admin_id: int) -> Response | str:
    admin = get_admin_or_404(admin_id)
    form = PasswordForm()
    if form.validate_on_submit():
        try:
            admin_service.set_admin_password(
                db.session, admin, form.password.data or "", actor=actor()
            )
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            if admin.id == current_admin().id:
                # The new password ended every session of this admin, this one included;
                # the person who just chose it keeps working under a fresh one.
                login_user(admin)
            flash(f"New password set for {admin.email}; their other sessions ended.", "success")
            return redirect(url_for("admin.admin_account", admin_id=admin.id))
    return _render_admin(admin, password_form=form)


@bp.get("/admins/<int:admin_id>/delete/confirm")
@superadmin_required
def confirm_delete_admin(admin_id: int) -> str:
    admin = get_admin_or_404(admin_id)
    return render_template("admin/admins/delete.html", account=admin, form=ConfirmForm())


@bp.post("/admins/<int:admin_id>/delete")
@superadmin_required
def delete_admin(admin_id: int) -> Response | str:
    admin = get_admin_or_404(admin_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        email = admin.email
        try:
            admin_service.delete_admin(db.session, admin, actor=actor())
            db.session.commit()
        except ProviderError as exc:
            db.session.rollback()
            show_error(form, exc)
        else:
            flash(f"Admin {email} deleted.", "success")
            return redirect(url_for("admin.admins"))
    return render_template("admin/admins/delete.html", account=admin, form=form)
