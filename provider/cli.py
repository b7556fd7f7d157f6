"""The `provider` program: our commands only, each loaded when it runs, so `--help` is instant."""

from __future__ import annotations

import click

# name -> one-line summary, shown by `provider --help` without importing the commands (the app,
# SQLAlchemy and the services take a second to import). tests/cli/test_entry.py keeps these
# equal to the commands' own docstrings.
SUMMARIES = {
    "init": "Migrate the database and make the first admin (safe to run again).",
    "serve": "Run the web app, the mail listeners, the queue and the scheduler.",
    "domain": "Hosted domains.",
    "mailbox": "Mailboxes.",
    "alias": "Aliases: addresses that deliver to a mailbox and that it may send as.",
    "admin": "Admin accounts of the panel.",
    "backup": "Time-machine backups of IMAP mailboxes: snapshot, list, restore, verify.",
    "jobs": "Scheduled jobs: list them, or run one now.",
    "identity": "Extra sender addresses of IMAP mailboxes (own address and aliases need none).",
    "queue": "The outbound queue: messages not yet delivered to every recipient.",
    "sieve": "Sieve filtering scripts of a mailbox (stored as Dovecot's Pigeonhole keeps them).",
    "token": "API tokens: bearer secrets for programs (billing systems) acting as an admin.",
    "webhook": "Webhooks: signed POSTs of events (mailboxes, quotas, trials) to chosen URLs.",
}


class ProviderGroup(click.Group):
    """Lists SUMMARIES; imports provider.commands (and makes the app) only for a command that
    runs. Flask's own commands (run, shell, routes, db) stay under `flask --app app`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUMMARIES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUMMARIES:
            return None
        from provider.commands import BY_NAME

        return BY_NAME[cmd_name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(SUMMARIES.items()))

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: object,
    ) -> click.Context:
        from flask.cli import ScriptInfo

        # The commands push an app context made from this (flask.cli.with_appcontext).
        extra.setdefault(
            "obj",
            ScriptInfo(create_app=_create_app, set_debug_flag=False, load_dotenv_defaults=False),
        )
        return super().make_context(info_name, args, parent, **extra)  # type: ignore[arg-type]


def _create_app() -> object:
    from provider import create_app

    return create_app()


@click.group(cls=ProviderGroup)
def cli() -> None:
    """Operate the mail provider platform."""


def main() -> None:
    """The console script: a bad setting or an unreachable database is one line and exit 1."""
    try:
        cli(prog_name="provider")
    except Exception as exc:
        from sqlalchemy.exc import DBAPIError

        from provider.dbcheck import explain, is_database_failure
        from provider.settings import SettingsError, load_settings

        if isinstance(exc, SettingsError):  # a bad setting surfaces before any command runs
            click.echo(f"Error: {exc}", err=True)
            raise SystemExit(1) from None
        if isinstance(exc, DBAPIError) and is_database_failure(exc):
            # The database cannot be reached or was never set up: one line, not a traceback.
            click.echo(f"Error: {explain(load_settings()['DATABASE_URL'], exc)}", err=True)
            raise SystemExit(1) from None
        raise
