"""Two-factor login for admins: TOTP (RFC 6238) secrets, one-time recovery codes, reset."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import pyotp
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from provider.errors import InvalidInput, ProviderError
from provider.models import AdminRecoveryCode, AdminUser
from provider.services import audit
from provider.services.audit import Actor
from provider.services.clock import now

ISSUER = "Mail provider"
RECOVERY_CODE_COUNT = 10
# 16 characters from 32 (no 0/o, 1/l/i look-alikes): 80 bits, so a stolen table of their
# SHA-256 cannot be walked back to the codes (a slow hash is only needed for guessable input).
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
RECOVERY_CODE_LENGTH = 16
# Codes of the step before and after the current one are accepted too (clock drift, a code
# typed as it turned over): RFC 6238 §5.2 recommends at most one step back.
VALID_STEPS = (-1, 0, 1)
TOTP_CODE = re.compile(r"[0-9]{6}")
# Nothing longer is looked at (a recovery code is 19 with its dashes).
MAX_CODE_LENGTH = 64


class SecondFactor(Enum):
    """Which kind of code passed the second step."""

    TOTP = "totp"
    RECOVERY = "recovery"


class WrongCode(InvalidInput):
    """A code that is not the current one, was used already, or is not a code at all."""

    def __init__(self, message: str = "That code is not right (or was used already).") -> None:
        super().__init__(message, "code")


@dataclass(frozen=True)
class Setup:
    """What the setup page shows: the secret for manual entry and the URI the QR code holds."""

    secret: str
    uri: str


def _fernet() -> Fernet:
    """The key that encrypts TOTP secrets at rest, derived from SECRET_KEY (a database dump
    alone does not give them away; a new SECRET_KEY means `provider admin reset-2fa`)."""
    secret_key = str(current_app.config["SECRET_KEY"]).encode()
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"provider admin totp secret"
    ).derive(secret_key)
    return Fernet(base64.urlsafe_b64encode(key))


def _encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def _decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ProviderError(
            "the two-factor secret cannot be read (SECRET_KEY changed?); "
            "reset it with `provider admin reset-2fa`",
            "code",
        ) from None


def begin_setup(session: Session, admin: AdminUser) -> Setup:
    """The secret being set up (a new one the first time); 2FA stays off until `enable`."""
    if admin.two_factor_enabled:
        raise ProviderError("two-factor login is already on", "code")
    secret = None
    if admin.totp_secret is not None:
        try:
            secret = _decrypt(admin.totp_secret)
        except ProviderError:
            secret = None  # encrypted under an earlier SECRET_KEY: start with a new one
    if secret is None:
        secret = pyotp.random_base32()
        admin.totp_secret = _encrypt(secret)
        session.flush()
    uri = pyotp.TOTP(secret).provisioning_uri(name=admin.email, issuer_name=ISSUER)
    return Setup(secret, uri)


def _normalized(code: str) -> str:
    """The code without spaces and dashes, lower case; empty when it is too long to be one."""
    if len(code) > MAX_CODE_LENGTH:
        return ""
    return re.sub(r"[\s-]", "", code).lower()


def _matching_step(secret: str, code: str, moment: datetime) -> int | None:
    """The time step (of the ones accepted around `moment`) whose code is `code`."""
    if not TOTP_CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(moment)
    for offset in VALID_STEPS:
        step = current + offset
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _claim_step(session: Session, admin: AdminUser, step: int) -> bool:
    """Record `step` as used unless it or a later one was (one conditional UPDATE, so two
    requests racing with the same code cannot both win, in any process)."""
    claimed = session.execute(
        update(AdminUser)
        .where(
            AdminUser.id == admin.id,
            or_(AdminUser.totp_last_step.is_(None), AdminUser.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    admin.totp_last_step = step
    return True


def _hash_recovery_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, RECOVERY_CODE_LENGTH, 4))


def _replace_recovery_codes(session: Session, admin: AdminUser) -> list[str]:
    session.execute(delete(AdminRecoveryCode).where(AdminRecoveryCode.admin_id == admin.id))
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    moment = now()
    session.add_all(
        AdminRecoveryCode(
            admin_id=admin.id, code_hash=_hash_recovery_code(_normalized(code)), created_at=moment
        )
        for code in codes
    )
    session.flush()
    return codes


def enable(session: Session, admin: AdminUser, code: str, *, actor: Actor) -> list[str]:
    """Turn 2FA on once a code from the secret being set up is right; return the ten
    recovery codes (shown once: only their hashes are kept)."""
    if admin.two_factor_enabled:
        raise ProviderError("two-factor login is already on", "code")
    if admin.totp_secret is None:
        raise ProviderError("start the setup again: there is no secret to confirm", "code")
    step = _matching_step(_decrypt(admin.totp_secret), _normalized(code), now())
    if step is None or not _claim_step(session, admin, step):
        raise WrongCode()
    admin.totp_enabled_at = now()
    codes = _replace_recovery_codes(session, admin)
    audit.record(session, actor, "admin.2fa_enable", admin.email)
    return codes


def verify(session: Session, admin: AdminUser, code: str) -> SecondFactor:
    """Check a second factor: a TOTP code not used before, or an unused recovery code (then
    spent). Raise WrongCode otherwise. The caller commits."""
    if not admin.two_factor_enabled or admin.totp_secret is None:
        raise ProviderError("two-factor login is off for this admin", "code")
    normalized = _normalized(code)
    if not normalized:
        raise WrongCode()
    if TOTP_CODE.fullmatch(normalized):
        step = _matching_step(_decrypt(admin.totp_secret), normalized, now())
        if step is not None and _claim_step(session, admin, step):
            return SecondFactor.TOTP
        raise WrongCode()
    spent = session.execute(
        update(AdminRecoveryCode)
        .where(
            AdminRecoveryCode.admin_id == admin.id,
            AdminRecoveryCode.code_hash == _hash_recovery_code(normalized),
            AdminRecoveryCode.used_at.is_(None),
        )
        .values(used_at=now())
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount < 1:  # type: ignore[attr-defined]
        raise WrongCode()
    return SecondFactor.RECOVERY


def recovery_codes_left(session: Session, admin: AdminUser) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                AdminRecoveryCode.admin_id == admin.id, AdminRecoveryCode.used_at.is_(None)
            )
        )
        or 0
    )


def regenerate_recovery_codes(session: Session, admin: AdminUser, *, actor: Actor) -> list[str]:
    """Ten new recovery codes; the old ones stop working."""
    if not admin.two_factor_enabled:
        raise ProviderError("two-factor login is off", "code")
    codes = _replace_recovery_codes(session, admin)
    audit.record(session, actor, "admin.2fa_recovery_codes", admin.email)
    return codes


def _turn_off(session: Session, admin: AdminUser) -> None:
    admin.totp_secret = None
    admin.totp_enabled_at = None
    admin.totp_last_step = None
    session.execute(delete(AdminRecoveryCode).where(AdminRecoveryCode.admin_id == admin.id))
    session.flush()


def disable(session: Session, admin: AdminUser, *, required: bool, actor: Actor) -> None:
    """Turn 2FA off (the caller has checked a code or the password). Refused for a
    superadmin while ADMIN_2FA_REQUIRED (`required`) is on."""
    if not admin.two_factor_enabled:
        raise ProviderError("two-factor login is already off", "code")
    if required and admin.is_superadmin:
        raise ProviderError("two-factor login is required for superadmins here", "code")
    _turn_off(session, admin)
    audit.record(session, actor, "admin.2fa_disable", admin.email)


def reset(session: Session, admin: AdminUser, *, actor: Actor) -> bool:
    """Lost device: turn 2FA off (secret, recovery codes, remembered devices all void).
    False, and nothing audited, when it was not on nor being set up."""
    if admin.totp_secret is None and not admin.two_factor_enabled:
        return False
    _turn_off(session, admin)
    audit.record(session, actor, "admin.2fa_reset", admin.email)
    return True


def record_failure(session: Session, admin: AdminUser, actor: Actor, step: str) -> None:
    """Audit a wrong second factor (`step`: login, disable, recovery-codes)."""
    audit.record(session, actor, "admin.2fa_failed", admin.email, after={"step": step})


def record_recovery_use(session: Session, admin: AdminUser, actor: Actor) -> None:
    """Audit a login with a recovery code (the device may be lost: worth seeing)."""
    left = recovery_codes_left(session, admin)
    audit.record(session, actor, "admin.2fa_recovery_used", admin.email, after={"left": left})


def device_binding(admin: AdminUser) -> str:
    """What a remembered device's cookie is bound to: the admin, when 2FA was turned on, and
    the password hash, so a reset, a re-enable or a new password each void every such cookie."""
    enabled = admin.totp_enabled_at.isoformat() if admin.totp_enabled_at else ""
    material = f"{admin.id}|{enabled}|{admin.password_hash}".encode()
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, b"remember-device|" + material, hashlib.sha256).hexdigest()[:32]
