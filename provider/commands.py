"""The `provider` program's commands (init, serve, domain, mailbox, …); provider.cli runs them."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from provider.dbcheck import DatabaseUnavailable, check_database
from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Domain, Mailbox
from provider.services import (
    admins,
    clock,
    dkim,
    dns_records,
    mailbox_csv,
    provisioning,
    records,
    reports,
    sending,
)
from provider.services.audit import CLI_ACTOR
from provider.services.quota import format_gb

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@contextmanager
def committing() -> Iterator[None]:
    """Commit what the block did; on a rule broken, roll back and exit 1 with one line."""
    try:
        yield
        db.session.commit()
    except ProviderError as exc:
        db.session.rollback()
        raise click.ClickException(exc.message) from None


def emit(record: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(record, indent=2) if as_json else text(record))


def read_password(from_stdin: bool) -> str | None:
    """The password from standard input (first line), or None when not asked to read it."""
    if not from_stdin:
        return None
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise click.ClickException("no password on standard input")
    return line


def password_or_generated(from_stdin: bool) -> tuple[str, str | None]:
    """The password from stdin, or a strong made-up one (returned second, to print once)."""
    given = read_password(from_stdin)
    if given is not None:
        return given, None
    generated = secrets.token_urlsafe(12)
    return generated, generated


# --- init / serve --------------------------------------------------------------------------


@click.command("init")
@click.option("--admin-email", default=None, help="E-mail of the first admin (if none exists).")
@json_option
def init_command(admin_email: str | None, as_json: bool) -> None:
    """Migrate the database and make the first admin (safe to run again)."""
    from flask_migrate import upgrade

    config = current_app.config
    try:
        check_database(current_app._get_current_object())  # type: ignore[attr-defined]
    except DatabaseUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    Path(config["DATA_DIR"], "mail").mkdir(parents=True, exist_ok=True)
    before = _schema_revision()
    upgrade(directory=current_app.extensions["migrate"].directory)
    after = _schema_revision()
    if before is None:
        database = "created"
    elif before != after:
        database = "upgraded"
    else:
        database = "up to date"
    with committing():
        first = admins.ensure_first_admin(
            db.session, admin_email or config["ADMIN_EMAIL"], config["ADMIN_PASSWORD"] or None
        )
    login_url = f"http://{config['BIND_HOST']}:{config['WEB_PORT']}/admin/login"
    record = {
        "database": database,
        "schema": after,
        "login_url": login_url,
        "admin_email": first.admin.email,
        "admin_created": first.created,
        "admin_password": first.generated_password,
    }

    def text(r: dict[str, Any]) -> str:
        said = {
            "created": f"Database created (schema {r['schema']}).",
            "upgraded": f"Database upgraded from schema {before} to {r['schema']}.",
            "up to date": f"Database is up to date (schema {r['schema']}).",
        }
        lines = [
            said[r["database"]],
            f"Admin login: {r['login_url']}",
            f"  e-mail:   {r['admin_email']}",
        ]
        if r["admin_password"]:
            lines.append(
                f"  password: {r['admin_password']}   (shown once; change it after logging in)"
            )
        elif r["admin_created"]:
            lines.append("  password: the one given in PROVIDER_ADMIN_PASSWORD")
        else:
            lines.append(
                "  password: unchanged (reset: provider admin password EMAIL --password-stdin)"
            )
        return "\n".join(lines)

    emit(record, as_json, text)


def _schema_revision() -> str | None:
    """The database's migration revision, None when it has none (a new database)."""
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@click.command("serve")
@click.option(
    "--services",
    default="web,imap,pop3,lmtp,smtp,submission,managesieve,outbound,scheduler",
    show_default=True,
    help="Comma-separated services to run (each kind in processes of its own).",
)
def serve_command(services: str) -> None:
    """Run the web app, the mail listeners, the queue and the scheduler.

    The web app runs under gunicorn; each kind of service in processes of its own under a
    supervisor that restarts them, until SIGINT/SIGTERM."""
    from provider.serve import KNOWN_SERVICES, run

    chosen = [name.strip() for name in services.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(KNOWN_SERVICES))
    if unknown or not chosen:
        raise click.ClickException(
            f"unknown service(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(KNOWN_SERVICES)}"
        )
    run(current_app._get_current_object(), chosen)  # type: ignore[attr-defined]


# --- domains -------------------------------------------------------------------------------


def _domain_text(d: dict[str, Any]) -> str:
    signup = "signup open" if d["signup_enabled"] else "signup closed"
    return f"{d['name']}  {signup}  {d.get('mailboxes', 0)} mailbox(es)"


def _domain_record(domain: Domain) -> dict[str, Any]:
    return records.domain_record(db.session, domain)


@click.group("domain")
def domain_group() -> None:
    """Hosted domains."""


@domain_group.command("add")
@click.argument("name")
@click.option("--signup", is_flag=True, help="Open the domain for public trial signup.")
@json_option
def domain_add(name: str, signup: bool, as_json: bool) -> None:
    """Host a new domain."""
    with committing():
        domain = provisioning.create_domain(
            db.session, name, signup_enabled=signup, actor=CLI_ACTOR
        )
    emit(_domain_record(domain), as_json, _domain_text)


@domain_group.command("set")
@click.argument("name")
@click.option("--signup/--no-signup", default=None, help="Open or close public trial signup.")
@click.option(
    "--postmaster",
    default=None,
    metavar="ADDRESS[,ADDRESS…]",
    help="Hosted address(es) receiving postmaster@NAME mail; '' restores the default.",
)
@json_option
def domain_set(name: str, signup: bool | None, postmaster: str | None, as_json: bool) -> None:
    """Change a domain's settings."""
    with committing():
        domain = provisioning.get_domain(db.session, name)
        if signup is not None:
            provisioning.set_domain_signup(db.session, domain, signup, actor=CLI_ACTOR)
        if postmaster is not None:
            provisioning.set_domain_postmaster(db.session, domain, postmaster, actor=CLI_ACTOR)
    emit(_domain_record(domain), as_json, _domain_text)


@domain_group.command("list")
@json_option
def domain_list(as_json: bool) -> None:
    """List hosted domains."""
    domains = db.session.scalars(select(Domain).order_by(Domain.name)).all()
    found = [_domain_record(domain) for domain in domains]
    emit(found, as_json, lambda rs: "\n".join(map(_domain_text, rs)) or "no domains")


