"""The rule editor in /account/rules and on the admin's mailbox page (Flask test client)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Mailbox
from provider.services import provisioning, sieve_rules, sieve_scripts
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_mailbox
from tests.web.conftest import text_of
from tests.web.timemachine_helpers import csrf_token


def version(html: str) -> str:
    match = re.search(r'name="version"[^>]*value="([0-9a-f]*)"', html) or re.search(
        r'value="([0-9a-f]*)"[^>]*name="version"', html
    )
    assert match, "no version on the page"
    return match.group(1)


@pytest.fixture
def alice(session: Session) -> Mailbox:
    return make_mailbox(session, "alice@example.test")


@pytest.fixture
def owner(client: FlaskClient, alice: Mailbox) -> FlaskClient:
    response = client.post(
        "/account/login", data={"email": alice.address, "password": MAILBOX_PASSWORD}
    )
    assert response.status_code == 302
    return client


def rule_data(page: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": version(page),
        "name": "Lists",
        "match": "all",
        "enabled": "y",
        "c0_kind": "from",
        "c0_value": "lists.example",
        "c1_kind": "",
        "c2_kind": "",
        "move": "y",
        "folder": "Lists",
        "create": "y",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def active_source(alice: Mailbox) -> str:
    return sieve_rules.load(mail_store(), alice).source


def add_rule(owner: FlaskClient, **overrides: Any) -> Any:
    page = text_of(owner.get("/account/rules/new"))
    return owner.post("/account/rules/new", data=rule_data(page, **overrides))


def test_pages_need_login(client: FlaskClient, alice: Mailbox) -> None:
    for path in ("/account/rules", "/account/rules/new", "/account/rules/sieve"):
        response = client.get(path)
        assert response.status_code == 302 and response.location.endswith("/account/login")


def test_owner_adds_a_rule_and_it_is_the_active_script(
    owner: FlaskClient, alice: Mailbox, session: Session
) -> None:
    assert 'href="/account/rules"' in text_of(owner.get("/account/"))
    assert "No rules yet." in text_of(owner.get("/account/rules"))
    response = add_rule(owner)
    assert response.status_code == 302, text_of(response)
    page = text_of(owner.get("/account/rules"))
    assert "Rule “Lists” saved." in page and "move to Lists" in page
    home = sieve_scripts.home_of(mail_store(), alice.address)
    assert sieve_scripts.active_name(home) == "rules"
    source = active_source(alice)
    assert 'fileinto :create "Lists";' in source
    assert sieve_rules.from_sieve(source).rules[0].name == "Lists"
    actions = session.scalars(
        select(AuditEvent.actor).where(AuditEvent.action == "sieve.put")
    ).all()
    assert actions == ["mailbox:alice@example.test"]


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"c0_kind": "size_over", "c0_value": "lots"}, "c0_value", "whole number"),
        ({"c0_value": ""}, "c0_value", "say what the message should contain"),
        ({"c0_kind": "header", "c0_header": "a b"}, "c0_header", "header name"),
        ({"c0_kind": "to", "c0_address": ""}, "c0_address", "choose one of the mailbox"),
        (
            {"c0_kind": "to", "c0_address": "bob@example.test"},
            "c0_address",
            "not an address of this mailbox",
        ),
        (
            {"c0_kind": "to", "c0_address": "alice@example.test\r\nBcc: x"},
            "c0_address",
            "not an address",
        ),
        ({"folder": "a.b"}, "folder", "Maildir++ layout uses"),
        (
            {"move": None, "forward": "y", "forward_address": "x@"},
            "forward_address",
            "not an e-mail",
        ),
        ({"c0_kind": ""}, None, "at least one condition"),
        ({"move": None}, None, "at least one action"),
        ({"c0_kind": "bogus"}, "c0_kind", "unknown condition"),
    ],
)
def test_rule_field_errors_next_to_fields(
    owner: FlaskClient, alice: Mailbox, overrides: dict[str, Any], field: str | None, message: str
) -> None:
    response = add_rule(owner, **overrides)
    assert response.status_code == 400
    html = text_of(response)
    if field:
        errors = re.search(rf'id="{field}-errors">(.*?)</ul>', html, re.S)
        assert errors and message in errors.group(1), html
    else:
        assert message in re.search(r'class="form-errors".*?</div>', html, re.S).group(0)
    assert active_source(alice) == ""  # nothing written


def test_edit_reorder_toggle_delete(owner: FlaskClient, alice: Mailbox) -> None:
    assert add_rule(owner, name="First").status_code == 302
    assert add_rule(owner, name="Second", folder="Two").status_code == 302
    page = text_of(owner.get("/account/rules/1"))
    assert 'value="Two"' in page
    response = owner.post("/account/rules/1", data=rule_data(page, name="Second!", folder="Deux"))
    assert response.status_code == 302

    def names() -> list[tuple[str, bool]]:
        ruleset = sieve_rules.from_sieve(active_source(alice))
        return [(rule.name, rule.enabled) for rule in ruleset.rules]

    def act(index: int, operation: str) -> Any:
        page = text_of(owner.get("/account/rules"))
        return owner.post(
            f"/account/rules/{index}/action",
            data={"version": version(page), "operation": operation},
        )

    assert names() == [("First", True), ("Second!", True)]
    assert act(1, "up").status_code == 302
    assert names() == [("Second!", True), ("First", True)]
    assert act(0, "down").status_code == 302 and act(0, "toggle").status_code == 302
    assert names() == [("First", False), ("Second!", True)]
    assert 'fileinto :create "Lists"' not in active_source(alice)  # the rule that is off
    assert act(0, "delete").status_code == 302
    assert names() == [("Second!", True)]
    assert act(5, "delete").status_code == 404
    assert act(0, "explode").status_code == 400
    assert owner.get("/account/rules/7").status_code == 404


def test_a_stale_form_is_refused_and_writes_nothing(owner: FlaskClient, alice: Mailbox) -> None:
    page = text_of(owner.get("/account/rules/new"))
    assert add_rule(owner, name="Other tab").status_code == 302
    before = active_source(alice)
    response = owner.post("/account/rules/new", data=rule_data(page, name="Old tab"))
    assert response.status_code == 400 and "changed meanwhile" in text_of(response)
    assert active_source(alice) == before


def test_vacation_and_forwarding_forms(owner: FlaskClient, alice: Mailbox) -> None:
    page = text_of(owner.get("/account/rules"))
    response = owner.post(
        "/account/rules/vacation",
        data={
            "version": version(page),
            "enabled": "y",
            "first_day": "2026-07-01",
            "last_day": "2026-06-01",
            "subject": "Away",
            "text": "Back soon",
            "days": "3",
        },
    )
    assert response.status_code == 400
    assert "the last day is before the first day" in text_of(response)
    response = owner.post(
        "/account/rules/vacation",
        data={
            "version": version(page),
            "enabled": "y",
            "subject": "Away",
            "text": "Back soon",
            "days": "3",
        },
    )
    assert response.status_code == 302
    assert 'vacation :days 3 :subject "Away" "Back soon";' in active_source(alice)
    page = text_of(owner.get("/account/rules"))
    assert "Being sent today." in page
    response = owner.post(
        "/account/rules/forwarding", data={"version": version(page), "address": "not-an-address"}
    )
    assert response.status_code == 400
    assert re.search(r'id="address-errors">.*not an e-mail address', text_of(response), re.S)
    response = owner.post(
        "/account/rules/forwarding", data={"version": version(page), "address": "me@far.test"}
    )
    assert response.status_code == 302
    assert 'redirect "me@far.test";\nstop;' in active_source(alice)


def test_csrf_is_required(app: Flask, owner: FlaskClient, alice: Mailbox) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        page = text_of(owner.get("/account/rules/new"))
        response = owner.post("/account/rules/new", data=rule_data(page))
        assert response.status_code == 400 and "The form expired" in text_of(response)
        response = owner.post(
            "/account/rules/new", data={**rule_data(page), "csrf_token": csrf_token(page)}
        )
        assert response.status_code == 302
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


def test_pop3_only_sorting_refused_but_forwarding_allowed(
    client: FlaskClient, session: Session
) -> None:
    bob = make_mailbox(session, "bob@example.test", protocols="pop3")
    client.post("/account/login", data={"email": bob.address, "password": MAILBOX_PASSWORD})
    page = text_of(client.get("/account/rules"))
    assert 'id="rules-pop3-only"' in page and "need IMAP" in page
    response = add_rule(client)
    assert response.status_code == 400 and "need IMAP" in text_of(response)
    assert add_rule(client, move=None, discard="y").status_code == 302
    page = text_of(client.get("/account/rules"))
    response = client.post(
        "/account/rules/forwarding",
        data={"version": version(page), "address": "b@far.test", "keep_copy": "y"},
    )
    assert response.status_code == 302
    assert 'redirect :copy "b@far.test";' in active_source(bob)


def test_hand_edited_script_is_read_only(
    owner: FlaskClient, alice: Mailbox, session: Session
) -> None:
    assert add_rule(owner).status_code == 302
    edited = active_source(alice).replace('"Lists";', '"Elsewhere";')
    sieve_scripts.put_script(
        session, mail_store(), alice, "rules", edited.encode(), activate=True, actor=TEST_ACTOR
    )
    session.commit()
    page = text_of(owner.get("/account/rules"))
    assert 'id="rules-read-only"' in page and "changed by hand" in page
    assert 'id="add-rule"' not in page
    assert owner.get("/account/rules/new").status_code == 409
    response = owner.post("/account/rules/forwarding", data={"address": "x@far.test"})
    assert response.status_code == 409
    assert active_source(alice) == edited  # never rewritten


def test_raw_sieve_editor_shows_errors_by_line(owner: FlaskClient, alice: Mailbox) -> None:
    page = text_of(owner.get("/account/rules/sieve"))
    bad = 'require "fileinto";\r\nif true {\r\n  fileinto "X"\r\n}\r\n'
    response = owner.post("/account/rules/sieve", data={"version": version(page), "source": bad})
    assert response.status_code == 400
    errors = re.search(r'id="source-errors">(.*?)</ul>', text_of(response), re.S)
    assert errors and "line 4" in errors.group(1)
    assert active_source(alice) == ""
    good = 'require "fileinto";\nfileinto "X";\n'
    response = owner.post("/account/rules/sieve", data={"version": version(page), "source": good})
    assert response.status_code == 302
    assert active_source(alice) == good
    assert 'id="rules-read-only"' in text_of(owner.get("/account/rules"))


# --- the admin's mailbox page -----------------------------------------------------------------


def test_admin_edits_a_customers_rules(
    logged_in: FlaskClient, alice: Mailbox, session: Session
) -> None:
    assert f"/admin/mailboxes/{alice.id}/rules" in text_of(
        logged_in.get(f"/admin/mailboxes/{alice.id}")
    )
    base = f"/admin/mailboxes/{alice.id}/rules"
    page = text_of(logged_in.get(f"{base}/new"))
    assert logged_in.post(f"{base}/new", data=rule_data(page)).status_code == 302
    assert "move to Lists" in text_of(logged_in.get(base))
    assert 'fileinto :create "Lists";' in active_source(alice)
    actors = session.scalars(select(AuditEvent.actor).where(AuditEvent.action == "sieve.put")).all()
    assert actors == ["admin:root@example.com"]


def test_domain_admin_only_for_their_domains(
    as_domain_admin: FlaskClient, session: Session
) -> None:
    mine = make_mailbox(session, "a@mine.test")
    theirs = make_mailbox(session, "b@other.test")
    assert as_domain_admin.get(f"/admin/mailboxes/{mine.id}/rules").status_code == 200
    for path in ("", "/new", "/sieve"):
        assert as_domain_admin.get(f"/admin/mailboxes/{theirs.id}/rules{path}").status_code == 404
    response = as_domain_admin.post(
        f"/admin/mailboxes/{theirs.id}/rules/forwarding", data={"address": "x@far.test"}
    )
    assert response.status_code == 404
    assert active_source(theirs) == ""


def test_sent_to_offers_the_mailboxs_own_addresses(
    owner: FlaskClient, alice: Mailbox, session: Session
) -> None:
    provisioning.create_alias(session, "sales@example.test", alice, actor=TEST_ACTOR)
    session.commit()
    page = text_of(owner.get("/account/rules/new"))
    select_html = re.search(r'<select id="c0_address".*?</select>', page, re.S)
    assert select_html is not None
    offered = re.findall(r'<option[^>]*value="([^"]*)"', select_html.group(0))
    assert offered == ["", "alice@example.test", "sales@example.test"]
    # Chosen in any case: kept as the mailbox lists it.
    response = add_rule(owner, c0_kind="to", c0_address="SALES@example.test", c0_value="")
    assert response.status_code == 302, text_of(response)
    assert 'address :is ["to", "cc"] "sales@example.test"' in active_source(alice)
    edit = text_of(owner.get("/account/rules/0"))
    assert re.search(r'<option selected value="sales@example.test">', edit) or re.search(
        r'<option[^>]*value="sales@example.test"[^>]*selected', edit
    ), edit


def test_an_address_no_longer_the_mailboxs_is_shown_and_refused(
    owner: FlaskClient, alice: Mailbox, session: Session
) -> None:
    alias = provisioning.create_alias(session, "old@example.test", alice, actor=TEST_ACTOR)
    session.commit()
    assert add_rule(owner, c0_kind="to", c0_address="old@example.test").status_code == 302
    session.delete(alias)
    session.commit()
    edit = text_of(owner.get("/account/rules/0"))
    assert "old@example.test (no longer an address of yours)" in edit
    response = owner.post(
        "/account/rules/0", data=rule_data(edit, c0_kind="to", c0_address="old@example.test")
    )
    assert response.status_code == 400
    assert "not an address of this mailbox" in text_of(response)
    assert '"old@example.test"' in active_source(alice)  # the saved rule is unchanged


def test_a_rule_with_many_conditions_is_edited_without_losing_any(
    owner: FlaskClient, alice: Mailbox
) -> None:
    """The form offers a row per condition a rule may have (the rest behind "More
    conditions"): a fifth condition can be added, and editing another field keeps all five."""
    page = text_of(owner.get("/account/rules/new"))
    assert 'id="more-conditions"' in page and 'id="condition-2"' in page
    extra = {f"c{i}_kind": "subject" for i in range(1, 5)}
    extra.update({f"c{i}_value": f"word{i}" for i in range(1, 5)})
    assert add_rule(owner, match="any", **extra).status_code == 302
    [rule] = sieve_rules.from_sieve(active_source(alice)).rules
    assert [c.value for c in rule.conditions] == [
        "lists.example",
        "word1",
        "word2",
        "word3",
        "word4",
    ]
    page = text_of(owner.get("/account/rules/0"))
    assert 'value="word4"' in page
    # Every filled row is shown open, with one empty row after them.
    assert page.index('id="condition-5"') < page.index('id="more-conditions"')
    data = {"version": version(page), "name": "Renamed", "match": "any", "enabled": "y"}
    data.update({"move": "y", "folder": "Lists", "create": "y"})
    data.update({"c0_kind": "from", "c0_value": "lists.example", **extra})
    assert owner.post("/account/rules/0", data=data).status_code == 302
    [rule] = sieve_rules.from_sieve(active_source(alice)).rules
    assert rule.name == "Renamed" and len(rule.conditions) == 5
