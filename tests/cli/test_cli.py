"""The `provider` CLI through Click's runner: contract output, --json, and one-line errors."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from provider.models import AdminUser, AuditEvent, Mailbox
from provider.services import auth
from tests.conftest import make_domain, make_mailbox

PASSWORD = "a long enough passphrase\n"


def invoke(runner, *args, input=None):
    return runner.invoke(args=list(args), input=input)


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and fragment in lines[0]


def test_init_migrates_and_makes_the_first_admin_once(runner, session, app_config):
    result = invoke(runner, "init", "--admin-email", "ops@example.com", "--json")
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)
    assert first["admin_created"] and first["admin_email"] == "ops@example.com"
    assert first["login_url"] == "http://127.0.0.1:5000/admin/login"
    assert auth.authenticate_admin(session, "ops@example.com", first["admin_password"])

    again = invoke(runner, "init")
    assert again.exit_code == 0
    assert "ops@example.com" in again.output and first["admin_password"] not in again.output
    assert session.scalar(select(func.count()).select_from(AdminUser)) == 1


def test_contract_quota_7_is_refused_and_8_is_stored_in_bytes(runner, session):
    make_domain(session)
    refused = invoke(
        runner,
        "mailbox",
        "add",
        "a@example.test",
        "--quota-gb",
        "7",
        "--protocols",
        "pop3",
        "--password-stdin",
        input=PASSWORD,
    )
    assert_one_line_error(refused, "between 8 and 100 GB")
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 0

    created = invoke(
        runner,
        "mailbox",
        "add",
        "a@example.test",
        "--quota-gb",
        "8",
        "--protocols",
        "pop3",
        "--password-stdin",
        input=PASSWORD,
    )
    assert created.exit_code == 0, created.output
    shown = invoke(runner, "mailbox", "show", "a@example.test", "--json")
    assert shown.exit_code == 0
    record = json.loads(shown.output)
    assert record["quota_bytes"] == 8589934592
    assert record["protocols"] == ["pop3"]
    assert auth.authenticate_mailbox(session, "a@example.test", PASSWORD.strip())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--quota-gb", "100.5", "--protocols", "imap"], "between 8 and 100 GB"),
        (["--quota-gb", "ten", "--protocols", "imap"], "number of GB"),
        (["--quota-gb", "8", "--protocols", "smtp"], "unknown protocol"),
        (["--quota-gb", "8", "--protocols", ","], "at least one protocol"),
    ],
)
def test_mailbox_add_with_bad_options_exits_1_with_one_line(runner, session, args, fragment):
    make_domain(session)
    result = invoke(
        runner, "mailbox", "add", "b@example.test", *args, "--password-stdin", input=PASSWORD
    )
    assert_one_line_error(result, fragment)
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 0


def test_mailbox_add_without_password_stdin_prints_a_generated_one(runner, session):
    make_domain(session)
    result = invoke(
        runner,
        "mailbox",
        "add",
        "b@example.test",
        "--quota-gb",
        "8.5",
        "--protocols",
        "imap,pop3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["protocols"] == ["imap", "pop3"] and record["quota_bytes"] == int(8.5 * 1024**3)
    assert auth.authenticate_mailbox(session, "b@example.test", record["password"])


def test_empty_password_on_stdin_is_refused(runner, session):
    make_domain(session)
    result = invoke(
        runner,
        "mailbox",
        "add",
        "b@example.test",
        "--quota-gb",
        "8",
        "--protocols",
        "imap",
        "--password-stdin",
        input="\n",
    )
    assert_one_line_error(result, "no password")


def test_trial_flag_makes_a_trial_with_an_expiry(runner, session):
    make_domain(session)
    result = invoke(
        runner,
        "mailbox",
        "add",
        "t@example.test",
        "--quota-gb",
        "8",
        "--protocols",
        "imap",
        "--trial",
        "--json",
    )
    record = json.loads(result.output)
    assert record["plan"] == "trial" and record["trial_expires_at"]


def test_mailbox_set_changes_settings_and_audits_as_cli(runner, session):
    make_mailbox(session)
    result = invoke(
        runner,
        "mailbox",
        "set",
        "ALICE@example.test",
        "--quota-gb",
        "20",
        "--protocols",
        "imap,pop3",
        "--status",
        "suspended",
        "--plan",
        "paid",
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert (record["quota_bytes"], record["protocols"], record["status"]) == (
        20 * 1024**3,
        ["imap", "pop3"],
        "suspended",
    )
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "mailbox.update"))
    assert event.actor == "cli"


def test_mailbox_set_password_from_stdin(runner, session):
    make_mailbox(session)
    result = invoke(
        runner,
        "mailbox",
        "set",
        "alice@example.test",
        "--password-stdin",
        input="a different passphrase\n",
    )
    assert result.exit_code == 0, result.output
    session.expire_all()
    assert auth.authenticate_mailbox(session, "alice@example.test", "a different passphrase")


def test_mailbox_set_out_of_bounds_changes_nothing(runner, session):
    make_mailbox(session)
    result = invoke(
        runner, "mailbox", "set", "alice@example.test", "--quota-gb", "7.5", "--protocols", "pop3"
    )
    assert_one_line_error(result, "between 8 and 100 GB")
    session.expire_all()
    mailbox = session.scalar(select(Mailbox))
    assert mailbox.protocols == ["imap"] and mailbox.quota_bytes == 8 * 1024**3


def test_show_and_delete_of_a_missing_mailbox_exit_1(runner, session):
    assert_one_line_error(
        invoke(runner, "mailbox", "show", "nobody@example.test"), "does not exist"
    )
    assert_one_line_error(
        invoke(runner, "mailbox", "show", "nobody@example.test", "--json"), "does not exist"
    )
    assert_one_line_error(
        invoke(runner, "mailbox", "delete", "nobody@example.test"), "does not exist"
    )


def test_mailbox_list_filters_and_prints_json(runner, session):
    make_mailbox(session, "alice@one.test")
    make_mailbox(session, "bob@two.test", protocols="pop3")
    everything = json.loads(invoke(runner, "mailbox", "list", "--json").output)
    assert [m["address"] for m in everything] == ["alice@one.test", "bob@two.test"]
    only_two = json.loads(
        invoke(runner, "mailbox", "list", "--domain", "two.test", "--json").output
    )
    assert [m["address"] for m in only_two] == ["bob@two.test"]
    searched = invoke(runner, "mailbox", "list", "--search", "ALI")
    assert "alice@one.test" in searched.output and "bob@" not in searched.output


def test_mailbox_delete(runner, session):
    make_mailbox(session)
    result = invoke(runner, "mailbox", "delete", "alice@example.test")
    assert result.exit_code == 0 and "deleted" in result.output
    assert session.scalar(select(func.count()).select_from(Mailbox)) == 0


def test_domain_add_list_delete(runner, session):
    added = invoke(runner, "domain", "add", "Shop.Test", "--signup", "--json")
    assert added.exit_code == 0, added.output
    assert (
        json.loads(added.output)["name"] == "shop.test"
        and json.loads(added.output)["signup_enabled"]
    )
    assert_one_line_error(invoke(runner, "domain", "add", "shop.test"), "already exists")
    assert_one_line_error(invoke(runner, "domain", "add", "not a domain"), "not a valid domain")
    listed = json.loads(invoke(runner, "domain", "list", "--json").output)
    assert [d["name"] for d in listed] == ["shop.test"]
    closed = invoke(runner, "domain", "set", "shop.test", "--no-signup", "--json")
    assert json.loads(closed.output)["signup_enabled"] is False
    assert invoke(runner, "domain", "delete", "shop.test").exit_code == 0
    assert json.loads(invoke(runner, "domain", "list", "--json").output) == []


def test_domain_with_mailboxes_is_not_deleted_by_accident(runner, session):
    make_mailbox(session)
    assert_one_line_error(invoke(runner, "domain", "delete", "example.test"), "still has 1 mailbox")
    assert_one_line_error(invoke(runner, "domain", "delete", "missing.test"), "does not exist")


def test_alias_add_list_delete(runner, session):
    make_mailbox(session)
    added = invoke(runner, "alias", "add", "Info@example.test", "alice@example.test", "--json")
    assert json.loads(added.output) == {
        "address": "info@example.test",
        "mailbox": "alice@example.test",
    }
    assert_one_line_error(
        invoke(runner, "alias", "add", "alice@example.test", "alice@example.test"), "already exists"
    )
    assert "info@example.test -> alice@example.test" in invoke(runner, "alias", "list").output
    shown = json.loads(invoke(runner, "mailbox", "show", "alice@example.test", "--json").output)
    assert shown["aliases"] == ["info@example.test"]
    assert invoke(runner, "alias", "delete", "info@example.test").exit_code == 0


def test_admin_add_domain_admin_and_change_password(runner, session):
    make_domain(session, "one.test")
    result = invoke(
        runner,
        "admin",
        "add",
        "d@example.com",
        "--domain",
        "one.test",
        "--password-stdin",
        "--json",
        input=PASSWORD,
    )
    assert json.loads(result.output)["domains"] == ["one.test"]
    assert_one_line_error(
        invoke(runner, "admin", "add", "x@example.com", "--domain", "nope.test"), "does not exist"
    )
    assert_one_line_error(
        invoke(runner, "admin", "add", "x@example.com", "--superadmin", "--domain", "one.test"),
        "drop --domain",
    )
    changed = invoke(
        runner,
        "admin",
        "password",
        "d@example.com",
        "--password-stdin",
        input="yet another passphrase\n",
    )
    assert changed.exit_code == 0
    assert auth.authenticate_admin(session, "d@example.com", "yet another passphrase")
    listed = json.loads(invoke(runner, "admin", "list", "--json").output)
    assert listed[0]["email"] == "d@example.com"