@domain_group.command("delete")
@click.argument("name")
def domain_delete(name: str) -> None:
    """Delete a domain that has no mailboxes or aliases left."""
    with committing():
        domain = provisioning.get_domain(db.session, name)
        provisioning.delete_domain(db.session, domain, actor=CLI_ACTOR)
    click.echo(f"deleted domain {domain.name}")


@domain_group.command("dns")
@click.argument("name")
@click.option("--check", is_flag=True, help="Ask DNS whether each record is published.")
@click.option(
    "--resolver",
    default=None,
    metavar="HOST[:PORT]",
    help="Resolver to ask (default: DNS_RESOLVER).",
)
@json_option
def domain_dns(name: str, check: bool, resolver: str | None, as_json: bool) -> None:
    """The DNS records to publish for a domain (zone-file lines); --check asks DNS for each and
    exits 1 unless all are published as they should be."""
    if resolver is not None and not check:
        raise click.ClickException("--resolver only applies with --check")
    with committing():
        domain = provisioning.get_domain(db.session, name)
        if not check:
            expected = dns_records.expected_records(db.session, domain)
            emit(
                [records.dns_record(r) for r in expected],
                as_json,
                lambda _: dns_records.zone_text(expected),
            )
            return
        results = dns_records.check(db.session, domain, resolver)
    emit([r.to_dict() for r in results], as_json, lambda _: _dns_check_text(results))
    if not dns_records.all_ok(results):
        raise SystemExit(1)


def _dns_check_text(results: list[dns_records.CheckResult]) -> str:
    lines = []
    for result in results:
        record = result.record
        line = f"{result.status:<8} {record.type:<5} {record.name}"
        if result.status != dns_records.OK:
            line += f": {result.detail}" if result.detail else ""
            lines.append(line)
            lines.append(f"{'':<15}want: {record.value}")
            lines.extend(f"{'':<15}published: {value}" for value in result.published)
        else:
            lines.append(line)
    bad = sum(result.status != dns_records.OK for result in results)
    lines.append(f"{len(results) - bad} of {len(results)} records ok")
    return "\n".join(lines)


@domain_group.command("dkim")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Make a new signing key; the old stays published.")
@click.option(
    "--retire",
    "retire_selector",
    default=None,
    metavar="SELECTOR",
    help="Unpublish a rotated-out key.",
)
@json_option
def domain_dkim(name: str, rotate: bool, retire_selector: str | None, as_json: bool) -> None:
    """List a domain's DKIM keys (selector, algorithm, state, created); --rotate or --retire."""
    if rotate and retire_selector is not None:
        raise click.ClickException("choose one of --rotate and --retire")
    with committing():
        domain = provisioning.get_domain(db.session, name)
        if rotate:
            dkim.rotate(db.session, domain, actor=CLI_ACTOR)
        elif retire_selector is not None:
            dkim.retire(db.session, domain, retire_selector, actor=CLI_ACTOR)
        keys = [dkim.key_record(key) for key in dkim.list_keys(db.session, domain)]

    def text(records: list[dict[str, Any]]) -> str:
        if not records:
            return f"{domain.name} has no DKIM key (provider domain dkim {domain.name} --rotate)"
        return "\n".join(
            f"{r['selector']:<12} {r['algorithm']:<8} {r['state']:<10} created {r['created_at']}"
            + (f"  retired {r['retired_at']}" if r["retired_at"] else "")
            for r in records
        )

    emit(keys, as_json, text)


# --- mailboxes -----------------------------------------------------------------------------


def _mailbox_text(m: dict[str, Any]) -> str:
    quota = format_gb(round(m["quota_bytes"] / 1024**3, 4))
    used = format_gb(round(m["used_bytes"] / 1024**3, 2))
    lines = [
        m["address"],
        f"  quota:     {quota} GB ({m['quota_bytes']} bytes), {used} GB used",
        f"  protocols: {', '.join(m['protocols'])}",
        f"  status:    {m['status']}",
        f"  plan:      {m['plan']}"
        + (f" (trial ends {m['trial_expires_at']})" if m["trial_expires_at"] else ""),
    ]
    if "pop3" in m["protocols"] and m.get("pop3_action"):
        lines.append(f"  pop3:      on download, {POP3_ACTION_TEXT[m['pop3_action']]}")
    if m["contact_email"]:
        lines.append(f"  contact:   {m['contact_email']}")
    if m["aliases"]:
        lines.append(f"  aliases:   {', '.join(m['aliases'])}")
    if "sending" in m:
        lines.extend(_sending_lines(m["sending"]))
    return "\n".join(lines)


def _sending_lines(s: dict[str, Any]) -> list[str]:
    state = (
        f"SUSPENDED since {s['suspended_at']}: {s['suspended_reason']}"
        if s["suspended"]
        else "active"
    )
    last_days = ", ".join(f"{d['day'][5:]} {d['sent']}" for d in s["last_7_days"])
    return [
        f"  sending:   {state}",
        f"  limits:    {s['limit_per_hour']} recipients/hour ({s['limit_per_hour_source']}), "
        f"{s['limit_per_day']}/day ({s['limit_per_day_source']})",
        f"  sent:      {s['sent_today']} today (UTC); last 7 days: {last_days}",
    ]


def _mailbox_record(mailbox: Mailbox) -> dict[str, Any]:
    """What `mailbox show` and `mailbox set` print: the mailbox and its sending."""
    return records.mailbox_record(db.session, mailbox)


POP3_ACTION_TEXT = {
    "keep": "keep (the client decides)",
    "seen": "mark read",
    "archive": "move to Archive",
}
POP3_ACTION_HELP = (
    "What the server does with a message a POP3 client downloads: keep (the default; the "
    "client decides), seen (mark it read) or archive (move it to Archive)."
)


def _mailbox_line(m: dict[str, Any]) -> str:
    quota = format_gb(round(m["quota_bytes"] / 1024**3, 4))
    return f"{m['address']}  {quota} GB  {','.join(m['protocols'])}  {m['status']}  {m['plan']}"


@click.group("mailbox")
def mailbox_group() -> None:
    """Mailboxes."""


