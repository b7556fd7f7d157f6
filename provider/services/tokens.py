"""API tokens: made by admins, shown once, stored hashed, checked on every API request."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from provider.errors import InvalidInput, NotFound, ProviderError
from provider.models import AdminUser, ApiToken
from provider.services import audit
from provider.services.audit import Actor
from provider.services.clock import now

PREFIX = "pvd_"
SCOPES = ("read", "write")
NAME_MAX = 100
MAX_EXPIRES_DAYS = 3650
MAX_ALLOWED_IPS = 50
# last_used_at is written at most this often per token: a busy billing system must not turn
# every API read into a database write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# The same text for every reason a bearer token is refused: no oracle for which ones exist.
REFUSED = "the token is not valid (unknown, revoked or expired)"


class TokenRefused(ProviderError):
    """A bearer token that does not authenticate (HTTP 401), or one used from an address its
    allow-list does not name (403)."""

    http_status = 401


class TokenNotFromHere(TokenRefused):
    http_status = 403


@dataclass(frozen=True)
class NewToken:
    """A token just made: its record, and its secret, which is shown this once only."""

    token: ApiToken
    secret: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be read or write, not {scope!r}", "scope")
    return scope


def _check_name(name: str) -> str:
    name = " ".join(str(name).split())
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        raise InvalidInput("a token name may not contain control characters (NUL, …)", "name")
    if not name:
        raise InvalidInput("a token needs a name (what uses it, e.g. 'billing')", "name")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"a token name may have at most {NAME_MAX} characters", "name")
    return name


def _check_allowed_ips(allowed: list[str] | None) -> list[str] | None:
    if not allowed:
        return None
    if len(allowed) > MAX_ALLOWED_IPS:
        raise InvalidInput(f"at most {MAX_ALLOWED_IPS} addresses or networks", "allowed_ips")
    networks = []
    for entry in allowed:
        try:
            networks.append(str(ipaddress.ip_network(str(entry).strip(), strict=False)))
        except ValueError:
            raise InvalidInput(
                f"{str(entry)[:60]!r} is not an IP address or network (e.g. 192.0.2.0/24)",
                "allowed_ips",
            ) from None
    return networks


def create_token(
    session: Session,
    admin: AdminUser,
    *,
    name: str,
    scope: str = "read",
    expires_days: int | None = None,
    allowed_ips: list[str] | None = None,
    actor: Actor,
) -> NewToken:
    """Make a token acting as `admin`; the secret is in the result only (never stored)."""
    name, scope = _check_name(name), _check_scope(scope)
    networks = _check_allowed_ips(allowed_ips)
    if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRES_DAYS:
        raise InvalidInput(f"expiry must be 1 to {MAX_EXPIRES_DAYS} days", "expires")
    if not admin.active:
        raise InvalidInput(f"{admin.email} is not an active admin", "admin")
    secret = PREFIX + secrets.token_urlsafe(32)
    moment = now()
    token = ApiToken(
        admin=admin,
        name=name,
        prefix=secret[len(PREFIX) : len(PREFIX) + 8],
        secret_hash=hash_secret(secret),
        scope=scope,
        allowed_ips=networks,
        created_at=moment,
        expires_at=moment + timedelta(days=expires_days) if expires_days else None,
    )
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor,
        "token.create",
        f"token:{token.id}",
        after={
            "name": name,
            "admin": admin.email,
            "scope": scope,
            "expires_at": token.expires_at.isoformat() if token.expires_at else None,
            "allowed_ips": networks,
        },
    )
    return NewToken(token, secret)


def list_tokens(session: Session, admin: AdminUser | None = None) -> list[ApiToken]:
    """Every token (of one admin when given), newest first, revoked ones included."""
    query = select(ApiToken).order_by(ApiToken.id.desc())
    if admin is not None:
        query = query.where(ApiToken.admin_id == admin.id)
    return list(session.scalars(query))


def get_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token with id {token_id}", "id")
    return token


def revoke_token(session: Session, token: ApiToken, *, actor: Actor) -> ApiToken:
    """Revoke at once (the next request with it is refused); revoking twice changes nothing."""
    if token.revoked_at is None:
        token.revoked_at = now()
        audit.record(
            session,
            actor,
            "token.revoke",
            f"token:{token.id}",
            after={"name": token.name, "admin": token.admin.email},
        )
    return token


def authenticate(session: Session, secret: str, remote_ip: str | None) -> ApiToken:
    """The token for a bearer secret, if it may be used now from `remote_ip`; its admin must
    still be active. Records when and from where it was last used (at most once a minute)."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        raise TokenRefused(REFUSED)
    wanted = hash_secret(secret)
    token = session.scalar(
        select(ApiToken)
        .where(ApiToken.secret_hash == wanted)
        .options(joinedload(ApiToken.admin))  # checked below: one query for both
    )
    moment = now()
    if (
        token is None
        or token.revoked_at is not None
        or (token.expires_at is not None and token.expires_at <= moment)
        or not token.admin.active
    ):
        raise TokenRefused(REFUSED)
    if token.allowed_ips and not _ip_allowed(remote_ip, token.allowed_ips):
        raise TokenNotFromHere(f"this token may not be used from {remote_ip or 'here'}")
    if token.last_used_at is None or moment - token.last_used_at >= LAST_USED_RESOLUTION:
        token.last_used_at = moment
        token.last_used_ip = remote_ip
        session.commit()
    return token


def _ip_allowed(remote_ip: str | None, allowed: list[str]) -> bool:
    if not remote_ip:
        return False
    try:
        address = ipaddress.ip_address(remote_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in allowed:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
