"""Trigram indexes: the lists' substring searches use them on PostgreSQL; a database where
pg_trgm cannot be installed still migrates, with a warning."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask_migrate import upgrade
from sqlalchemy import Select, create_engine, inspect, make_url, select, text
from sqlalchemy.orm import Session

from provider import create_app
from provider.extensions import db
from provider.models import Mailbox, search
from provider.services import provisioning, reports
from tests.conftest import TEST_ACTOR, make_domain
from tests.services.test_reports import bulk


def _postgresql_url() -> str:
    url = os.environ.get("PROVIDER_TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        pytest.skip("trigram indexes exist on PostgreSQL only")
    return url


def plan_of(session: Session, query: Select[Any]) -> str:
    """EXPLAIN of the select as the app sends it (its filters as bound parameters)."""
    connection = session.connection()
    compiled = query.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    rows = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params)
    plan = rows.scalar()
    return plan if isinstance(plan, str) else json.dumps(plan)


def test_substring_searches_use_the_trigram_indexes(session: Session) -> None:
    """On tables big enough for the planner to care (5,000 mailboxes, analyzed), a search
    for a few rows reads them through the trigram index: the page, the COUNT before it, with
    other filters, and the alias and domain lists."""
    _postgresql_url()
    shop = make_domain(session, "shop.test")
    bulk(
        session,
        shop,
        5000,
        local_part=lambda n: f"user{n:05d}",
        address=lambda n: f"user{n:05d}@shop.test",
    )
    bulk(
        session,
        make_domain(session, "other.test"),
        1,
        local_part="rosa",
        address="rosa@other.test",
    )
    rosa = session.scalars(select(Mailbox).where(Mailbox.address == "rosa@other.test")).one()
    provisioning.create_alias(session, "sales@other.test", rosa, actor=TEST_ACTOR)
    session.commit()
    with db.engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()
    mailboxes = reports.mailbox_select(search="user04217")
    assert "ix_mailboxes_address_trgm" in plan_of(session, mailboxes)
    # The capped COUNT the list runs first reads the same index.
    assert "ix_mailboxes_address_trgm" in plan_of(
        session, reports.count_query(mailboxes, limit=10_001)
    )
    # With other filters and a domain admin's scope too.
    scoped = reports.mailbox_select(search="r04217", domain_ids={shop.id}, status="active")
    assert "ix_mailboxes_address_trgm" in plan_of(session, scoped)
    assert [m.address for m in reports.list_mailboxes(session, search="r04217").items] == [
        "user04217@shop.test"
    ]
    assert [a.address for a in reports.list_aliases(session, search="osa@oth").items] == [
        "sales@other.test"
    ]


def test_the_alias_and_domain_searches_can_use_their_trigram_indexes(session: Session) -> None:
    """Few aliases and domains are too few for the planner to pick an index: with other scans
    priced out, the plan shows each index can serve its query's shape."""
    _postgresql_url()
    shop = make_domain(session, "shop.test")
    bulk(session, shop, 1, local_part="rosa", address="rosa@shop.test")
    rosa = session.scalars(select(Mailbox)).one()
    provisioning.create_alias(session, "sales@shop.test", rosa, actor=TEST_ACTOR)
    session.commit()
    # Plain and ordered scans priced out: only a bitmap scan of an index on the searched
    # column is left.
    session.connection().exec_driver_sql("SET LOCAL enable_seqscan = off")
    session.connection().exec_driver_sql("SET LOCAL enable_indexscan = off")
    # The UNION's alias half reads the alias index (its mailbox half joins the few aliases to
    # their mailboxes by id here: cheaper than any index on mailboxes).
    assert "ix_aliases_address_trgm" in plan_of(session, reports.alias_select(search="sales"))
    assert "ix_domains_name_trgm" in plan_of(session, reports.domain_select(search="shop"))
    session.rollback()


def test_a_refused_pg_trgm_warns_and_the_upgrade_goes_on(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A role without the CREATE privilege on its database cannot install pg_trgm: the
    migration says so and how to fix it, and the schema is migrated without the indexes."""
    server = make_url(_postgresql_url())
    suffix = uuid.uuid4().hex[:8]
    role, database = f"provider_limited_{suffix}", f"provider_limited_{suffix}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    inside = create_engine(server.set(database=database), isolation_level="AUTOCOMMIT")
    try:
        with inside.connect() as connection:
            # Tables in the public schema, but no CREATE on the database: no extensions.
            connection.execute(text(f'GRANT CREATE ON SCHEMA public TO "{role}"'))
        limited_url = server.set(database=database, username=role, password=None)
        app = create_app(
            {
                "DATABASE_URL": limited_url.render_as_string(hide_password=False),
                "INSTANCE_DIR": str(tmp_path),
                "SECRET_KEY": "x",
            }
        )
        with app.app_context():
            upgrade(directory=app.extensions["migrate"].directory)
            warned = capfd.readouterr().err
            assert "pg_trgm could not be installed" in warned
            assert "permission denied" in warned
            assert "CREATE EXTENSION pg_trgm; CREATE INDEX ix_mailboxes_address_trgm" in warned
            with db.engine.connect() as connection:
                version = connection.scalar(text("SELECT version_num FROM alembic_version"))
                names = {i["name"] for i in inspect(connection).get_indexes("mailboxes")}
            assert version == "0019_search_trigram_indexes"
            assert "ix_mailboxes_address_trgm" not in names
            db.engine.dispose()
        # The superuser installs it later and makes the indexes (what the warning says).
        superuser = create_engine(server.set(database=database))
        with superuser.begin() as connection:
            assert search.create_trigram_indexes(connection) is None
            names = {i["name"] for i in inspect(connection).get_indexes("mailboxes")}
            assert "ix_mailboxes_address_trgm" in names
        superuser.dispose()
    finally:
        inside.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_nothing_to_do_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert search.create_trigram_indexes(connection) is None
        search.drop_trigram_indexes(connection)
        assert inspect(connection).get_table_names() == []
    engine.dispose()