@mailbox_group.command("add")
@click.argument("address")
@click.option("--quota-gb", required=True, help="Quota in GB (1 GB = 1024³ bytes); decimals ok.")
@click.option("--protocols", required=True, help="imap, pop3 or imap,pop3.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--trial", is_flag=True, help="Create it as a free trial.")
@click.option("--contact-email", default=None, help="Where to reach the customer.")
@click.option(
    "--pop3-action",
    type=click.Choice(["keep", "seen", "archive"]),
    default="keep",
    help=POP3_ACTION_HELP,
)
@json_option
def mailbox_add(
    address: str,
    quota_gb: str,
    protocols: str,
    password_stdin: bool,
    trial: bool,
    contact_email: str | None,
    pop3_action: str,
    as_json: bool,
) -> None:
    """Create a mailbox. Without --password-stdin a password is made up and printed once."""
    password, generated = password_or_generated(password_stdin)
    with committing():
        mailbox = provisioning.create_mailbox(
            db.session,
            address,
            password,
            quota_gb,
            protocols,
            actor=CLI_ACTOR,
            plan="trial" if trial else "paid",
            contact_email=contact_email,
            pop3_action=pop3_action,
        )
    record = mailbox.to_dict()
    if generated:
        record["password"] = generated
    emit(
        record,
        as_json,
        lambda r: (
            _mailbox_text(r) + (f"\n  password:  {generated}   (shown once)" if generated else "")
        ),
    )


@mailbox_group.command("set")
@click.argument("address")
@click.option("--quota-gb", default=None, help="New quota in GB.")
@click.option("--protocols", default=None, help="imap, pop3 or imap,pop3.")
@click.option("--password-stdin", is_flag=True, help="Read a new password from standard input.")
@click.option("--status", type=click.Choice(["active", "suspended"]), default=None)
@click.option("--plan", type=click.Choice(["trial", "paid"]), default=None)
@click.option("--contact-email", default=None)
@click.option(
    "--pop3-action",
    type=click.Choice(["keep", "seen", "archive"]),
    default=None,
    help=POP3_ACTION_HELP,
)
@click.option(
    "--send-limit-hour",
    default=None,
    metavar="N|default",
    help="Recipients per hour this mailbox may send (1-100000); 'default': the plan's setting.",
)
@click.option(
    "--send-limit-day",
    default=None,
    metavar="N|default",
    help="Recipients per day this mailbox may send (1-100000); 'default': the plan's setting.",
)
@click.option(
    "--sending",
    "sending_state",
    type=click.Choice(["active", "suspended"]),
    default=None,
    help="Stop the mailbox's sending (it still receives and logs in) or let it send again.",
)
@json_option
def mailbox_set(
    address: str,
    quota_gb: str | None,
    protocols: str | None,
    password_stdin: bool,
    status: str | None,
    plan: str | None,
    contact_email: str | None,
    pop3_action: str | None,
    send_limit_hour: str | None,
    send_limit_day: str | None,
    sending_state: str | None,
    as_json: bool,
) -> None:
    """Change a mailbox's quota, protocols, password, status, plan, POP3 download action,
    sending limits or sending state."""
    password = read_password(password_stdin)
    with committing():
        mailbox = provisioning.get_mailbox(db.session, address)
        provisioning.update_mailbox(
            db.session,
            mailbox,
            actor=CLI_ACTOR,
            quota_gb=quota_gb,
            protocols=protocols,
            status=status,
            plan=plan,
            password=password,
            contact_email=contact_email,
            pop3_action=pop3_action,
        )
        _set_sending(mailbox, send_limit_hour, send_limit_day, sending_state)
    emit(_mailbox_record(mailbox), as_json, _mailbox_text)


def _set_sending(
    mailbox: Mailbox, per_hour: str | None, per_day: str | None, state: str | None
) -> None:
    if per_hour is not None or per_day is not None:
        sending.set_limits(db.session, mailbox, actor=CLI_ACTOR, per_hour=per_hour, per_day=per_day)
    if state == "suspended":
        sending.suspend_sending(db.session, mailbox, actor=CLI_ACTOR)
    elif state == "active":
        sending.resume_sending(db.session, mailbox, actor=CLI_ACTOR)


@mailbox_group.command("show")
@click.argument("address")
@json_option
def mailbox_show(address: str, as_json: bool) -> None:
    """Show one mailbox (exit 1 when it does not exist)."""
    with committing():
        mailbox = provisioning.get_mailbox(db.session, address)
    emit(_mailbox_record(mailbox), as_json, _mailbox_text)


@mailbox_group.command("list")
@click.option("--domain", default=None, help="Only this domain.")
@click.option("--search", default=None, help="Only addresses containing this text.")
@json_option
def mailbox_list(domain: str | None, search: str | None, as_json: bool) -> None:
    """List mailboxes."""
    domain_ids = None
    if domain:
        with committing():
            domain_ids = {provisioning.get_domain(db.session, domain).id}
    query = reports.mailbox_select(search=search, domain_ids=domain_ids).options(
        selectinload(Mailbox.domain), selectinload(Mailbox.aliases)
    )
    found = [records.mailbox_summary(mailbox) for mailbox in db.session.scalars(query)]
    emit(found, as_json, lambda rs: "\n".join(map(_mailbox_line, rs)) or "no mailboxes")


@mailbox_group.command("delete")
@click.argument("address")
def mailbox_delete(address: str) -> None:
    """Delete a mailbox and its aliases."""
    with committing():
        mailbox = provisioning.get_mailbox(db.session, address)
        provisioning.delete_mailbox(db.session, mailbox, actor=CLI_ACTOR)
    click.echo(f"deleted mailbox {mailbox.address}")


