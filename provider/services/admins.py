"""Admin accounts: the first admin, domain admins and their domains, passwords and sessions."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.errors import AlreadyExists, InvalidInput, NotFound, ProviderError
from provider.models import AdminUser, Domain
from provider.services import audit, auth
from provider.services.audit import Actor
from provider.services.clock import now

ADMIN_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass(frozen=True)
class FirstAdmin:
    """What `provider init` reports: the admin, and the password if one was just made up."""

    admin: AdminUser
    created: bool
    generated_password: str | None


def normalize_admin_email(email: str) -> str:
    cleaned = email.strip().lower()
    if not ADMIN_EMAIL.match(cleaned) or len(cleaned) > 320:
        raise InvalidInput(f"{email!r} is not an e-mail address", "email")
    return cleaned


def get_admin(session: Session, email: str) -> AdminUser:
    admin = session.scalar(select(AdminUser).where(AdminUser.email == email.strip().lower()))
    if admin is None:
        raise NotFound(f"admin {email.strip()} does not exist", "email")
    return admin


def _describe(admin: AdminUser) -> dict[str, object]:
    return {
        "email": admin.email,
        "is_superadmin": admin.is_superadmin,
        "active": admin.active,
        "domains": sorted(domain.name for domain in admin.domains),
    }


def create_admin(
    session: Session,
    email: str,
    password: str,
    *,
    superadmin: bool,
    domains: Iterable[Domain] = (),
    actor: Actor,
) -> AdminUser:
    normalized = normalize_admin_email(email)
    if session.scalar(select(AdminUser.id).where(AdminUser.email == normalized)) is not None:
        raise AlreadyExists(f"admin {normalized} already exists", "email")
    auth.check_password_policy(password, address=normalized)
    admin = AdminUser(
        email=normalized,
        password_hash=auth.hash_password(password),
        is_superadmin=superadmin,
        domains=[] if superadmin else list(domains),
        created_at=now(),
    )
    if not superadmin and not admin.domains:
        raise InvalidInput("a domain admin needs at least one domain", "domains")
    session.add(admin)
    session.flush()
    audit.record(session, actor, "admin.create", normalized, after=_describe(admin))
    return admin


def ensure_first_admin(session: Session, email: str, password: str | None) -> FirstAdmin:
    """Make a superadmin when there is no admin at all (idempotent); invent a password if needed."""
    existing = session.scalar(select(AdminUser).order_by(AdminUser.id).limit(1))
    if existing is not None:
        return FirstAdmin(existing, created=False, generated_password=None)
    generated = None if password else secrets.token_urlsafe(12)
    admin = create_admin(
        session, email, password or generated or "", superadmin=True, actor=Actor("init")
    )
    return FirstAdmin(admin, created=True, generated_password=generated)


def set_admin_password(session: Session, admin: AdminUser, password: str, *, actor: Actor) -> None:
    """Change an admin's password and end every session they have open."""
    auth.check_password_policy(password, address=admin.email)
    admin.password_hash = auth.hash_password(password)
    admin.session_epoch += 1
    session.flush()
    audit.record(session, actor, "admin.password", admin.email)


def set_admin_domains(
    session: Session, admin: AdminUser, domains: Iterable[Domain], *, actor: Actor
) -> None:
    if admin.is_superadmin:
        raise ProviderError("a superadmin manages every domain already", "domains")
    chosen = list(domains)
    if not chosen:
        raise InvalidInput("a domain admin needs at least one domain", "domains")
    before = _describe(admin)
    admin.domains = chosen
    admin.session_epoch += 1
    session.flush()
    audit.record(session, actor, "admin.update", admin.email, before=before, after=_describe(admin))


def delete_admin(session: Session, admin: AdminUser, *, actor: Actor) -> None:
    """Delete an admin; the last superadmin cannot be deleted (nobody could log in after)."""
    if admin.is_superadmin:
        superadmins = session.scalar(
            select(func.count()).where(
                AdminUser.is_superadmin.is_(True), AdminUser.active.is_(True)
            )
        )
        if (superadmins or 0) <= 1:
            raise ProviderError("the last superadmin cannot be deleted", "email")
    before = _describe(admin)
    session.delete(admin)
    session.flush()
    audit.record(session, actor, "admin.delete", before["email"], before=before)  # type: ignore[arg-type]


def record_login(session: Session, admin: AdminUser) -> None:
    admin.last_login_at = now()


def end_sessions(session: Session, admin: AdminUser) -> None:
    """Invalidate every session cookie issued to this admin so far (logout everywhere)."""
    admin.session_epoch += 1
