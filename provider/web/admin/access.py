"""What every admin view shares: the acting admin, the domain-admin scope, and error placement."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import abort, request
from flask_login import current_user
from flask_wtf import FlaskForm

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import AdminUser, Alias, Domain, Mailbox
from provider.services import provisioning
from provider.services.audit import Actor
from provider.web.errors import MAX_URL_INTEGER

P = ParamSpec("P")
R = TypeVar("R")


def current_admin() -> AdminUser:
    return current_user._get_current_object()  # type: ignore[no-any-return]


def actor() -> Actor:
    """The audit actor for the logged-in admin and the address the request came from."""
    return Actor(f"admin:{current_admin().email}", request.remote_addr)


def scope() -> set[int] | None:
    """Domain ids the logged-in admin is limited to; None for a superadmin (all)."""
    return current_admin().managed_domain_ids()


def scope_names() -> set[str] | None:
    """Names of the domains the logged-in admin is limited to; None for a superadmin."""
    admin = current_admin()
    return None if admin.is_superadmin else {domain.name for domain in admin.domains}


def superadmin_required(view: Callable[P, R]) -> Callable[P, R]:
    """Refuse (403) a view to domain admins."""

    @wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        require_superadmin()
        return view(*args, **kwargs)

    return wrapped


def require_superadmin() -> None:
    if not current_admin().is_superadmin:
        abort(403)


# Out-of-scope records answer 404 exactly like missing ones: a domain admin learns nothing
# about other tenants, not even that an id exists.


def get_domain_or_404(domain_id: int) -> Domain:
    domain = db.session.get(Domain, domain_id)
    if domain is None or not current_admin().can_manage(domain.id):
        abort(404)
    return domain


def get_mailbox_or_404(mailbox_id: int) -> Mailbox:
    mailbox = db.session.get(Mailbox, mailbox_id)
    if mailbox is None or not current_admin().can_manage(mailbox.domain_id):
        abort(404)
    return mailbox


def get_alias_or_404(alias_id: int) -> Alias:
    alias = db.session.get(Alias, alias_id)
    if alias is None or not current_admin().can_manage(alias.domain_id):
        abort(404)
    return alias


def get_admin_or_404(admin_id: int) -> AdminUser:
    admin = db.session.get(AdminUser, admin_id)
    if admin is None:
        abort(404)
    return admin


def require_address_in_scope(address: str, field: str = "address") -> None:
    """Refuse an address in a domain the logged-in admin does not manage (the rule is
    provisioning.require_domain_in_scope; an alias may name any hosted domain otherwise)."""
    scope = current_admin().managed_domain_ids()
    if scope is None:
        return
    _local, domain_name = provisioning.split_address(address, field)
    provisioning.require_domain_in_scope(db.session, scope, domain_name, field)


def show_error(
    form: FlaskForm, exc: ProviderError, renames: Mapping[str, str] | None = None
) -> None:
    """Put a service's message next to the field it names, or above the form when it names none.

    A refused form is shown again with status 200, like the login page: a successful POST
    redirects, so a 200 answer to a POST always means "look at the errors". (422 would make
    browsers log every refused form as a failed resource load.)
    """
    name = (renames or {}).get(exc.field or "", exc.field)
    if name and name in form:
        form[name].errors = [*form[name].errors, exc.message]
    else:
        form.form_errors.append(exc.message)


# Far beyond any real list, and small enough that page * PAGE_SIZE is still a database integer.
MAX_PAGE = 10**6


def page_arg() -> int:
    """The `page` query parameter as a positive int (anything else reads as page 1; a huge one
    as MAX_PAGE, an empty page past the end)."""
    return min(max(request.args.get("page", 1, type=int) or 1, 1), MAX_PAGE)


def int_arg(name: str) -> int | None:
    """A query parameter as an id-sized int, or None when absent, not a number or out of range
    (a database integer cannot hold it, so no record has it)."""
    value = request.args.get(name, type=int)
    if value is None or not 0 <= value <= MAX_URL_INTEGER:
        return None
    return value