@mailbox_group.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--dry-run", is_flag=True, help="Only check the file: every row's outcome.")
@json_option
def mailbox_import(file: IO[bytes], dry_run: bool, as_json: bool) -> None:
    """Create the mailboxes of a CSV file, all or none; --dry-run only checks it.

    Columns address,quota,protocols,password and optionally plan,contact,pop3_action. The
    password cell is a password, `generate` (one is made up and printed once), or, to move
    mailboxes from another server, its hash in Dovecot's form: {ARGON2ID}, {ARGON2I},
    {SHA512-CRYPT}, {SHA256-CRYPT}, {BLF-CRYPT}, {MD5-CRYPT}, {CRYPT}, {SSHA512}, {SSHA256},
    {SSHA}, {SHA512}, {SHA256} or {SHA}, kept as it is and replaced by an argon2id hash at the
    mailbox's first login. A cell beginning with {WORD} is read as a hash: write {PLAIN} before
    a password that itself begins so.
    """
    data = file.read(mailbox_csv.MAX_IMPORT_BYTES + 1)
    try:
        report = mailbox_csv.import_mailboxes(
            db.session, data, scope=None, actor=CLI_ACTOR, dry_run=dry_run
        )
        if report.applied:
            db.session.commit()
    except ProviderError as exc:
        db.session.rollback()
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif not report.ok:
        for line in report.error_lines():
            click.echo(f"Error: {line}", err=True)
    elif dry_run:
        for row in report.rows:
            note = ""
            if row.new and row.new.makes_up_password:
                note = " (password made up)"
            elif row.new and row.new.password_scheme:
                note = f" (password hash kept: {row.new.password_scheme})"
            click.echo(f"line {row.line}: would create {row.address}{note}")
        click.echo(f"{len(report.rows)} mailbox(es) would be created; nothing was changed")
    else:
        # The made-up passwords are the output (a CSV to hand out); the count goes to stderr.
        click.echo(f"created {len(report.rows)} mailbox(es)", err=True)
        if report.passwords:
            click.echo(report.passwords_csv(), nl=False)
    if not report.ok:
        raise SystemExit(1)


@mailbox_group.command("export")
@click.argument("file", default="-", type=click.File("w", encoding="utf-8", lazy=True))
@click.option("--domain", default=None, help="Only this domain.")
def mailbox_export(file: IO[str], domain: str | None) -> None:
    """Write the mailboxes as CSV (the import's columns, no passwords) to FILE or stdout."""
    domain_ids = None
    if domain:
        with committing():
            domain_ids = {provisioning.get_domain(db.session, domain).id}
    text = mailbox_csv.export_csv(db.session, domain_ids=domain_ids)
    # Written as one string: the CRLF line ends stay as they are on every platform.
    file.write(text)


# --- aliases -------------------------------------------------------------------------------


@click.group("alias")
def alias_group() -> None:
    """Aliases: addresses that deliver to a mailbox and that it may send as."""


@alias_group.command("add")
@click.argument("address")
@click.argument("mailbox")
@json_option
def alias_add(address: str, mailbox: str, as_json: bool) -> None:
    """Add ADDRESS as an alias of MAILBOX."""
    with committing():
        target = provisioning.get_mailbox(db.session, mailbox)
        alias = provisioning.create_alias(db.session, address, target, actor=CLI_ACTOR)
    emit(alias.to_dict(), as_json, lambda r: f"{r['address']} -> {r['mailbox']}")


@alias_group.command("list")
@click.option("--search", default=None)
@json_option
def alias_list(search: str | None, as_json: bool) -> None:
    """List aliases."""
    query = reports.alias_select(search=search)
    records = [alias.to_dict() for alias in db.session.scalars(query)]
    emit(
        records,
        as_json,
        lambda rs: "\n".join(f"{r['address']} -> {r['mailbox']}" for r in rs) or "no aliases",
    )


@alias_group.command("delete")
@click.argument("address")
def alias_delete(address: str) -> None:
    """Delete an alias."""
    with committing():
        alias = provisioning.get_alias(db.session, address)
        provisioning.delete_alias(db.session, alias, actor=CLI_ACTOR)
    click.echo(f"deleted alias {alias.address}")


# --- admins --------------------------------------------------------------------------------


@click.group("admin")
def admin_group() -> None:
    """Admin accounts of the panel."""


@admin_group.command("add")
@click.argument("email")
@click.option("--superadmin", is_flag=True, help="May manage every domain and the admins.")
@click.option("--domain", "domains", multiple=True, help="A domain this admin manages (repeat).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@json_option
def admin_add(
    email: str, superadmin: bool, domains: tuple[str, ...], password_stdin: bool, as_json: bool
) -> None:
    """Create an admin: a superadmin, or a domain admin limited to --domain."""
    if superadmin and domains:
        raise click.ClickException("a superadmin manages every domain; drop --domain")
    password, generated = password_or_generated(password_stdin)
    with committing():
        chosen = [provisioning.get_domain(db.session, name) for name in domains]
        admin = admins.create_admin(
            db.session, email, password, superadmin=superadmin, domains=chosen, actor=CLI_ACTOR
        )
    record = {
        "email": admin.email,
        "is_superadmin": admin.is_superadmin,
        "domains": sorted(d.name for d in admin.domains),
        "password": generated,
    }
    emit(
        record,
        as_json,
        lambda r: (
            f"{r['email']} ({'superadmin' if r['is_superadmin'] else ', '.join(r['domains'])})"
            + (f"\n  password: {generated}   (shown once)" if generated else "")
        ),
    )


@admin_group.command("password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def admin_password(email: str, password_stdin: bool) -> None:
    """Set an admin's password (made up and printed when not read from stdin)."""
    password, generated = password_or_generated(password_stdin)
    with committing():
        admin = admins.get_admin(db.session, email)
        admins.set_admin_password(db.session, admin, password, actor=CLI_ACTOR)
    click.echo(f"password changed for {admin.email}" + (f": {generated}" if generated else ""))


@admin_group.command("reset-2fa")
@click.argument("email")
def admin_reset_two_factor(email: str) -> None:
    """Turn off an admin's two-factor login (lost phone); they set it up again (audited)."""
    from provider.services import two_factor

    with committing():
        admin = admins.get_admin(db.session, email)
        changed = two_factor.reset(db.session, admin, actor=CLI_ACTOR)
    if changed:
        click.echo(
            f"two-factor login reset for {admin.email}; they log in with the password, "
            "then set it up again"
        )
    else:
        click.echo(f"{admin.email} has no two-factor login; nothing to reset")


@admin_group.command("list")
@json_option
def admin_list(as_json: bool) -> None:
    """List admins."""
    from provider.models import AdminUser

    records = [
        {
            "email": a.email,
            "is_superadmin": a.is_superadmin,
            "domains": sorted(d.name for d in a.domains),
            "active": a.active,
        }
        for a in db.session.scalars(select(AdminUser).order_by(AdminUser.email))
    ]
    emit(
        records,
        as_json,
        lambda rs: "\n".join(
            f"{r['email']}  {'superadmin' if r['is_superadmin'] else ', '.join(r['domains'])}"
            for r in rs
        ),
    )


# --- backup --------------------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    """`1 message`, `2 messages`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _size(nbytes: int) -> str:
    """As the web writes sizes (quota.format_size): `8.94 KB`, 1 KB = 1024 bytes."""
    from provider.services.quota import format_size

    return format_size(nbytes)


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, steps: int) -> None:
        return None


def _progress(length: int, label: str) -> Any:
    """A progress bar on standard error for people at a terminal; nothing in scripts and pipes
    (so `--json` output stays parseable even with both streams captured together)."""
    if not sys.stderr.isatty():
        return _NoProgress()
    return click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)


