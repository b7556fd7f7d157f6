"""Mail provider platform: create_app() assembles the web app, its extensions and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _engine_options(database_url: str) -> dict[str, Any]:
    """Pool options; on SQLite, write transactions take turns on a file lock
    (provider/sqlite_writes.py) instead of sleeping in SQLite's busy back-off."""
    if database_url.startswith("sqlite"):
        from provider.sqlite_writes import TurnTakingConnection

        # No pre-ping: a connection to a file cannot go stale the way one to a server does
        # (restarted, idle-timed-out), and the ping was a statement per checkout, i.e. per
        # IMAP command that touches the database.
        return {"connect_args": {"factory": TurnTakingConnection}}
    return {"pool_pre_ping": True}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings, extensions, blueprints and CLI. No network, no migrations here."""
    # Imported here, not at the top: `import provider.…` stays cheap for the `provider`
    # program's --help and for modules that need no app.
    from flask import Flask, Response, redirect, url_for

    from provider.extensions import csrf, db, login_manager, migrate
    from provider.models import search
    from provider.settings import PROJECT_ROOT, ensure_secret_key, load_settings

    settings = load_settings(test_config)
    app = Flask(
        __name__,
        instance_path=settings["INSTANCE_DIR"],
        template_folder=str(PROJECT_ROOT / "templates"),
    )
    app.config.update(settings)
    secure = bool(settings["COOKIE_SECURE"])
    app.config.update(
        SECRET_KEY=ensure_secret_key(settings),
        SQLALCHEMY_DATABASE_URI=settings["DATABASE_URL"],
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(str(settings["DATABASE_URL"])),
        # __Host- cookies need Secure and Path=/ and no Domain: not readable by other hosts.
        SESSION_COOKIE_NAME="__Host-session" if secure else "session",
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=float(settings["SESSION_MINUTES"])),
        REMEMBER_COOKIE_SECURE=secure,
        REMEMBER_COOKIE_HTTPONLY=True,
    )
    if test_config:
        app.config.update({k: v for k, v in test_config.items() if k.isupper()})

    db.init_app(app)
    migrate.init_app(
        app,
        db,
        directory=str(PROJECT_ROOT / "migrations"),
        render_as_batch=True,
        include_object=search.include_object,
    )
    csrf.init_app(app)
    login_manager.init_app(app)

    from provider.web import register_web

    register_web(app)

    from provider.commands import register_commands

    register_commands(app)

    from provider.services import sending_alerts

    # The burst rule announces a suspension; the alert to the admins subscribes here.
    sending_alerts.connect()

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("admin.dashboard"))  # type: ignore[return-value]

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if secure:
            response.headers.setdefault(
                "Strict-Transport-Security", "max-age=31536000; includeSubDomains"
            )
        return response

    return app
