"""Password hashing, verification of imported schemes, rehash, policy and login timing."""

from __future__ import annotations

import base64
import hashlib
import statistics
import time

import pytest
from argon2 import PasswordHasher, Type
from sqlalchemy import select

from provider.errors import InvalidInput, WeakPassword
from provider.models import Mailbox
from provider.services import auth
from provider.services.auth import HashParams
from tests.conftest import MAILBOX_PASSWORD, make_mailbox

PARAMS = HashParams(19456, 2, 1)


def test_hash_is_argon2id_in_dovecot_form_with_asvs_costs():
    stored = auth.hash_password("a passphrase", PARAMS)
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$")
    assert auth.verify_password(stored, "a passphrase", PARAMS) == auth.Verification(True, None)


def test_wrong_password_does_not_verify():
    stored = auth.hash_password("a passphrase", PARAMS)
    assert not auth.verify_password(stored, "a passphrasE", PARAMS).ok
    assert not auth.verify_password(stored, "", PARAMS).ok


def test_passwords_differing_only_at_byte_80_do_not_match():
    long = "x" * 79
    stored = auth.hash_password(long + "a", PARAMS)
    assert not auth.verify_password(stored, long + "b", PARAMS).ok


def test_weaker_argon2_hash_verifies_and_is_rehashed():
    weak = auth.hash_password("a passphrase", HashParams(8192, 1, 1))
    result = auth.verify_password(weak, "a passphrase", PARAMS)
    assert result.ok
    assert result.new_hash and result.new_hash.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2")


def test_stronger_argon2_hash_is_left_alone():
    strong = auth.hash_password("a passphrase", HashParams(65536, 3, 1))
    assert auth.verify_password(strong, "a passphrase", PARAMS) == auth.Verification(True, None)


def _ssha512(password: str, salt: bytes) -> str:
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


def _sha512_crypt(password: str) -> str:
    crypt = pytest.importorskip("crypt", reason="no crypt module on this Python")
    return "{SHA512-CRYPT}" + crypt.crypt(password, "$6$abcdefgh")


@pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "make_stored",
    [
        lambda: _ssha512("imported secret", b"saltsalt"),
        lambda: "{SHA256}" + base64.b64encode(hashlib.sha256(b"imported secret").digest()).decode(),
        lambda: "{PLAIN}imported secret",
        lambda: _sha512_crypt("imported secret"),
    ],
    ids=["ssha512", "sha256", "plain", "sha512-crypt"],
)
def test_imported_dovecot_schemes_verify_and_are_upgraded(make_stored):
    stored = make_stored()
    result = auth.verify_password(stored, "imported secret", PARAMS)
    assert result.ok
    assert result.new_hash and result.new_hash.startswith("{ARGON2ID}")
    assert not auth.verify_password(stored, "imported secreT", PARAMS).ok


@pytest.mark.parametrize("stored", ["", "garbage", "{MD5}abc", "{ARGON2ID}$argon2id$broken"])
def test_unknown_or_broken_hashes_never_verify(stored):
    assert not auth.verify_password(stored, "anything", PARAMS).ok


def test_overlong_password_is_refused_without_hashing():
    stored = auth.hash_password("a" * 1024, PARAMS)
    assert auth.verify_password(stored, "a" * 1024, PARAMS).ok
    assert not auth.verify_password(stored, "a" * 1025, PARAMS).ok


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "at least 8"),
        ("1234567", "at least 8"),
        ("password1", "too common"),
        ("Qwerty123", "too common"),
        ("alice@example.test", "must not be the address"),
        ("x" * 1025, "at most 1024"),
    ],
)
def test_password_policy_refuses(password, message):
    with pytest.raises(WeakPassword, match=message):
        auth.check_password_policy(password, address="alice@example.test", min_length=8)


@pytest.mark.parametrize("password", ["eight ch", "a" * 64 + "ü" * 100, "Tr0ub4dor&3 but longer"])
def test_password_policy_accepts_passphrases_without_composition_rules(password):
    auth.check_password_policy(password, address="alice@example.test", min_length=8)


def test_authenticate_mailbox_accepts_right_password_case_insensitive_address(session):
    make_mailbox(session)
    assert auth.authenticate_mailbox(session, "Alice@Example.TEST", MAILBOX_PASSWORD) is not None
    assert auth.authenticate_mailbox(session, "alice@example.test", "wrong password!") is None
    assert auth.authenticate_mailbox(session, "nobody@example.test", MAILBOX_PASSWORD) is None


def test_login_rehashes_a_weak_stored_hash(session):
    mailbox = make_mailbox(session)
    mailbox.password_hash = auth.hash_password(MAILBOX_PASSWORD, HashParams(8192, 1, 1))
    session.commit()
    assert auth.authenticate_mailbox(session, mailbox.address, MAILBOX_PASSWORD)
    session.commit()
    stored = session.scalar(select(Mailbox.password_hash).where(Mailbox.id == mailbox.id))
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$")


