"""API tokens: `provider token create|list|revoke`, hashing, expiry, allow-lists, the audit."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from provider.models import ApiToken, AuditEvent
from provider.services import admins, clock, tokens
from tests.conftest import TEST_ACTOR, make_admin, make_domain


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines


def test_create_shows_the_secret_once_and_keeps_only_its_hash(runner, session):
    make_admin(session)
    result = runner.invoke(
        args=[
            "token",
            "create",
            "--admin",
            "root@example.com",
            "--name",
            "billing",
            "--scope",
            "write",
            "--expires",
            "30",
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    secret = made["token"]
    assert secret.startswith("pvd_") and len(secret) > 40
    assert made["scope"] == "write" and made["name"] == "billing"
    assert made["prefix"] == secret[4:12]
    stored = session.scalars(select(ApiToken)).one()
    assert stored.secret_hash == tokens.hash_secret(secret) and secret not in str(stored.to_dict())
    listed = json.loads(runner.invoke(args=["token", "list", "--json"]).output)
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
    text = runner.invoke(args=["token", "list"]).output
    assert "billing" in text and secret not in text and f"pvd_{secret[4:12]}…" in text
    [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "token.create"))
    assert event.actor == "cli" and secret not in json.dumps(event.after)


def test_a_token_authenticates_until_revoked_or_expired(runner, session):
    admin = make_admin(session)
    made = tokens.create_token(session, admin, name="b", expires_days=2, actor=TEST_ACTOR)
    session.commit()
    assert tokens.authenticate(session, made.secret, "192.0.2.1").id == made.token.id
    assert made.token.last_used_ip == "192.0.2.1"
    for wrong in ("", "pvd_", made.secret + "x", "Bearer " + made.secret, "pvd_" + "a" * 300):
        with pytest.raises(tokens.TokenRefused, match="not valid"):
            tokens.authenticate(session, wrong, "192.0.2.1")
    start = clock.now()
    try:
        clock.set_now(start + timedelta(days=2, seconds=1))
        with pytest.raises(tokens.TokenRefused):
            tokens.authenticate(session, made.secret, None)
    finally:
        clock.set_now(None)
    other = tokens.create_token(session, admin, name="c", actor=TEST_ACTOR)
    session.commit()
    result = runner.invoke(args=["token", "revoke", str(other.token.id)])
    assert result.exit_code == 0 and "revoked token" in result.output
    session.expire_all()
    with pytest.raises(tokens.TokenRefused):
        tokens.authenticate(session, other.secret, None)
    assert runner.invoke(args=["token", "revoke", str(other.token.id)]).exit_code == 0
    assert (
        len(list(session.scalars(select(AuditEvent).where(AuditEvent.action == "token.revoke"))))
        == 1
    )
    # An admin who is deactivated takes their tokens down with them.
    third = tokens.create_token(session, admin, name="d", actor=TEST_ACTOR)
    admin.active = False
    session.commit()
    with pytest.raises(tokens.TokenRefused):
        tokens.authenticate(session, third.secret, None)


def test_allow_list_limits_where_a_token_works(session):
    admin = make_admin(session)
    made = tokens.create_token(
        session, admin, name="b", allowed_ips=["192.0.2.0/24", "2001:db8::1"], actor=TEST_ACTOR
    )
    session.commit()
    assert made.token.allowed_ips == ["192.0.2.0/24", "2001:db8::1/128"]
    for allowed in ("192.0.2.77", "::ffff:192.0.2.5", "2001:db8::1"):
        tokens.authenticate(session, made.secret, allowed)
    for refused in ("198.51.100.1", None, "not an ip", "2001:db8::2"):
        with pytest.raises(tokens.TokenNotFromHere):
            tokens.authenticate(session, made.secret, refused)


def test_bad_input_is_one_line_and_exit_1(runner, session):
    make_admin(session)
    domain_admin = make_admin(
        session, "dom@example.test", superadmin=False, domains=[make_domain(session)]
    )
    assert domain_admin.id
    base = ["token", "create", "--admin"]
    assert_one_line_error(runner.invoke(args=[*base, "nobody@example.test"]), "nobody@example.test")
    assert_one_line_error(
        runner.invoke(args=[*base, "root@example.com", "--expires", "0"]), "expiry must be 1 to"
    )
    assert_one_line_error(
        runner.invoke(args=[*base, "root@example.com", "--allow-ip", "300.1.1.1"]),
        "not an IP address or network",
    )
    assert_one_line_error(
        runner.invoke(args=[*base, "root@example.com", "--name", " "]), "needs a name"
    )
    assert_one_line_error(
        runner.invoke(args=["token", "revoke", "99999"]), "no token with id 99999"
    )
    assert_one_line_error(
        runner.invoke(args=[*base, "root@example.com", "--name", "bill\x00ing"]), "control"
    )
    assert runner.invoke(args=[*base, "root@example.com", "--scope", "admin"]).exit_code == 2
    assert session.scalars(select(ApiToken)).all() == []
    assert admins.get_admin(session, "dom@example.test").id == domain_admin.id
