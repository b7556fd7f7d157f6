"""Shared fixtures: an app on the test database (SQLite, or PostgreSQL in CI), client, runner."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from flask.testing import FlaskClient, FlaskCliRunner
from flask_migrate import upgrade
from sqlalchemy import MetaData, create_engine, delete, inspect, make_url, text
from sqlalchemy.orm import Session

from provider import create_app
from provider.extensions import db
from provider.models import AdminUser, Domain, Mailbox
from provider.services import admins, daily_stats, dkim, provisioning, reports
from provider.services.audit import Actor

TEST_ACTOR = Actor("test", "127.0.0.1")
ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "correct horse battery staple"
MAILBOX_PASSWORD = "mailbox secret phrase"


REAL_DKIM_KEYS_MARKER = "real_dkim_keys"
DATABASE_MARKER = "database"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On PostgreSQL, run only the tests that use the database: a test that never asks for it
    (parsers, the Maildir, Sieve, `provider serve` on its own SQLite file …) does the very same
    thing in the SQLite run, so CI runs it once. A test that reaches PostgreSQL another way
    (through PROVIDER_TEST_DATABASE_URL itself) is marked `database`."""
    configured = os.environ.get("PROVIDER_TEST_DATABASE_URL", "")
    if not configured.startswith("postgresql"):
        return
    kept, deselected = [], []
    for item in items:
        uses_database = "database_url" in getattr(item, "fixturenames", ())
        if uses_database or item.get_closest_marker(DATABASE_MARKER) is not None:
            kept.append(item)
        else:
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def _one_dkim_key() -> tuple[str, str]:
    return dkim.generate_rsa_key()


@pytest.fixture(autouse=True)
def _reuse_dkim_key(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, _one_dkim_key: tuple[str, str]
) -> None:
    """Every domain gets an RSA-2048 key (~60 ms to make); the suite makes thousands of
    domains, so they all share one key made once, unless the test is marked real_dkim_keys."""
    if request.node.get_closest_marker(REAL_DKIM_KEYS_MARKER) is None:
        monkeypatch.setattr(dkim, "generate_rsa_key", lambda: _one_dkim_key)


def _clean_slate(url: str) -> None:
    """Drop every table in the test database so migrations start from nothing."""
    engine = create_engine(url)
    with engine.begin() as connection:
        existing = MetaData()
        existing.reflect(connection)
        existing.drop_all(connection)
        if inspect(connection).has_table("alembic_version"):
            connection.execute(text("DROP TABLE alembic_version"))
    engine.dispose()


@contextmanager
def _private_postgres_database(url: str) -> Iterator[str]:
    """A throwaway database on the same server, so parallel runs never share tables."""
    server = make_url(url)
    name = f"provider_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin_engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin_engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The migrated test database: a private one beside PROVIDER_TEST_DATABASE_URL, or SQLite."""
    configured = os.environ.get("PROVIDER_TEST_DATABASE_URL")
    with ExitStack() as stack:
        if configured and configured.startswith("postgresql"):
            url = stack.enter_context(_private_postgres_database(configured))
        else:
            url = configured or f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        _clean_slate(url)
        app = create_app(_base_config(url, tmp_path_factory.mktemp("migrate")))
        with app.app_context():
            upgrade(directory=app.extensions["migrate"].directory)
            db.engine.dispose()
        yield url


def _base_config(url: str, instance: Path) -> dict[str, Any]:
    return {
        "TESTING": True,
        "DATABASE_URL": url,
        "INSTANCE_DIR": str(instance),
        "DATA_DIR": str(instance / "data"),
        "SECRET_KEY": "test-secret-key",
        "WTF_CSRF_ENABLED": False,
        # The lowest argon2id cost ASVS allows: real hashes, still fast enough for a suite.
        "PASSWORD_HASH_MEMORY_KIB": 19456,
        "PASSWORD_HASH_TIME_COST": 2,
    }


@pytest.fixture
def app_config(database_url: str, tmp_path: Path) -> dict[str, Any]:
    """Override entries in a test (before `app` is built) to change settings."""
    return _base_config(database_url, tmp_path)


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(app_config)
    # Daily counts wait in this process's memory: none from an earlier test's database; nor
    # a list total estimated there (the same select, another test's rows).
    daily_stats.discard_pending()
    reports.forget_estimates()

    # The test holds one app context open and test-client requests reuse it; empty `g` after
    # each request so nothing (Flask-Login's user, the CSRF token) leaks into the next one, as
    # it never would between real requests.
    @app.teardown_request
    def fresh_g(_error: BaseException | None) -> None:
        vars(g).clear()

    with app.app_context():
        yield app
        daily_stats.discard_pending()  # the test's database goes; its unwritten counts too
        db.session.rollback()
        db.session.remove()
        # Every test leaves an empty database behind it.
        with db.engine.begin() as connection:
            for table in reversed(db.metadata.sorted_tables):
                connection.execute(delete(table))
        db.engine.dispose()


@pytest.fixture
def session(app: Flask) -> Session:
    return db.session  # type: ignore[return-value]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def make_domain(session: Session, name: str = "example.test", **overrides: Any) -> Domain:
    domain = provisioning.create_domain(session, name, actor=TEST_ACTOR, **overrides)
    session.commit()
    return domain


def make_mailbox(
    session: Session, address: str = "alice@example.test", **overrides: Any
) -> Mailbox:
    """A mailbox (its domain made if missing) with 8 GB, IMAP, and MAILBOX_PASSWORD."""
    domain_name = address.rpartition("@")[2]
    if session.scalar(db.select(Domain).where(Domain.name == domain_name)) is None:
        make_domain(session, domain_name)
    arguments: dict[str, Any] = {
        "password": MAILBOX_PASSWORD,
        "quota_gb": 8,
        "protocols": "imap",
    }
    arguments.update(overrides)
    mailbox = provisioning.create_mailbox(session, address, actor=TEST_ACTOR, **arguments)
    session.commit()
    return mailbox


def make_admin(
    session: Session,
    email: str = ADMIN_EMAIL,
    *,
    superadmin: bool = True,
    domains: list[Domain] | None = None,
    password: str = ADMIN_PASSWORD,
) -> AdminUser:
    admin = admins.create_admin(
        session, email, password, superadmin=superadmin, domains=domains or [], actor=TEST_ACTOR
    )
    session.commit()
    return admin


def login(client: FlaskClient, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> Any:
    return client.post("/admin/login", data={"email": email, "password": password})


@pytest.fixture
def admin(session: Session) -> AdminUser:
    return make_admin(session)


@pytest.fixture
def logged_in(client: FlaskClient, admin: AdminUser) -> FlaskClient:
    """A client logged in as a superadmin."""
    response = login(client)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        threading.Event().wait(interval)
    return True
