"""Password hashing, verification of imported schemes, rehash, policy and login timing."""

from __future__ import annotations

import base64
import hashlib
import statistics
import time

import pytest
from sqlalchemy import select

from provider.errors import WeakPassword
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
    samples: dict[str, list[float]] = {"alice@example.test": [], "nobody@example.test": []}
    # Interleaved, so a load that comes and goes on the machine (CI runs two suites side by
    # side) weighs on both alike instead of on whichever ran second.
    for _ in range(11):
        for address, taken in samples.items():
            started = time.perf_counter()
            assert auth.authenticate_mailbox(session, address, "a wrong password") is None
            taken.append(time.perf_counter() - started)
    known, unknown = (statistics.median(taken) for taken in samples.values())
    assert abs(known - unknown) / max(known, unknown) < 0.25


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
