"""The per-mailbox POP3 download action: the service rule, the CLI and the admin forms."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from provider.errors import InvalidInput
from provider.models import AuditEvent, Domain, Mailbox
from provider.services import provisioning
from tests.conftest import TEST_ACTOR, make_mailbox


def action_of(session, address: str) -> str:
    session.expire_all()
    return session.scalar(select(Mailbox.pop3_action).where(Mailbox.address == address))


def test_default_is_keep_and_unknown_values_are_refused(session):
    mailbox = make_mailbox(session, protocols="pop3")
    assert mailbox.pop3_action == "keep" and mailbox.to_dict()["pop3_action"] == "keep"
    with pytest.raises(InvalidInput) as caught:
        provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, pop3_action="delete")
    assert caught.value.field == "pop3_action"
    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, pop3_action=" Archive ")
    session.commit()
    assert action_of(session, mailbox.address) == "archive"
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "mailbox.update"))
    assert event.before["pop3_action"] == "keep" and event.after["pop3_action"] == "archive"


def test_cli_add_and_set_pop3_action(session, runner):
    make_mailbox(session, "first@example.test", protocols="pop3")
    result = runner.invoke(
        args=[
            "mailbox", "add", "bob@example.test", "--quota-gb", "8",
            "--protocols", "imap,pop3", "--pop3-action", "seen", "--json",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pop3_action"] == "seen"
    result = runner.invoke(args=["mailbox", "set", "bob@example.test", "--pop3-action", "archive"])
    assert result.exit_code == 0, result.output
    assert "pop3:      on download, move to Archive" in result.output
    assert action_of(session, "bob@example.test") == "archive"
    result = runner.invoke(args=["mailbox", "set", "bob@example.test", "--pop3-action", "x"])
    assert result.exit_code != 0 and action_of(session, "bob@example.test") == "archive"


def test_admin_forms_create_show_and_change_the_action(logged_in, session):
    mailbox = make_mailbox(session, "frank@example.test", protocols="pop3")
    page = logged_in.get(f"/admin/mailboxes/{mailbox.id}").get_data(as_text=True)
    assert "When a POP3 client downloads a message" in page
    assert '<input checked id="pop3_action-0" name="pop3_action" type="radio" value="keep">' in page
    edit = {"quota_gb": "8", "protocols": "pop3", "plan": "paid", "contact_email": ""}
    response = logged_in.post(f"/admin/mailboxes/{mailbox.id}", data=edit)
    assert response.status_code == 302 and action_of(session, mailbox.address) == "keep"
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}", data={**edit, "pop3_action": "seen"}
    )
    assert response.status_code == 302 and action_of(session, mailbox.address) == "seen"
    page = logged_in.get(f"/admin/mailboxes/{mailbox.id}").get_data(as_text=True)
    assert "Mark it read" in page

    domain = session.scalar(select(Domain))
    response = logged_in.post(
        "/admin/mailboxes/new",
        data={
            "local_part": "carol",
            "domain": str(domain.id),
            "password": "a brand new passphrase",
            "password_confirm": "a brand new passphrase",
            "quota_gb": "8",
            "protocols": "both",
            "plan": "paid",
            "contact_email": "",
            "pop3_action": "archive",
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    assert action_of(session, "carol@example.test") == "archive"
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}", data={**edit, "pop3_action": "nonsense"}
    )
    assert response.status_code == 200 and action_of(session, mailbox.address) == "seen"
