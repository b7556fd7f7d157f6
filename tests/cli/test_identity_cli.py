"""`provider identity add|list|delete`: output, --json, audit rows and one-line errors."""

from __future__ import annotations

import json

from sqlalchemy import select

from provider.models import AuditEvent
from provider.services import identities, provisioning
from tests.conftest import TEST_ACTOR, make_domain, make_mailbox


def invoke(runner, *args):
    return runner.invoke(args=list(args))


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


def test_add_list_delete_an_identity(runner, session):
    alice = make_mailbox(session, "alice@example.test")
    provisioning.create_alias(session, "info@example.test", alice, actor=TEST_ACTOR)
    session.commit()

    added = invoke(
        runner, "identity", "add", "alice@example.test", "Sales@Example.test", "--name", "Sales"
    )
    assert added.exit_code == 0, added.output
    assert added.output == 'alice@example.test may now send as sales@example.test ("Sales")\n'

    listed = invoke(runner, "identity", "list", "ALICE@example.test")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "alice@example.test  own address",
        "info@example.test  alias",
        'sales@example.test  identity  "Sales"',
    ]
    as_json = json.loads(invoke(runner, "identity", "list", "alice@example.test", "--json").output)
    assert as_json["extras_unavailable"] is None
    assert [(s["address"], s["kind"]) for s in as_json["senders"]] == [
        ("alice@example.test", "mailbox"),
        ("info@example.test", "alias"),
        ("sales@example.test", "identity"),
    ]

    deleted = invoke(runner, "identity", "delete", "alice@example.test", "sales@example.test")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.output == "alice@example.test may no longer send as sales@example.test\n"
    assert not identities.may_send_as(session, alice, "sales@example.test")
    actions = session.scalars(
        select(AuditEvent.action)
        .where(AuditEvent.action.like("identity.%"))
        .order_by(AuditEvent.id)
    ).all()
    assert actions == ["identity.create", "identity.delete"]
    actors = session.scalars(
        select(AuditEvent.actor).where(AuditEvent.action.like("identity.%"))
    ).all()
    assert actors == ["cli", "cli"]


def test_add_json_prints_the_record(runner, session):
    make_mailbox(session, "alice@example.test")
    result = invoke(runner, "identity", "add", "alice@example.test", "x@example.test", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["address"] == "x@example.test" and record["enabled"] is True


def test_pop3_only_mailbox_is_refused_with_the_reason(runner, session):
    make_mailbox(session, "pop@example.test", protocols="pop3")
    result = invoke(runner, "identity", "add", "pop@example.test", "x@example.test")
    assert_one_line_error(result, "POP3-only mailboxes send only as their own address")
    listed = invoke(runner, "identity", "list", "pop@example.test")
    assert listed.output.splitlines()[-1] == (
        "no extra identities: POP3-only mailboxes send only as their own address and aliases; "
        "identities need IMAP"
    )


def test_errors_are_one_line_and_exit_1(runner, session):
    make_mailbox(session, "alice@example.test")
    make_mailbox(session, "bob@example.test")
    invoke(runner, "identity", "add", "alice@example.test", "sales@example.test")
    cases = [
        (("add", "nobody@example.test", "x@example.test"), "does not exist"),
        (("add", "alice@example.test", "x@elsewhere.test"), "not hosted here"),
        (("add", "alice@example.test", "bob@example.test"), "another mailbox"),
        (("add", "alice@example.test", "sales@example.test"), "already an identity"),
        (("add", "alice@example.test", "not an address"), "not an e-mail address"),
        (("add", "alice@example.test", "y@example.test", "--name", "a\r\nBcc: z"), "line breaks"),
        (("add", "alice@example.test", "y@example.test", "--name", "n" * 201), "at most 200"),
        (("list", "nobody@example.test"), "does not exist"),
        (("delete", "alice@example.test", "nope@example.test"), "has no identity"),
        (("delete", "nobody@example.test", "sales@example.test"), "does not exist"),
    ]
    for args, fragment in cases:
        assert_one_line_error(invoke(runner, "identity", *args), fragment)


def test_an_identity_in_another_hosted_domain(runner, session):
    make_mailbox(session, "alice@example.test")
    make_domain(session, "brand.test")
    result = invoke(runner, "identity", "add", "alice@example.test", "hi@brand.test")
    assert result.exit_code == 0, result.output
