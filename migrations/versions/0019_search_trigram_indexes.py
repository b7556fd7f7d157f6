"""Trigram (pg_trgm) GIN indexes for the substring searches of mailbox, alias and domain lists

PostgreSQL only (SQLite: nothing to do). When pg_trgm cannot be installed (no CREATE privilege
on the database and not a superuser) the upgrade goes on with a warning saying what to run.

Revision ID: 0019_search_trigram_indexes
Revises: 0018_api_idempotency
Create Date: 2026-12-07 06:10:00

"""

from alembic import op

from provider.models.search import create_trigram_indexes, drop_trigram_indexes

revision = "0019_search_trigram_indexes"
down_revision = "0018_api_idempotency"
branch_labels = None
depends_on = None


def upgrade():
    create_trigram_indexes(op.get_bind())


def downgrade():
    drop_trigram_indexes(op.get_bind())