def test_mail_login_commits_a_rehash_and_reloads_nothing_otherwise(session):
    from sqlalchemy import event

    from provider.services import mail_access

    mailbox = make_mailbox(session)
    mailbox.password_hash = auth.hash_password(MAILBOX_PASSWORD, HashParams(8192, 1, 1))
    session.commit()
    mail_access.login(session, mailbox.address, MAILBOX_PASSWORD, "imap")
    session.expire_all()
    stored = session.scalar(select(Mailbox.password_hash).where(Mailbox.id == mailbox.id))
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$")
    session.rollback()

    address, mailbox_id = mailbox.address, mailbox.id
    statements: list[str] = []
    engine = session.get_bind()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        found = mail_access.login(session, address, MAILBOX_PASSWORD, "imap")
        assert (found.address, found.id) == (address, mailbox_id)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    # The lookup only: no commit expired the mailbox, so the policy check and the caller's
    # reads of address and id load nothing again.
    assert len(statements) == 1, statements


def test_unknown_user_costs_as_much_as_a_wrong_password(session):
    """Timing must not reveal whether a mailbox exists (RELIABILITY A3): medians within 25 %."""
    make_mailbox(session)

    def relative_difference() -> float:
        samples: dict[str, list[float]] = {"alice@example.test": [], "nobody@example.test": []}
        # Interleaved, so a load that comes and goes on the machine (CI runs two suites side
        # by side) weighs on both alike instead of on whichever ran second.
        for _ in range(11):
            for address, taken in samples.items():
                started = time.perf_counter()
                assert auth.authenticate_mailbox(session, address, "a wrong password") is None
                taken.append(time.perf_counter() - started)
        known, unknown = (statistics.median(taken) for taken in samples.values())
        return abs(known - unknown) / max(known, unknown)

    # Under CI's load one series in many strays past 25 % (seen once: 25.4 %, medians of 80
    # and 107 ms); a real difference (a skipped verification) shows in every series.
    differences = []
    for _ in range(3):
        differences.append(relative_difference())
        if differences[-1] < 0.25:
            break
    assert differences[-1] < 0.25, differences


