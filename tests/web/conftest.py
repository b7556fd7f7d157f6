"""Fixtures of the admin panel tests: tenants, a domain admin, and response helpers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import AdminUser, Domain, Mailbox
from provider.services.auth import hash_password
from provider.services.clock import now
from tests.conftest import ADMIN_PASSWORD, login, make_admin, make_domain

DOMAIN_ADMIN_EMAIL = "tenant@mine.test"
_HASH_CACHE: dict[str, str] = {}


def count(session: Session, model: type[Any]) -> int:
    """Rows in a model's table, read from the database (not the session's identity map)."""
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model)) or 0


def text_of(response: Any) -> str:
    return response.get_data(as_text=True)


def errors_of(response: Any, field: str) -> str:
    """The error list rendered under a field ('' when there is none)."""
    match = re.search(
        rf'<ul class="field-errors" id="{re.escape(field)}-errors">(.*?)</ul>',
        text_of(response),
        re.S,
    )
    return match.group(1) if match else ""


def add_mailboxes(session: Session, domain: Domain, count_: int, **overrides: Any) -> list[Mailbox]:
    """Insert mailboxes straight into the table, sharing one hash (list tests log none in)."""
    if "hash" not in _HASH_CACHE:
        _HASH_CACHE["hash"] = hash_password("bulk mailbox password")
    created = now()
    mailboxes = []
    for number in range(count_):
        values: dict[str, Any] = {
            "domain_id": domain.id,
            "local_part": f"user{number:04d}",
            "address": f"user{number:04d}@{domain.name}",
            "password_hash": _HASH_CACHE["hash"],
            "quota_bytes": 8 * 1024**3,
            "used_bytes": 0,
            "imap_enabled": True,
            "pop3_enabled": False,
            "status": "active",
            "plan": "paid",
            "created_at": created,
            "updated_at": created,
        }
        values.update({k: (v(number) if callable(v) else v) for k, v in overrides.items()})
        mailboxes.append(Mailbox(**values))
    session.add_all(mailboxes)
    session.commit()
    return mailboxes


@pytest.fixture
def tenants(session: Session) -> tuple[Domain, Domain]:
    """Two hosted domains: mine.test (the domain admin's) and other.test (someone else's)."""
    return make_domain(session, "mine.test"), make_domain(session, "other.test")


@pytest.fixture
def domain_admin(session: Session, tenants: tuple[Domain, Domain]) -> AdminUser:
    return make_admin(session, DOMAIN_ADMIN_EMAIL, superadmin=False, domains=[tenants[0]])


@pytest.fixture
def as_domain_admin(app: Flask, domain_admin: AdminUser) -> FlaskClient:
    """A client logged in as the admin of mine.test only."""
    client = app.test_client()
    response = login(client, DOMAIN_ADMIN_EMAIL, ADMIN_PASSWORD)
    assert response.status_code == 302, text_of(response)
    return client