@click.group("backup")
def backup_group() -> None:
    """Time-machine backups of IMAP mailboxes: snapshot, list, restore, verify."""


@backup_group.command("run")
@click.argument("addresses", nargs=-1)
@json_option
def backup_run(addresses: tuple[str, ...], as_json: bool) -> None:
    """Snapshot now (IMAP mailboxes only; all of them when no ADDRESS is given), then retention."""
    from provider.services import backups

    try:
        targets, _ = backups.backup_targets(db.session, addresses or None)
    except ProviderError as exc:
        raise click.ClickException(exc.message) from None
    with _progress(len(targets), "snapshots") as bar:
        summary = backups.run_backups(
            db.session, addresses or None, progress=lambda _mailbox: bar.update(1)
        )
    record = summary.to_dict()
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        for run in summary.mailboxes:
            if run.error:
                click.echo(f"{run.address}  FAILED  {run.error}")
            else:
                click.echo(
                    f"{run.address}  {run.snapshot}  {_count(run.messages, 'message')}  "
                    f"{_size(run.bytes)}  {run.new_objects} new  {run.seconds:.2f}s"
                    + (f"  dropped {len(run.dropped)}" if run.dropped else "")
                )
        click.echo(
            f"{record['snapshots']} snapshot(s), {record['failed']} failed, "
            f"{record['skipped_pop3_only']} POP3-only mailbox(es) skipped, "
            f"{record['snapshots_dropped']} old snapshot(s) dropped, "
            f"{record['objects_removed']} object(s) removed"
        )
    if summary.failed:
        raise SystemExit(1)


@backup_group.command("list")
@click.argument("address")
@json_option
def backup_list(address: str, as_json: bool) -> None:
    """The mailbox's snapshots, newest first."""
    from provider.services import backups

    try:
        mailbox = provisioning.get_mailbox(db.session, address)
        records = [s.to_dict() for s in backups.list_snapshots(db.session, address)]
    except ProviderError as exc:
        raise click.ClickException(exc.message) from None

    def text(rows: list[dict[str, Any]]) -> str:
        lines = [
            f"{r['snapshot']}  {r['created_at']}  {_count(r['messages'], 'message')}  "
            f"{_size(r['bytes'])}  {r['status']}"
            for r in rows
        ]
        if not mailbox.imap_enabled:
            lines.append(
                f"{mailbox.address} uses POP3 only: its mail leaves the server, so no snapshot "
                "is taken" + (" (those above were taken while it used IMAP)" if rows else "")
            )
        elif not rows:
            lines.append(
                "no snapshots yet: the nightly backup job takes the first, or now: "
                f"provider backup run {mailbox.address}"
            )
        return "\n".join(lines)

    emit(records, as_json, text)


@backup_group.command("restore")
@click.argument("address")
@click.option("--snapshot", "snapshot_id", required=True, help="Snapshot id (see backup list).")
@click.option("--folder", default=None, help="Only this folder of the snapshot.")
@click.option("--uid", "uids", type=int, multiple=True, help="Only these UIDs (of --folder).")
@click.option("--into", default=None, help="Restore under this folder instead of the originals.")
@json_option
def backup_restore(
    address: str,
    snapshot_id: str,
    folder: str | None,
    uids: tuple[int, ...],
    into: str | None,
    as_json: bool,
) -> None:
    """Bring back what the mailbox no longer has; never deletes, overwrites or duplicates."""
    from provider.services import backups

    try:
        report = backups.restore(
            db.session, address, snapshot_id, folder, list(uids) or None, into, actor=CLI_ACTOR
        )
    except ProviderError as exc:
        db.session.rollback()
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(
            f"restored {report.restored} message(s) ({_size(report.restored_bytes)}), "
            f"skipped {report.skipped} already present, "
            f"{report.shortfall} not restored for lack of quota ({_size(report.shortfall_bytes)})"
            + (f", {len(report.unreadable)} unreadable in the backup" if report.unreadable else "")
        )
        for missing in report.shortfall_messages:
            click.echo(
                f"  over quota: {missing['folder']} UID {missing['uid']} {missing['subject']}"
            )
        for problem in report.unreadable:
            click.echo(f"  unreadable: {problem}")
    if report.shortfall or report.unreadable:
        raise SystemExit(1)


@backup_group.command("verify")
@click.argument("addresses", nargs=-1)
@json_option
def backup_verify(addresses: tuple[str, ...], as_json: bool) -> None:
    """Re-read every backup object and manifest; exit 1 naming anything damaged or missing."""
    from provider.services import backups

    try:
        count = (
            len(addresses)
            if addresses
            else db.session.scalar(select(func.count()).select_from(Mailbox))
        )
        with _progress(count or 0, "verifying") as bar:
            report = backups.verify(
                db.session, addresses or None, progress=lambda _mailbox: bar.update(1)
            )
    except ProviderError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for box in report.mailboxes:
            state = "ok" if box.ok else "DAMAGED"
            click.echo(
                f"{box.address}  {state}  {box.snapshots} snapshot(s)  "
                f"{box.objects_checked} object(s) checked"
            )
            for problem in box.problems:
                if "digest" in problem:
                    click.echo(
                        f"  {problem['problem']} object {problem['digest']} ({problem['path']}) "
                        f"used by {', '.join(problem['snapshots']) or 'no snapshot'}"
                    )
                else:
                    click.echo(
                        f"  {problem['problem']} manifest {problem['manifest']} "
                        f"({problem['path']}) {problem['detail']}"
                    )
        click.echo("all backups verified" if report.ok else "backups are damaged")
    if not report.ok:
        raise SystemExit(1)


# --- identities and the outbound queue -----------------------------------------------------


def _sender_lines(overview: Any) -> str:
    kinds = {"mailbox": "own address", "alias": "alias", "identity": "identity"}
    lines = []
    for entry in overview.entries:
        label = kinds[entry.kind]
        if entry.kind == "identity" and not entry.enabled:
            label += " (switched off by the owner)"
        elif entry.kind == "identity" and not entry.usable:
            label += " (not usable: POP3-only)"
        name = f'  "{entry.display_name}"' if entry.display_name else ""
        lines.append(f"{entry.address}  {label}{name}")
    if overview.extras_unavailable:
        lines.append(f"no extra identities: {overview.extras_unavailable}")
    return "\n".join(lines)