class CountingVerifier:
    """Counts full (argon2id) verifications made through auth.verify_password."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = auth.verify_password

        def counting(stored: str, password: str, params: HashParams | None = None):
            self.calls += 1
            return real(stored, password, params)

        monkeypatch.setattr(auth, "verify_password", counting)


def test_a_matched_mailbox_password_skips_argon2_on_the_next_login(session, monkeypatch):
    make_mailbox(session)
    verifier = CountingVerifier(monkeypatch)
    for _ in range(3):
        assert auth.authenticate_mailbox(session, "alice@example.test", MAILBOX_PASSWORD)
    assert verifier.calls == 1


def test_a_wrong_password_is_never_answered_from_memory(session, monkeypatch):
    make_mailbox(session)
    assert auth.authenticate_mailbox(session, "alice@example.test", MAILBOX_PASSWORD)
    verifier = CountingVerifier(monkeypatch)
    for _ in range(2):
        assert auth.authenticate_mailbox(session, "alice@example.test", "a wrong password") is None
    assert verifier.calls == 2  # full work each time, as for an unknown user (A3)


def test_a_new_password_voids_what_was_remembered_of_the_old_one(session):
    mailbox = make_mailbox(session)
    assert auth.authenticate_mailbox(session, mailbox.address, MAILBOX_PASSWORD)
    mailbox.password_hash = auth.hash_password("the new passphrase")
    session.commit()
    assert auth.authenticate_mailbox(session, mailbox.address, MAILBOX_PASSWORD) is None
    assert auth.authenticate_mailbox(session, mailbox.address, "the new passphrase")


def test_remembered_passwords_expire_and_can_be_turned_off():
    moment = [1000.0]
    remembered = auth.VerifiedPasswords(ttl=600, clock=lambda: moment[0])
    remembered.remember("{ARGON2ID}stored", "secret")
    assert remembered.matches("{ARGON2ID}stored", "secret")
    assert not remembered.matches("{ARGON2ID}stored", "Secret")
    assert not remembered.matches("{ARGON2ID}other", "secret")
    moment[0] += 600
    assert not remembered.matches("{ARGON2ID}stored", "secret")
    off = auth.VerifiedPasswords(ttl=0)
    off.remember("{ARGON2ID}stored", "secret")
    assert not off.matches("{ARGON2ID}stored", "secret")


def test_remembered_passwords_are_bounded_and_hold_no_password():
    remembered = auth.VerifiedPasswords(ttl=600, max_entries=2)
    for n in range(3):
        remembered.remember(f"stored{n}", "a passphrase")
    assert not remembered.matches("stored0", "a passphrase")
    assert remembered.matches("stored2", "a passphrase")
    assert all(b"a passphrase" not in digest for _, digest in remembered._entries.values())


def test_nul_in_a_login_name_is_nobody_on_every_database(session):
    """PostgreSQL refuses to compare text with NUL: the lookup must not even be tried (POP3
    USER, submission AUTH and the panels reach this with whatever bytes a client sends)."""
    from provider.services.auth import authenticate_admin, authenticate_mailbox
    from tests.conftest import MAILBOX_PASSWORD, make_admin, make_mailbox

    make_mailbox(session, "alice@example.test")
    make_admin(session)
    assert authenticate_mailbox(session, "alice@example.test\0", MAILBOX_PASSWORD) is None
    assert authenticate_mailbox(session, "\0", "x") is None
    assert authenticate_admin(session, "root@example.com\0x", "x") is None
    assert authenticate_mailbox(session, "alice@example.test", MAILBOX_PASSWORD) is not None


# --- hashes brought by an import (auth.read_imported_password) -------------------------------


def _crypt(password: str, setting: str) -> str:
    crypt = pytest.importorskip("crypt", reason="no crypt module on this Python")
    return crypt.crypt(password, setting)


def _ssha(scheme: str, algorithm: str, password: str, salt: bytes) -> str:
    digest = hashlib.new(algorithm, password.encode() + salt).digest()
    return scheme + base64.b64encode(digest + salt).decode()


def _importable_hashes(password: str) -> dict[str, str]:
    argon2i = PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1, type=Type.I)
    return {
        "{ARGON2ID}": auth.hash_password(password, HashParams(8192, 1, 1)),
        "{ARGON2I}": "{ARGON2I}" + argon2i.hash(password),
        "{SHA512-CRYPT}": "{SHA512-CRYPT}" + _crypt(password, "$6$rounds=6000$abcdefgh"),
        "{SHA256-CRYPT}": "{SHA256-CRYPT}" + _crypt(password, "$5$abcdefgh"),
        "{BLF-CRYPT}": "{BLF-CRYPT}" + _crypt(password, "$2y$05$abcdefghijklmnopqrstuu"),
        "{MD5-CRYPT}": "{MD5-CRYPT}" + _crypt(password, "$1$abcdefgh"),
        "{CRYPT}": "{CRYPT}" + _crypt(password, "ab"),
        "{SSHA512}": _ssha("{SSHA512}", "sha512", password, b"saltsalt"),
        "{SSHA256}": _ssha("{SSHA256}", "sha256", password, b"saltsalt"),
        "{SSHA}": _ssha("{SSHA}", "sha1", password, b"saltsalt"),
        "{SHA512}": "{SHA512}"
        + base64.b64encode(hashlib.sha512(password.encode()).digest()).decode(),
        "{SHA256}": "{SHA256}"
        + base64.b64encode(hashlib.sha256(password.encode()).digest()).decode(),
        "{SHA}": "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode(),
    }


def test_every_scheme_verify_password_knows_imports_and_then_verifies_and_rehashes():
    hashes = _importable_hashes("an old passphrase")
    assert sorted(hashes) == sorted(auth.IMPORTABLE_SCHEMES)
    for scheme, stored in hashes.items():
        read = auth.read_imported_password(stored)
        assert read == auth.ImportedPassword(stored_hash=stored, scheme=scheme)
        result = auth.verify_password(stored, "an old passphrase", PARAMS)
        assert result.ok and result.new_hash and result.new_hash.startswith("{ARGON2ID}"), scheme
        assert not auth.verify_password(stored, "another passphrase", PARAMS).ok


def test_a_scheme_in_lower_case_is_read_and_stored_in_upper_case():
    stored = _importable_hashes("pw")["{SHA512-CRYPT}"]
    lower = "{sha512-crypt}" + stored.removeprefix("{SHA512-CRYPT}")
    assert auth.read_imported_password(lower).stored_hash == stored


def test_plain_and_cleartext_give_a_password_in_clear_to_hash():
    assert auth.read_imported_password("{PLAIN}{braces} first") == auth.ImportedPassword(
        password="{braces} first"
    )
    assert auth.read_imported_password("{CLEARTEXT}x").password == "x"
    # No tag at its start: a password, braces or not.
    for value in ("a plain passphrase", "{not a tag} here", "{}empty", "pass{SHA}word"):
        assert auth.read_imported_password(value) == auth.ImportedPassword(password=value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{MD5}1B2M2Y8AsgTpgAmY7PhCfg==", "unknown password scheme {MD5}"),
        ("{SHA512.HEX}abcdef", "unknown password scheme {SHA512.HEX}"),
        ("{PBKDF2}$1$abc$1000$def", "unknown password scheme {PBKDF2}"),
        ("{abc}defgh123", "write {PLAIN} before a password that begins with {…}"),
        ("{SHA512-CRYPT}", "not a valid {SHA512-CRYPT} hash"),
        ("{SHA512-CRYPT}$6$salt$tooshort", "not a valid {SHA512-CRYPT} hash"),
        ("{SHA512-CRYPT}$5$abcdefgh$" + "a" * 43, "not a valid {SHA512-CRYPT} hash"),
        ("{SHA512-CRYPT}$6$rounds=999$abc$" + "a" * 86, "rounds=999"),
        ("{SHA512-CRYPT}$6$rounds=05000$abc$" + "a" * 86, "rounds=05000"),
        ("{SHA512-CRYPT}$6$rounds=999999999$abc$" + "a" * 86, "costs too much"),
        ("{SHA256-CRYPT}$5$rounds=1000001$abc$" + "a" * 43, "costs too much"),
        ("{BLF-CRYPT}$2y$31$" + "a" * 53, "cost 31 is outside 04 to 14"),
        ("{BLF-CRYPT}$2y$03$" + "a" * 53, "cost 03 is outside 04 to 14"),
        ("{BLF-CRYPT}$2q$10$" + "a" * 53, "not a valid {BLF-CRYPT} hash"),
        ("{MD5-CRYPT}$1$abcdefghi$" + "a" * 22, "not a valid {MD5-CRYPT} hash"),
        ("{CRYPT}abc", "not a valid {CRYPT} hash"),
        ("{SSHA512}not base64!", "not a valid {SSHA512} hash"),
        ("{SSHA512}" + base64.b64encode(b"x" * 63).decode(), "not a valid {SSHA512} hash"),
        ("{SHA256}" + base64.b64encode(b"x" * 31).decode(), "32-byte digest"),
        ("{SHA256}" + hashlib.sha256(b"x").hexdigest(), "32-byte digest"),
        ("{ARGON2ID}$argon2i$v=19$m=8192,t=2,p=1$c2FsdHNhbHQ$" + "A" * 43, "expected $argon2id"),
        ("{ARGON2I}$argon2id$v=19$m=8192,t=2,p=1$c2FsdHNhbHQ$" + "A" * 43, "expected $argon2i$"),
        ("{ARGON2ID}$argon2id$v=16$m=8192,t=2,p=1$c2FsdHNhbHQ$" + "A" * 43, "not a valid"),
        ("{ARGON2ID}$argon2id$v=19$m=8192,t=2,p=1$c2FsdA$" + "A" * 43, "not a valid"),
        ("{ARGON2ID}$argon2id$v=19$m=8192,t=2,p=1$c2FsdHNhbHQ$AAAA", "not a valid"),
        ("{ARGON2ID}$argon2id$v=19$m=4,t=2,p=1$c2FsdHNhbHQ$" + "A" * 43, "impossible costs"),
        ("{ARGON2ID}$argon2id$v=19$m=8192,t=0,p=1$c2FsdHNhbHQ$" + "A" * 43, "impossible"),
        ("{ARGON2ID}$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$" + "A" * 43, "too much"),
        ("{ARGON2ID}$argon2id$v=19$m=8192,t=4000000000,p=1$c2FsdHNhbHQ$" + "A" * 43, "too much"),
        ("{ARGON2ID}$argon2id$v=19$m=19456", "put it in double quotes"),
    ],
)
def test_a_malformed_unknown_or_too_costly_hash_is_refused_with_its_reason(value, words):
    with pytest.raises(InvalidInput) as refused:
        auth.read_imported_password(value)
    assert words in refused.value.message and refused.value.field == "password"


def test_a_bare_crypt_or_argon2_string_is_refused_rather_than_taken_for_a_password():
    hashes = _importable_hashes("pw")
    for scheme in ("{SHA512-CRYPT}", "{BLF-CRYPT}", "{MD5-CRYPT}", "{ARGON2ID}"):
        with pytest.raises(InvalidInput, match="without its scheme"):
            auth.read_imported_password(hashes[scheme].removeprefix(scheme))
    # {PLAIN} takes it as a password after all; a `$` password of another shape is a password.
    bare = hashes["{SHA512-CRYPT}"].removeprefix("{SHA512-CRYPT}")
    assert auth.read_imported_password("{PLAIN}" + bare).password == bare
    assert auth.read_imported_password("$6$ is my password").password == "$6$ is my password"


def test_a_hash_the_system_crypt_cannot_compute_is_refused(monkeypatch):
    monkeypatch.setattr(auth, "_crypt_understands", lambda family: family != "$2")
    stored = _importable_hashes("pw")["{BLF-CRYPT}"]
    with pytest.raises(InvalidInput, match="crypt\\(3\\) cannot check"):
        auth.read_imported_password(stored)
