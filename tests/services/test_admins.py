"""Admin accounts: the first admin, domain admins, passwords and the last superadmin."""

from __future__ import annotations

import pytest

from provider.errors import AlreadyExists, InvalidInput, ProviderError
from provider.services import admins, auth
from tests.conftest import TEST_ACTOR, make_admin, make_domain


def test_first_admin_is_made_once_with_a_generated_password(session):
    first = admins.ensure_first_admin(session, "Ops@Example.com", None)
    session.commit()
    assert first.created and first.admin.is_superadmin and first.admin.email == "ops@example.com"
    assert first.generated_password and len(first.generated_password) >= 16
    assert auth.authenticate_admin(session, "ops@example.com", first.generated_password)
    again = admins.ensure_first_admin(session, "other@example.com", None)
    assert not again.created and again.generated_password is None
    assert again.admin.id == first.admin.id


def test_first_admin_takes_a_given_password(session):
    first = admins.ensure_first_admin(session, "ops@example.com", "a given passphrase")
    assert first.generated_password is None
    assert auth.authenticate_admin(session, "ops@example.com", "a given passphrase")


def test_domain_admin_needs_a_domain(session):
    with pytest.raises(InvalidInput, match="at least one domain"):
        admins.create_admin(
            session, "d@example.com", "a long passphrase", superadmin=False, actor=TEST_ACTOR
        )


def test_domain_admin_manages_only_its_domains(session):
    mine, other = make_domain(session, "mine.test"), make_domain(session, "other.test")
    admin = make_admin(session, "d@example.com", superadmin=False, domains=[mine])
    assert admin.can_manage(mine.id) and not admin.can_manage(other.id)
    assert admin.managed_domain_ids() == {mine.id}
    assert make_admin(session, "s@example.com").managed_domain_ids() is None


def test_duplicate_admin_is_refused(session):
    make_admin(session, "d@example.com")
    with pytest.raises(AlreadyExists):
        make_admin(session, "D@example.com")


def test_password_change_ends_existing_sessions(session):
    admin = make_admin(session)
    epoch = admin.session_epoch
    admins.set_admin_password(session, admin, "another long passphrase", actor=TEST_ACTOR)
    assert admin.session_epoch == epoch + 1


def test_last_superadmin_cannot_be_deleted(session):
    admin = make_admin(session)
    with pytest.raises(ProviderError, match="last superadmin"):
        admins.delete_admin(session, admin, actor=TEST_ACTOR)
    second = make_admin(session, "two@example.com")
    admins.delete_admin(session, second, actor=TEST_ACTOR)


def test_inactive_admin_cannot_log_in(session):
    admin = make_admin(session)
    admin.active = False
    session.commit()
    assert auth.authenticate_admin(session, admin.email, "correct horse battery staple") is None