@click.group("identity")
def identity_group() -> None:
    """Extra sender addresses of IMAP mailboxes (own address and aliases need none)."""


@identity_group.command("add")
@click.argument("mailbox")
@click.argument("address")
@click.option("--name", "display_name", default="", help="Display name for the From: header.")
@json_option
def identity_add(mailbox: str, address: str, display_name: str, as_json: bool) -> None:
    """Let MAILBOX send as ADDRESS (in a domain hosted here)."""
    from provider.services import identities

    with committing():
        owner = provisioning.get_mailbox(db.session, mailbox)
        identity = identities.add_identity(
            db.session, owner, address, display_name, actor=CLI_ACTOR
        )
    emit(
        identity.to_dict(),
        as_json,
        lambda r: (
            f"{r['mailbox']} may now send as {r['address']}"
            + (f' ("{r["display_name"]}")' if r["display_name"] else "")
        ),
    )


@identity_group.command("list")
@click.argument("mailbox")
@json_option
def identity_list(mailbox: str, as_json: bool) -> None:
    """Every address MAILBOX may send as: its own, its aliases and its identities."""
    from provider.services import identities

    try:
        owner = provisioning.get_mailbox(db.session, mailbox)
    except ProviderError as exc:
        raise click.ClickException(exc.message) from None
    overview = identities.sender_overview(db.session, owner)
    emit(overview.to_dict() if as_json else overview, as_json, _sender_lines)


@identity_group.command("delete")
@click.argument("mailbox")
@click.argument("address")
def identity_delete(mailbox: str, address: str) -> None:
    """Stop MAILBOX from sending as the extra identity ADDRESS."""
    from provider.services import identities

    with committing():
        owner = provisioning.get_mailbox(db.session, mailbox)
        identity = identities.get_identity(db.session, owner, address)
        removed = identity.address
        identities.delete_identity(db.session, identity, actor=CLI_ACTOR)
    click.echo(f"{owner.address} may no longer send as {removed}")


def _age(created: datetime) -> str:
    seconds = max(int((clock.now() - created).total_seconds()), 0)
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _queue_line(record: dict[str, Any], created: datetime) -> str:
    recipients = ", ".join(f"{r['address']} ({r['state']})" for r in record["recipients"])
    return (
        f"{record['queue_id']}  {_age(created):>7}  {_size(record['size']):>9}  "
        f"<{record['sender']}> -> {recipients}"
    )


@click.group("queue")
def queue_group() -> None:
    """The outbound queue: messages not yet delivered to every recipient."""


@queue_group.command("list")
@click.option(
    "--search", default=None, help="Only messages whose sender or a recipient contains this."
)
@json_option
def queue_list(search: str | None, as_json: bool) -> None:
    """Open messages, oldest first."""
    from provider.services import outbound

    messages = outbound.list_visible(db.session, domain_ids=None, search=search)
    if as_json:
        click.echo(json.dumps([outbound.message_record(m) for m in messages], indent=2))
        return
    for message in messages:
        click.echo(_queue_line(outbound.message_record(message), message.created_at))
    if not messages:
        click.echo("no queued messages" + (f" matching {search!r}" if search else ""))


@queue_group.command("show")
@click.argument("queue_id")
@json_option
def queue_show(queue_id: str, as_json: bool) -> None:
    """One message with each recipient's state, attempts, next attempt and last reply."""
    from provider.services import outbound

    try:
        message = outbound.find(db.session, queue_id)
    except ProviderError as exc:
        raise click.ClickException(exc.message) from None
    record = outbound.message_record(message)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    click.echo(f"queue id:  {record['queue_id']}")
    click.echo(f"sender:    <{record['sender']}>")
    click.echo(f"subject:   {record['subject']}")
    click.echo(f"size:      {_size(record['size'])}")
    click.echo(f"queued:    {record['created_at']} ({_age(message.created_at)} ago)")
    for r in record["recipients"]:
        click.echo(
            f"  {r['address']}  {r['state']}  attempts {r['attempts']}  "
            f"next {r['next_attempt_at'] or '-'}  last reply {r['last_reply'] or '-'}"
        )


@queue_group.command("retry")
@click.argument("queue_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Every deferred message.")
def queue_retry(queue_id: str | None, retry_all: bool) -> None:
    """Make the deferred recipients of QUEUE_ID (or of every message, --all) due now."""
    from provider.services import outbound

    if bool(queue_id) == retry_all:
        raise click.ClickException("give either a QUEUE_ID or --all")
    try:
        count = outbound.retry(db.session, None if retry_all else queue_id, actor=CLI_ACTOR)
    except ProviderError as exc:
        db.session.rollback()
        raise click.ClickException(exc.message) from None
    click.echo(f"{count} recipient(s) due now")


@queue_group.command("delete")
@click.argument("queue_id")
def queue_delete(queue_id: str) -> None:
    """Take QUEUE_ID's undelivered recipients out of the queue (no bounce is sent)."""
    from provider.services import outbound

    try:
        count = outbound.delete(db.session, queue_id, actor=CLI_ACTOR)
    except ProviderError as exc:
        db.session.rollback()
        raise click.ClickException(exc.message) from None
    click.echo(f"deleted {count} recipient(s) of {queue_id.strip().upper()}")


# --- jobs ----------------------------------------------------------------------------------


@click.group("jobs")
def jobs_group() -> None:
    """Scheduled jobs: list them, or run one now."""


@jobs_group.command("list")
@json_option
def jobs_list(as_json: bool) -> None:
    """The scheduled jobs: cron (UTC), next run and last run."""
    found = records.job_records(current_app._get_current_object())  # type: ignore[attr-defined]

    def text(rows: list[dict[str, Any]]) -> str:
        lines = []
        for r in rows:
            last = r["last_run"]
            done = f"last {last['started_at'][:16]} {last['outcome']}" if last else "never run"
            lines.append(
                f"{r['name']:16} {r['cron'] or 'off':12} next {(r['next_run'] or '-')[:16]:16}"
                f"  {done}  {r['description']}"
            )
        return "\n".join(lines)

    emit(found, as_json, text)


