"""Trigram indexes for the lists' substring searches: PostgreSQL only, kept outside the models."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

logger = logging.getLogger("alembic.env")

# Index name -> (table, column) of each `column LIKE '%text%'` search in services/reports.py
# (mailbox address; alias address, whose search also matches its mailbox's; domain name). The
# columns hold lower-case text only (check constraints) and the searches lower-case the needle,
# so a plain gin_trgm_ops index on the column serves them: no lower() expression needed.
# fastupdate is off: rows go into the index as they are written, not into a pending list that
# every search scans until (auto)vacuum merges it (measured: a search for one of 100,000
# mailboxes just after a bulk insert took 15 ms with the list, 1 ms without). Few rows change
# per second in these tables, so the slower insert (~20 trigrams each) costs nothing.
TRIGRAM_INDEXES: dict[str, tuple[str, str]] = {
    "ix_mailboxes_address_trgm": ("mailboxes", "address"),
    "ix_aliases_address_trgm": ("aliases", "address"),
    "ix_domains_name_trgm": ("domains", "name"),
}


def include_object(
    item: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's filter when comparing the models with a database: the trigram indexes exist
    only on PostgreSQL (made by migration 0019, not declared on the models, since SQLite has
    no such index type), so they are not a difference."""
    return not (type_ == "index" and reflected and compare_to is None and name in TRIGRAM_INDEXES)


def _trigram_schema(connection: Connection) -> str | None:
    """The schema pg_trgm is installed in, or None when it is not installed."""
    return connection.scalar(
        text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'pg_trgm'"
        )
    )


def create_trigram_indexes(connection: Connection) -> str | None:
    """Install pg_trgm if it is missing and make the trigram indexes that are missing; None
    when they exist, else why not (logged as a warning: the searches still work, by reading
    every row). No-op on other databases.

    CREATE EXTENSION needs the CREATE privilege on the database (pg_trgm is a trusted extension
    since PostgreSQL 13) or a superuser; it is tried inside a savepoint, so a refusal leaves
    the migration's transaction usable and the upgrade goes on without the indexes.
    """
    if connection.dialect.name != "postgresql":
        return None
    schema = _trigram_schema(connection)
    if schema is None:
        try:
            with connection.begin_nested():
                connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        except DBAPIError as error:
            reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
            statements = "; ".join(
                f"CREATE INDEX {name} ON {table} USING gin ({column} gin_trgm_ops)"
                " WITH (fastupdate = off)"
                for name, (table, column) in TRIGRAM_INDEXES.items()
            )
            message = (
                f"pg_trgm could not be installed ({reason}): substring searches of the mailbox,"
                " alias and domain lists will read every row. To fix it, as a superuser run:"
                f" CREATE EXTENSION pg_trgm; {statements};"
            )
            logger.warning(message)
            return message
        schema = _trigram_schema(connection) or "public"
    operator_class = f'"{schema}".gin_trgm_ops'
    for name, (table, column) in TRIGRAM_INDEXES.items():
        using = f"gin ({column} {operator_class}) WITH (fastupdate = off)"
        connection.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING {using}"))
    return None


def drop_trigram_indexes(connection: Connection) -> None:
    """Drop the trigram indexes (the extension stays: something else may use it)."""
    if connection.dialect.name != "postgresql":
        return
    for name in TRIGRAM_INDEXES:
        connection.execute(text(f"DROP INDEX IF EXISTS {name}"))
