"""Password hashing (argon2id in Dovecot's {ARGON2ID} form), verification, rehash, policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
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

from provider.errors import InvalidInput, WeakPassword
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


# --- hashes brought from another system (the CSV import) -------------------------------------

# The Dovecot schemes verify_password checks, as a migration brings them (PostfixAdmin, mailcow,
# Modoboa, a Dovecot passwd-file): stored as they are, upgraded to argon2id at the first login.
IMPORTABLE_SCHEMES = (
    "{ARGON2ID}",
    "{ARGON2I}",
    "{SHA512-CRYPT}",
    "{SHA256-CRYPT}",
    "{BLF-CRYPT}",
    "{MD5-CRYPT}",
    "{CRYPT}",
    "{SSHA512}",
    "{SSHA256}",
    "{SSHA}",
    "{SHA512}",
    "{SHA256}",
    "{SHA}",
)
# A password in clear behind a scheme tag: hashed with argon2id like any password, never stored.
PLAINTEXT_SCHEMES = ("{PLAIN}", "{CLEARTEXT}")
# What makes a cell a hash rather than a password: `{WORD}` at its start (Dovecot's form).
SCHEME_TAG = re.compile(r"\{([A-Za-z0-9][A-Za-z0-9._-]*)\}")
# The highest costs an imported hash may carry. Every login, and every wrong guess, pays its
# cost until the first good login rehashes it: beyond these one login is about a second of CPU
# (bcrypt, SHA-crypt) or a quarter of a GiB (argon2: libsodium's MODERATE memory), a cheap
# lever for whoever guesses passwords.
MAX_IMPORTED_ARGON2_MEMORY_KIB = 262_144
MAX_IMPORTED_ARGON2_TIME_COST = 10
MAX_IMPORTED_ARGON2_PARALLELISM = 16
MAX_IMPORTED_BCRYPT_COST = 14
MAX_IMPORTED_SHA_CRYPT_ROUNDS = 1_000_000
# glibc clamps fewer rounds up to this and then writes another string: such a hash never matches.
MIN_SHA_CRYPT_ROUNDS = 1000

_B64 = "[A-Za-z0-9+/]"
_CRYPT64 = "[./0-9A-Za-z]"
_ARGON2_SHAPE = re.compile(
    rf"\$(argon2id|argon2i)\$v=19\$m=(\d{{1,10}}),t=(\d{{1,10}}),p=(\d{{1,3}})"
    rf"\$({_B64}{{11,}})\$({_B64}{{22,}})"
)
_CRYPT_SHAPES = {
    "$1$": re.compile(rf"\$1\${_CRYPT64}{{0,8}}\${_CRYPT64}{{22}}"),
    "$5$": re.compile(rf"\$5\$(?:rounds=(\d{{1,10}})\$)?{_CRYPT64}{{0,16}}\${_CRYPT64}{{43}}"),
    "$6$": re.compile(rf"\$6\$(?:rounds=(\d{{1,10}})\$)?{_CRYPT64}{{0,16}}\${_CRYPT64}{{86}}"),
    "$2": re.compile(rf"\$2[aby]\$(\d\d)\${_CRYPT64}{{53}}"),
}
_DES_SHAPE = re.compile(rf"{_CRYPT64}{{13}}")
# What each crypt scheme's hash looks like, for the error that says it does not.
_CRYPT_SCHEMES = {
    "{MD5-CRYPT}": ("$1$", "$1$salt$ and 22 characters"),
    "{SHA256-CRYPT}": ("$5$", "$5$[rounds=N$]salt$ and 43 characters"),
    "{SHA512-CRYPT}": ("$6$", "$6$[rounds=N$]salt$ and 86 characters"),
    "{BLF-CRYPT}": ("$2", "$2y$NN$ and 53 characters"),
}
# A setting of each crypt family at its lowest cost, to ask this system's crypt(3) once.
_CRYPT_PROBES = {
    "$1$": "$1$probe123",
    "$5$": "$5$probe123",
    "$6$": "$6$probe123",
    "$2": "$2b$04$abcdefghijklmnopqrstuu",
    "des": "pr",
}


@dataclass(frozen=True)
class ImportedPassword:
    """A password cell read: a password to hash, or a hash to store as it is (`scheme` set)."""

    password: str | None = None
    stored_hash: str | None = None
    scheme: str | None = None


def _b64_length(text: str) -> int | None:
    """Bytes in unpadded (or padded) base64 text, None if it is not base64."""
    try:
        return len(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    except ValueError:
        return None


@cache
def _crypt_understands(family: str) -> bool:
    """Whether this system's crypt(3) computes hashes of this family (asked once)."""
    setting = _CRYPT_PROBES[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return False
    result = crypt.crypt("probe", setting)
    return result is not None and result.startswith(setting) and len(result) > len(setting)


def _check_argon2(scheme: str, body: str) -> None:
    match = _ARGON2_SHAPE.fullmatch(body)
    expected = "argon2id" if scheme == "{ARGON2ID}" else "argon2i"
    if match is None and re.fullmatch(r"\$argon2i?d?\$v=\d+\$m=\d+", body):
        raise InvalidInput(
            f"not a valid {scheme} hash: it ends at m=…; an argon2 hash holds commas "
            "(m=…,t=…,p=…): put it in double quotes",
            "password",
        )
    if match is None or match.group(1) != expected:
        raise InvalidInput(
            f"not a valid {scheme} hash: expected ${expected}$v=19$m=…,t=…,p=…$salt$hash",
            "password",
        )
    memory, time_cost, lanes = (int(match.group(n)) for n in (2, 3, 4))
    salt, digest = _b64_length(match.group(5)), _b64_length(match.group(6))
    if salt is None or digest is None or salt < 8 or digest < 16:
        raise InvalidInput(f"not a valid {scheme} hash: its salt or hash is cut short", "password")
    if not 1 <= lanes <= MAX_IMPORTED_ARGON2_PARALLELISM or time_cost < 1 or memory < 8 * lanes:
        raise InvalidInput(f"not a valid {scheme} hash: impossible costs", "password")
    if memory > MAX_IMPORTED_ARGON2_MEMORY_KIB or time_cost > MAX_IMPORTED_ARGON2_TIME_COST:
        raise InvalidInput(
            f"{scheme} hash costs too much to check at every login (m={memory}, t={time_cost}; "
            f"at most m={MAX_IMPORTED_ARGON2_MEMORY_KIB}, t={MAX_IMPORTED_ARGON2_TIME_COST})",
            "password",
        )


def _crypt_family(body: str) -> tuple[str, re.Match[str]] | None:
    for family, shape in _CRYPT_SHAPES.items():
        if body.startswith(family):
            match = shape.fullmatch(body)
            return (family, match) if match else None
    match = _DES_SHAPE.fullmatch(body)
    return ("des", match) if match else None


def _check_crypt(scheme: str, body: str) -> None:
    found = _crypt_family(body)
    wanted = _CRYPT_SCHEMES.get(scheme)
    if found is None or (wanted is not None and found[0] != wanted[0]):
        shape = wanted[1] if wanted else "a crypt(3) string ($1$, $5$, $6$, $2y$ or 13 characters)"
        raise InvalidInput(f"not a valid {scheme} hash: expected {shape}", "password")
    family, match = found
    if family in ("$5$", "$6$") and match.group(1) is not None:
        rounds = match.group(1)
        if rounds.startswith("0") or int(rounds) < MIN_SHA_CRYPT_ROUNDS:
            raise InvalidInput(
                f"not a valid {scheme} hash: rounds={rounds} "
                f"(crypt(3) takes {MIN_SHA_CRYPT_ROUNDS} or more, without leading zeros)",
                "password",
            )
        if int(rounds) > MAX_IMPORTED_SHA_CRYPT_ROUNDS:
            raise InvalidInput(
                f"{scheme} hash costs too much to check at every login (rounds={rounds}; "
                f"at most {MAX_IMPORTED_SHA_CRYPT_ROUNDS})",
                "password",
            )
    if family == "$2":
        cost = int(match.group(1))
        if not 4 <= cost <= MAX_IMPORTED_BCRYPT_COST:
            raise InvalidInput(
                f"{scheme} hash cost {cost:02d} is outside 04 to {MAX_IMPORTED_BCRYPT_COST} "
                "(a higher one costs too much to check at every login)",
                "password",
            )
    if not _crypt_understands(family):
        raise InvalidInput(
            f"this server's crypt(3) cannot check {scheme} hashes of this kind", "password"
        )


def _check_digest(scheme: str, body: str) -> None:
    if scheme in _SALTED:
        size = _SALTED[scheme][1]
        length = _b64_length(body) if len(body) % 4 == 0 else None
        if length is None or length < size:
            raise InvalidInput(
                f"not a valid {scheme} hash: expected base64 of the {size}-byte digest "
                "and its salt",
                "password",
            )
        return
    size = hashlib.new(_PLAIN_DIGESTS[scheme]).digest_size
    if len(body) % 4 or _b64_length(body) != size:
        raise InvalidInput(
            f"not a valid {scheme} hash: expected base64 of a {size}-byte digest", "password"
        )


def _looks_like_untagged_hash(value: str) -> bool:
    if not value.startswith("$"):
        return False
    return _ARGON2_SHAPE.fullmatch(value) is not None or any(
        shape.fullmatch(value) for shape in _CRYPT_SHAPES.values()
    )


def read_imported_password(value: str) -> ImportedPassword:
    """Read a password given for a new mailbox in bulk (the CSV import): a password in clear,
    or a hash from another system in Dovecot's `{SCHEME}hash` form.

    A value starting with `{WORD}` is a hash: of one of IMPORTABLE_SCHEMES (the scheme
    upper-cased, the rest as given), checked to have that scheme's shape and a cost a login can
    afford, or an error naming the column. `{PLAIN}`/`{CLEARTEXT}` give a password in clear
    (the way to import a password that itself begins with `{WORD}`). A bare crypt or argon2
    string is refused: stored as a password, its owner could never log in with theirs.
    """
    tag = SCHEME_TAG.match(value)
    if tag is None:
        if _looks_like_untagged_hash(value):
            raise InvalidInput(
                "this looks like a password hash without its scheme: write it as "
                "{SHA512-CRYPT}$6$…, {BLF-CRYPT}$2y$…, {ARGON2ID}$argon2id$… (or {PLAIN} "
                "before a password that really is this text)",
                "password",
            )
        return ImportedPassword(password=value)
    scheme = "{" + tag.group(1).upper() + "}"
    body = value[tag.end() :]
    if scheme in PLAINTEXT_SCHEMES:
        return ImportedPassword(password=body)
    if scheme not in IMPORTABLE_SCHEMES:
        raise InvalidInput(
            f"unknown password scheme {scheme}: a hash must be {', '.join(IMPORTABLE_SCHEMES)} "
            "(write {PLAIN} before a password that begins with {…})",
            "password",
        )
    if scheme in ("{ARGON2ID}", "{ARGON2I}"):
        _check_argon2(scheme, body)
    elif scheme in _SALTED or scheme in _PLAIN_DIGESTS:
        _check_digest(scheme, body)
    else:
        _check_crypt(scheme, body)
    return ImportedPassword(stored_hash=scheme + body, scheme=scheme)


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