@jobs_group.command("run")
@click.argument("name")
@click.option("--now", "as_of", default=None, help="Run as of this ISO-8601 time (UTC if no zone).")
@json_option
def jobs_run(name: str, as_of: str | None, as_json: bool) -> None:
    """Run one scheduled job once, now or as of --now (the run is recorded like a scheduled one)."""
    from jobs.scheduler import JOBS, get_job, run_now

    job = get_job(name)
    if job is None:
        raise click.ClickException(
            f"unknown job {name!r}; choose from {', '.join(j.name for j in JOBS)}"
        )
    moment = None
    if as_of:
        try:
            moment = datetime.fromisoformat(as_of)
        except ValueError:
            raise click.ClickException(f"--now must be an ISO-8601 time, not {as_of!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if moment is None:
        record, summary = run_now(app, job, "command", CLI_ACTOR)
    else:
        with clock.frozen_at(moment):
            record, summary = run_now(app, job, "command", CLI_ACTOR)
    if record.error:
        raise click.ClickException(f"{name} failed: {record.error}")
    emit(summary, as_json, lambda r: f"{name}: " + json.dumps(r, indent=2))


# --- sieve ----------------------------------------------------------------------------------


def _sieve_owner(address: str) -> Mailbox:
    try:
        return provisioning.get_mailbox(db.session, address)
    except ProviderError as exc:
        raise click.ClickException(exc.message) from None


def _read_script_file(path: str, limit: int) -> bytes:
    """FILE's bytes ("-" = standard input), read no further than one byte past `limit`."""
    try:
        if path == "-":
            return sys.stdin.buffer.read(limit + 1)
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


@click.group("sieve")
def sieve_group() -> None:
    """Sieve filtering scripts of a mailbox (stored as Dovecot's Pigeonhole keeps them)."""


@sieve_group.command("list")
@click.argument("address")
@json_option
def sieve_list(address: str, as_json: bool) -> None:
    """The scripts of ADDRESS, the active one marked, and the last errors of the active one."""
    from provider.services import sieve_scripts
    from provider.services.storage import mail_store

    owner = _sieve_owner(address)
    store = mail_store()
    scripts = [info.to_dict() for info in sieve_scripts.list_scripts(store, owner)]
    errors = sieve_scripts.recent_errors(store, owner, 5)

    def text(records: list[dict[str, Any]]) -> str:
        lines = [
            f"{r['name']}  {r['size']} bytes" + ("  (active)" if r["active"] else "")
            for r in records
        ] or [f"{owner.address} has no Sieve scripts"]
        if errors:
            lines.append(f"last error: {errors[-1]}")
        return "\n".join(lines)

    emit(scripts, as_json, text)


@sieve_group.command("get")
@click.argument("address")
@click.argument("name")
def sieve_get(address: str, name: str) -> None:
    """Print the script NAME of ADDRESS as stored."""
    from provider.services import sieve_scripts
    from provider.services.storage import mail_store

    owner = _sieve_owner(address)
    try:
        source = sieve_scripts.get_script(mail_store(), owner, name)
    except ProviderError as exc:
        raise click.ClickException(exc.message) from None
    sys.stdout.buffer.write(source)
    sys.stdout.buffer.flush()


@sieve_group.command("put")
@click.argument("address")
@click.argument("name")
@click.argument("file")
@click.option("--activate", is_flag=True, help="Make it the active script.")
@json_option
def sieve_put(address: str, name: str, file: str, activate: bool, as_json: bool) -> None:
    """Check and store FILE ("-" for standard input) as the script NAME of ADDRESS."""
    from provider.services import sieve_scripts
    from provider.services.storage import mail_store

    limit = sieve_scripts.limits()
    source = _read_script_file(file, limit.max_script_bytes)
    with committing():
        owner = provisioning.get_mailbox(db.session, address)
        info = sieve_scripts.put_script(
            db.session, mail_store(), owner, name, source, activate=activate, actor=CLI_ACTOR
        )
    emit(
        info.to_dict(),
        as_json,
        lambda r: (
            f"stored {r['name']} ({r['size']} bytes)"
            + (", active" if r["active"] else "")
            + "".join(f"\n{warning}" for warning in r.get("warnings", []))
        ),
    )


@sieve_group.command("activate")
@click.argument("address")
@click.argument("name")
def sieve_activate(address: str, name: str) -> None:
    """Make NAME the active script of ADDRESS; an empty NAME ('') deactivates."""
    from provider.services import sieve_scripts
    from provider.services.storage import mail_store

    with committing():
        owner = provisioning.get_mailbox(db.session, address)
        sieve_scripts.activate_script(db.session, mail_store(), owner, name, actor=CLI_ACTOR)
    click.echo(
        f"{name} is the active script of {owner.address}"
        if name
        else f"{owner.address} has no active script"
    )


@sieve_group.command("delete")
@click.argument("address")
@click.argument("name")
def sieve_delete(address: str, name: str) -> None:
    """Delete the script NAME of ADDRESS (not the active one: deactivate it first)."""
    from provider.services import sieve_scripts
    from provider.services.storage import mail_store

    with committing():
        owner = provisioning.get_mailbox(db.session, address)
        sieve_scripts.delete_script(db.session, mail_store(), owner, name, actor=CLI_ACTOR)
    click.echo(f"deleted {name} of {owner.address}")


# --- API tokens ----------------------------------------------------------------------------


@click.group("token")
def token_group() -> None:
    """API tokens: bearer secrets for programs (billing systems) acting as an admin."""


def _token_text(record: dict[str, Any]) -> str:
    state = "revoked" if record["revoked_at"] else "active"
    expires = record["expires_at"] or "never"
    used = record["last_used_at"] or "never"
    return (
        f"{record['id']}  {record['name']}  {record['admin']}  {record['scope']}  "
        f"pvd_{record['prefix']}…  {state}  expires {expires}  last used {used}"
    )


@token_group.command("create")
@click.option("--admin", "admin_email", required=True, help="The admin the token acts as.")
@click.option("--name", default="api", show_default=True, help="What uses it (e.g. billing).")
@click.option("--scope", type=click.Choice(["read", "write"]), default="read", show_default=True)
@click.option("--expires", "expires_days", type=int, default=None, help="Days until it expires.")
@click.option(
    "--allow-ip",
    "allowed_ips",
    multiple=True,
    help="Only from this address or network (repeat for more); default: from anywhere.",
)
@json_option
def token_create(
    admin_email: str,
    name: str,
    scope: str,
    expires_days: int | None,
    allowed_ips: tuple[str, ...],
    as_json: bool,
) -> None:
    """Make a token; its secret is printed this once (only a hash is kept)."""
    from provider.services import tokens

    with committing():
        admin = admins.get_admin(db.session, admin_email)
        made = tokens.create_token(
            db.session,
            admin,
            name=name,
            scope=scope,
            expires_days=expires_days,
            allowed_ips=list(allowed_ips) or None,
            actor=CLI_ACTOR,
        )
    record = {**made.token.to_dict(), "token": made.secret}
    emit(
        record,
        as_json,
        lambda r: f"{r['token']}\n(shown once: store it now) {_token_text(r)}",
    )


@token_group.command("list")
@click.option("--admin", "admin_email", default=None, help="Only this admin's tokens.")
@json_option
def token_list(admin_email: str | None, as_json: bool) -> None:
    """List tokens (never their secrets), newest first."""
    from provider.services import tokens

    admin = admins.get_admin(db.session, admin_email) if admin_email else None
    records = [token.to_dict() for token in tokens.list_tokens(db.session, admin)]
    emit(records, as_json, lambda rs: "\n".join(map(_token_text, rs)) or "no tokens")


@token_group.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    """Revoke token ID at once."""
    from provider.services import tokens

    with committing():
        token = tokens.revoke_token(
            db.session, tokens.get_token(db.session, token_id), actor=CLI_ACTOR
        )
    click.echo(f"revoked token {token.id} ({token.name})")


# --- webhooks --------------------------------------------------------------------------------


@click.group("webhook")
def webhook_group() -> None:
    """Webhooks: signed POSTs of events (mailboxes, quotas, trials) to chosen URLs."""


def _endpoint_text(record: dict[str, Any]) -> str:
    state = "active" if record["active"] else "paused"
    owner = record["admin"] or "all domains"
    return f"{record['id']}  {record['url']}  {state}  {owner}  {','.join(record['events'])}"


def _delivery_text(record: dict[str, Any]) -> str:
    line = (
        f"{record['id']}  {record['type']}  {record['object']}  {record['state']}  "
        f"attempts {record['attempts']}  endpoint {record['endpoint_id']}"
    )
    if record["state"] == "pending":
        line += f"  next {record['next_attempt_at']}"
    if record["last_error"]:
        line += f"  last: {record['last_error']}"
    return line


@webhook_group.command("add")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    required=True,
    help="An event to send (repeat, or separate with commas), e.g. mailbox.created.",
)
@click.option(
    "--admin",
    "admin_email",
    default=None,
    help="The admin it belongs to (a domain admin's gets their domains' events only); "
    "default: the operator's, for every domain.",
)
@click.option("--description", default="", help="What receives it (e.g. billing).")
@json_option
def webhook_add(
    url: str, events: tuple[str, ...], admin_email: str | None, description: str, as_json: bool
) -> None:
    """Register URL for events; its signing secret is printed this once."""
    from provider.services import webhooks

    with committing():
        admin = admins.get_admin(db.session, admin_email) if admin_email else None
        made = webhooks.create_endpoint(
            db.session,
            url=url,
            events=",".join(events),
            admin=admin,
            description=description,
            actor=CLI_ACTOR,
        )
    record = {**made.endpoint.to_dict(), "secret": made.secret}
    emit(
        record,
        as_json,
        lambda r: f"{r['secret']}\n(signing secret, shown once: store it now) {_endpoint_text(r)}",
    )


