"""Password hashing (argon2id in Dovecot's {ARGON2ID} form), verification, rehash, policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION
from flask import current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.errors import WeakPassword
from provider.models import AdminUser, Mailbox
from provider.services import daily_stats

SCHEME = "{ARGON2ID}"
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True)
class HashParams:
    """argon2id cost parameters."""

    memory_kib: int = 19456
    time_cost: int = 2
    parallelism: int = 1


@dataclass(frozen=True)
class Verification:
    """Result of checking a password: ok, and a fresh hash to store when the old one is weak."""

    ok: bool
    new_hash: str | None = None


def current_params() -> HashParams:
    if not has_app_context():
        return HashParams()
    config = current_app.config
    return HashParams(
        int(config["PASSWORD_HASH_MEMORY_KIB"]),
        int(config["PASSWORD_HASH_TIME_COST"]),
        int(config["PASSWORD_HASH_PARALLELISM"]),
    )


@cache
def _hasher(params: HashParams) -> PasswordHasher:
    return PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        type=Type.ID,
    )


def hash_password(password: str, params: HashParams | None = None) -> str:
    """Hash with argon2id, stored as Dovecot does: `{ARGON2ID}$argon2id$v=19$m=…`."""
    return SCHEME + _hasher(params or current_params()).hash(password)


@cache
def _dummy_hash(params: HashParams) -> str:
    return hash_password("not-a-real-password", params)


def burn_dummy_verification() -> None:
    """Spend the same work as a real check, so an unknown user answers as slowly as a known one."""
    verify_password(_dummy_hash(current_params()), "wrong-password-for-timing")


def _argon2_is_weak(encoded: str, params: HashParams) -> bool:
    header = encoded.split("$")
    # ['', 'argon2id', 'v=19', 'm=…,t=…,p=…', salt, hash]
    if len(header) != 6 or header[1] != "argon2id" or header[2] != f"v={ARGON2_VERSION}":
        return True
    costs = dict(part.split("=", 1) for part in header[3].split(","))
    return int(costs.get("m", 0)) < params.memory_kib or int(costs.get("t", 0)) < params.time_cost


def _verify_salted_digest(encoded: str, password: str, algorithm: str, size: int) -> bool:
    raw = base64.b64decode(encoded, validate=True)
    digest, salt = raw[:size], raw[size:]
    candidate = hashlib.new(algorithm, password.encode() + salt).digest()
    return hmac.compare_digest(candidate, digest)


def _verify_crypt(encoded: str, password: str) -> bool:
    # The crypt module is deprecated (gone in 3.13); kept only to import old Dovecot hashes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return False
    computed = crypt.crypt(password, encoded)
    return computed is not None and hmac.compare_digest(computed, encoded)


_SALTED = {"{SSHA512}": ("sha512", 64), "{SSHA256}": ("sha256", 32), "{SSHA}": ("sha1", 20)}
_PLAIN_DIGESTS = {"{SHA512}": "sha512", "{SHA256}": "sha256", "{SHA}": "sha1"}
_CRYPT = ("{SHA512-CRYPT}", "{SHA256-CRYPT}", "{BLF-CRYPT}", "{CRYPT}", "{MD5-CRYPT}")


def verify_password(stored: str, password: str, params: HashParams | None = None) -> Verification:
    """Check a password against a stored hash of any scheme Dovecot setups commonly hold.

    Anything but argon2id at the current cost counts as weak: on success, `new_hash` is set
    so that the caller can store it (rehash on login).
    """
    params = params or current_params()
    if len(password) > MAX_PASSWORD_LENGTH:
        return Verification(False)
    scheme, _, body = stored.partition("}")
    scheme = scheme + "}" if body else ""
    encoded = body if scheme else stored
    try:
        if scheme in ("", "{ARGON2ID}", "{ARGON2I}") and encoded.startswith("$argon2"):
            ok = _hasher(params).verify(encoded, password)
            weak = scheme != SCHEME or _argon2_is_weak(encoded, params)
        elif scheme in _SALTED:
            ok, weak = _verify_salted_digest(encoded, password, *_SALTED[scheme]), True
        elif scheme in _PLAIN_DIGESTS:
            digest = hashlib.new(_PLAIN_DIGESTS[scheme], password.encode()).digest()
            ok, weak = hmac.compare_digest(base64.b64encode(digest).decode(), encoded), True
        elif scheme in _CRYPT:
            ok, weak = _verify_crypt(encoded, password), True
        elif scheme in ("{PLAIN}", "{CLEARTEXT}"):
            ok, weak = hmac.compare_digest(encoded.encode(), password.encode()), True
        else:
            return Verification(False)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
        return Verification(False)
    if not ok:
        return Verification(False)
    return Verification(True, hash_password(password, params) if weak else None)


@cache
def _common_passwords() -> frozenset[str]:
    text = resources.files("provider").joinpath("data/common-passwords.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def check_password_policy(
    password: str, *, address: str = "", min_length: int | None = None
) -> None:
    """Refuse passwords that are too short, too long, common, or the address itself (ASVS V6.2)."""
    if min_length is None:
        min_length = int(current_app.config["PASSWORD_MIN_LENGTH"]) if has_app_context() else 8
    if len(password) < min_length:
        raise WeakPassword(f"password must be at least {min_length} characters", "password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"password must be at most {MAX_PASSWORD_LENGTH} characters", "password")
    lowered = password.lower()
    if lowered in _common_passwords():
        raise WeakPassword("password is too common; choose another", "password")
    if address and lowered in {address.lower(), address.lower().split("@")[0]}:
        raise WeakPassword("password must not be the address", "password")


class VerifiedPasswords:
    """A short memory of passwords that matched a stored hash, so that a mail client opening
    several connections, or reconnecting every few minutes, costs one argon2id verification
    per `ttl` seconds rather than one per login (PingDirectory's "encoded password cache";
    Dovecot's auth cache serves the same purpose).

    Only successes are kept, so a wrong password or an unknown user always costs the full
    verification (RELIABILITY A3 timing holds). An entry is keyed by the stored hash itself,
    so a password change (a new hash) makes it useless at once, and holds an HMAC of the
    password under a random per-process key, never the password. Memory only, bounded.
    """

    def __init__(
        self, ttl: float, max_entries: int = 20000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, stored: str, password: str) -> bytes:
        message = stored.encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def matches(self, stored: str, password: str) -> bool:
        if self.ttl <= 0:
            return False
        with self._lock:
            entry = self._entries.get(stored)
        if entry is None or self.clock() >= entry[0]:
            return False
        return hmac.compare_digest(entry[1], self._digest(stored, password))

    def remember(self, stored: str, password: str) -> None:
        if self.ttl <= 0:
            return
        entry = (self.clock() + self.ttl, self._digest(stored, password))
        with self._lock:
            self._entries[stored] = entry
            self._entries.move_to_end(stored)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def verified_passwords() -> VerifiedPasswords:
    """The app's VerifiedPasswords (MAILBOX_AUTH_CACHE_SECONDS; 0 turns it off)."""
    cache_ = current_app.extensions.get("verified_passwords")
    if cache_ is None:
        ttl = float(current_app.config["MAILBOX_AUTH_CACHE_SECONDS"])
        cache_ = current_app.extensions["verified_passwords"] = VerifiedPasswords(ttl)
    return cache_  # type: ignore[no-any-return]


def authenticate_mailbox(session: Session, address: str, password: str) -> Mailbox | None:
    """Return the mailbox if the password is right; None otherwise, after the same work either way.

    The protocol policy (which protocols, status) is the caller's next check, made only after
    this succeeds, so that a wrong password never reveals anything about the mailbox.
    """
    # No address holds NUL, and PostgreSQL cannot even compare text with one: nobody, at once
    # (POP3 USER, IMAP LOGIN, submission AUTH, ManageSieve and the web all come here).
    wanted = address.strip().lower()
    mailbox = None
    if "\0" not in wanted:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.address == wanted))
    if mailbox is None:
        burn_dummy_verification()
        daily_stats.count("failed_logins")
        return None
    remembered = verified_passwords()
    if remembered.matches(mailbox.password_hash, password):
        return mailbox
    result = verify_password(mailbox.password_hash, password)
    if not result.ok:
        daily_stats.count("failed_logins")
        return None
    if result.new_hash:
        mailbox.password_hash = result.new_hash
    else:
        remembered.remember(mailbox.password_hash, password)
    return mailbox


def authenticate_admin(session: Session, email: str, password: str) -> AdminUser | None:
    """Return the active admin with these credentials, or None after the same amount of work."""
    wanted = email.strip().lower()
    admin = None
    if "\0" not in wanted:
        admin = session.scalar(select(AdminUser).where(AdminUser.email == wanted))
    if admin is None:
        burn_dummy_verification()
        daily_stats.count("failed_logins")
        return None
    result = verify_password(admin.password_hash, password)
    if not result.ok or not admin.active:
        daily_stats.count("failed_logins")
        return None
    if result.new_hash:
        admin.password_hash = result.new_hash
    return admin
