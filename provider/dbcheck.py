"""Database reachability: say in one line which database could not be used, and why."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from sqlalchemy import inspect, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from provider.extensions import db


class DatabaseUnavailable(Exception):
    """The configured database cannot be used; the message is one line for the operator."""


def masked(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _missing_tables(error: BaseException) -> bool:
    """A database that answers but was never migrated (SQLite "no such table", PostgreSQL
    UndefinedTable 42P01)."""
    original = getattr(error, "orig", None)
    return "no such table" in str(original or error) or getattr(original, "sqlstate", "") == (
        "42P01"
    )


def _sqlite_reason(url: str) -> str | None:
    """Why a SQLite file cannot be opened, found on disk (SQLite only says "unable to open")."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    directory = Path(database).expanduser().absolute().parent
    if not directory.exists():
        return f"directory {directory} does not exist"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    return None


def explain(url: str, error: BaseException) -> str:
    """One line naming the database (password masked) and what went wrong with it."""
    if _missing_tables(error):
        return f"the database {masked(url)} has no tables yet; run `provider init` first"
    reason = None
    if url.startswith("sqlite"):
        reason = _sqlite_reason(url)
    if reason is None:
        original = getattr(error, "orig", None) if isinstance(error, DBAPIError) else None
        detail = str(original or error).strip() or type(error).__name__
        reason = detail.splitlines()[0].removeprefix("connection failed: ").strip()
    return f"cannot use the database {masked(url)}: {reason}"


def check_database(app: Flask, *, migrated: bool = False) -> None:
    """Raise DatabaseUnavailable (one line) unless the database answers a query and, when
    `migrated`, has been set up by `provider init`."""
    url = str(app.config["SQLALCHEMY_DATABASE_URI"])
    with app.app_context():
        try:
            db.session.execute(text("SELECT 1"))
            if migrated and not inspect(db.engine).has_table("alembic_version"):
                raise DatabaseUnavailable(
                    f"the database {masked(url)} has no tables yet; run `provider init` first"
                )
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseUnavailable(explain(url, exc)) from None
        finally:
            db.session.remove()


def is_database_failure(error: BaseException) -> bool:
    """Whether an exception escaping a command means the database could not be used (rather
    than a bug): it cannot be reached, or it has no tables."""
    if isinstance(error, DBAPIError):
        name = type(error).__name__
        return name in {"OperationalError", "InterfaceError"} or _missing_tables(error)
    return False