@webhook_group.command("list")
@json_option
def webhook_list(as_json: bool) -> None:
    """List webhook endpoints (never their secrets)."""
    from provider.services import webhooks

    records = [endpoint.to_dict() for endpoint in webhooks.list_endpoints(db.session)]
    emit(records, as_json, lambda rs: "\n".join(map(_endpoint_text, rs)) or "no webhooks")


@webhook_group.command("remove")
@click.argument("endpoint_id", type=int)
def webhook_remove(endpoint_id: int) -> None:
    """Remove endpoint ID with its deliveries."""
    from provider.services import webhooks

    with committing():
        endpoint = webhooks.get_endpoint(db.session, endpoint_id)
        url = endpoint.url
        webhooks.delete_endpoint(db.session, endpoint, actor=CLI_ACTOR)
    click.echo(f"removed webhook {endpoint_id} ({url})")


@webhook_group.command("deliveries")
@click.option("--endpoint", "endpoint_id", type=int, default=None, help="Only this endpoint's.")
@click.option("--state", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
def webhook_deliveries(
    endpoint_id: int | None, state: str | None, limit: int, as_json: bool
) -> None:
    """Deliveries newest first, with their attempts (--json)."""
    from provider.services import webhooks

    found = webhooks.list_deliveries(db.session, endpoint_id=endpoint_id, state=state, limit=limit)
    records = [{**d.to_dict(), "attempt_log": [a.to_dict() for a in d.attempt_log]} for d in found]
    emit(records, as_json, lambda rs: "\n".join(map(_delivery_text, rs)) or "no deliveries")


@webhook_group.command("redeliver")
@click.argument("delivery_id", type=int)
def webhook_redeliver(delivery_id: int) -> None:
    """Send delivery ID's event to its endpoint again."""
    from provider.services import webhooks

    with committing():
        again = webhooks.redeliver(
            db.session, webhooks.get_delivery(db.session, delivery_id), actor=CLI_ACTOR
        )
    click.echo(f"queued again as delivery {again.id}")


COMMANDS = [
    init_command,
    serve_command,
    domain_group,
    mailbox_group,
    alias_group,
    admin_group,
    backup_group,
    jobs_group,
    identity_group,
    queue_group,
    sieve_group,
    token_group,
    webhook_group,
]


def register_commands(app: Flask) -> None:
    """Put the provider commands on `flask --app app …` too."""
    for command in COMMANDS:
        app.cli.add_command(command)


def _in_app_context(command: click.Command) -> None:
    """Run every leaf command inside an app context (made by provider.cli's ScriptInfo when
    there is none, as under `flask --app app` there already is)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _in_app_context(sub)
    elif command.callback is not None:
        command.callback = with_appcontext(command.callback)


for _command in COMMANDS:
    _in_app_context(_command)

BY_NAME = {command.name: command for command in COMMANDS}
