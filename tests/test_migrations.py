"""Migrations: they build exactly the schema the models describe, and run down and up again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from provider import create_app
from provider.extensions import db
from provider.models import search


def test_migrated_schema_matches_the_models(app):
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": search.include_object}
        )
        assert compare_metadata(context, db.metadata) == []


def test_migrations_go_down_to_nothing_and_up_again(tmp_path):
    app = create_app({"INSTANCE_DIR": str(tmp_path), "SECRET_KEY": "x"})
    directory = app.extensions["migrate"].directory
    with app.app_context():
        upgrade(directory=directory)
        assert {"domains", "mailboxes", "aliases", "admin_users", "audit_events"} <= set(
            inspect(db.engine).get_table_names()
        )
        downgrade(directory=directory, revision="base")
        assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}
        upgrade(directory=directory)
        db.engine.dispose()
