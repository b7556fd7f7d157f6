"""Mailboxes: create with every rule, detail and edit, suspend, password reset, delete, list."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import Alias, AuditEvent, Domain, Mailbox
from provider.services import auth, provisioning
from provider.services.clock import now
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_domain, make_mailbox
from tests.web.conftest import add_mailboxes, count, errors_of, text_of

GIB = 1024**3
NEW_PASSWORD = "a brand new passphrase"


def mailbox_form(target: Domain, **changes: Any) -> dict[str, Any]:
    data = {
        "local_part": "carol",
        "domain": str(target.id),
        "password": NEW_PASSWORD,
        "password_confirm": NEW_PASSWORD,
        "quota_gb": "10",
        "protocols": "imap",
        "plan": "paid",
        "contact_email": "",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def by_address(session: Session, address: str) -> Mailbox | None:
    session.expire_all()
    return session.scalar(select(Mailbox).where(Mailbox.address == address))


@pytest.fixture
def domain(session: Session) -> Domain:
    return make_domain(session, "shop.test")


# --- create --------------------------------------------------------------------------------


def test_create_mailbox_with_every_field(logged_in: FlaskClient, session: Session, domain):
    response = logged_in.post(
        "/admin/mailboxes/new",
        data=mailbox_form(
            domain,
            local_part="Carol",
            quota_gb="12.5",
            protocols="both",
            plan="trial",
            contact_email="carol@home.example",
        ),
    )
    assert response.status_code == 302
    mailbox = by_address(session, "carol@shop.test")
    assert mailbox is not None
    assert response.headers["Location"] == f"/admin/mailboxes/{mailbox.id}"
    assert mailbox.quota_bytes == int(12.5 * GIB)
    assert mailbox.protocols == ["imap", "pop3"]
    assert mailbox.plan == "trial" and mailbox.trial_expires_at is not None
    assert mailbox.contact_email == "carol@home.example"
    assert auth.verify_password(mailbox.password_hash, NEW_PASSWORD).ok
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "mailbox.create"))
    assert event is not None
    assert event.actor == "admin:root@example.com" and event.remote_addr == "127.0.0.1"
    page = text_of(logged_in.get(response.headers["Location"]))
    assert "Mailbox carol@shop.test created." in page


@pytest.mark.parametrize(
    ("quota", "accepted"),
    [("7.99", False), ("8", True), ("100", True), ("100.01", False), ("0", False)],
)
def test_create_mailbox_quota_bounds(
    logged_in: FlaskClient, session: Session, domain, quota: str, accepted: bool
):
    response = logged_in.post("/admin/mailboxes/new", data=mailbox_form(domain, quota_gb=quota))
    if accepted:
        assert response.status_code == 302
        assert by_address(session, "carol@shop.test").quota_bytes == int(float(quota) * GIB)
    else:
        assert response.status_code == 200
        assert "quota must be between 8 and 100 GB" in errors_of(response, "quota_gb")
        assert count(session, Mailbox) == 0


def test_create_mailbox_quota_that_is_no_number_is_refused(
    logged_in: FlaskClient, session: Session, domain
):
    response = logged_in.post("/admin/mailboxes/new", data=mailbox_form(domain, quota_gb="lots"))
    assert response.status_code == 200
    assert "quota must be a number of GB" in errors_of(response, "quota_gb")
    assert count(session, Mailbox) == 0


@pytest.fixture
def tiny_quotas(app_config: dict) -> None:
    """QUOTA_MIN_GB as a test instance sets it; request it before `logged_in`."""
    app_config["QUOTA_MIN_GB"] = 0.0001


def test_small_quotas_work_with_a_low_minimum_setting(
    tiny_quotas: None, logged_in: FlaskClient, session: Session, domain
):
    form = text_of(logged_in.get("/admin/mailboxes/new"))
    assert re.search(r'<input[^>]*id="quota_gb"[^>]*min="0.0001"', form)
    assert re.search(r'<input[^>]*id="quota_gb"[^>]*value="0.0001"', form)
    response = logged_in.post("/admin/mailboxes/new", data=mailbox_form(domain, quota_gb="0.0001"))
    assert response.status_code == 302
    assert by_address(session, "carol@shop.test").quota_bytes == int(0.0001 * GIB)
    refused = logged_in.post(
        "/admin/mailboxes/new", data=mailbox_form(domain, local_part="dave", quota_gb="0.00009")
    )
    assert "between 0.0001 and 100 GB" in errors_of(refused, "quota_gb")


def test_create_form_shows_quota_bounds_default_and_protocol_explanations(
    logged_in: FlaskClient, domain
):
    html = text_of(logged_in.get("/admin/mailboxes/new"))
    quota_input = re.search(r'<input[^>]*id="quota_gb"[^>]*>', html)
    assert quota_input
    for attribute in ('type="number"', 'step="any"', 'min="8"', 'max="100"', 'value="8"'):
        assert attribute in quota_input.group(0)
    for value in ("imap", "pop3", "both"):
        assert f'name="protocols" required type="radio" value="{value}"' in html
    assert "Mail stays on the server" in html and "backups" in html
    assert "downloaded to one device" in html and "no backups" in html
    assert "Either kind of client works" in html
    assert f'<option value="{domain.id}">shop.test</option>' in html


def test_create_form_without_any_domain_points_to_domains(logged_in: FlaskClient):
    html = text_of(logged_in.get("/admin/mailboxes/new"))
    assert "Add a domain" in html
    assert 'name="local_part"' not in html


def test_create_mailbox_needs_a_protocol_choice(logged_in: FlaskClient, session: Session, domain):
    response = logged_in.post("/admin/mailboxes/new", data=mailbox_form(domain, protocols=None))
    assert response.status_code == 200
    assert "Choose how the customer reads mail" in errors_of(response, "protocols")
    unknown = logged_in.post("/admin/mailboxes/new", data=mailbox_form(domain, protocols="smtp"))
    assert unknown.status_code == 200
    assert "Not a valid choice" in errors_of(unknown, "protocols")
    assert count(session, Mailbox) == 0


def test_create_mailbox_refuses_mismatched_passwords(
    logged_in: FlaskClient, session: Session, domain
):
    response = logged_in.post(
        "/admin/mailboxes/new", data=mailbox_form(domain, password_confirm="something else")
    )
    assert response.status_code == 200
    assert "The passwords do not match." in errors_of(response, "password_confirm")
    assert count(session, Mailbox) == 0


def test_create_mailbox_refuses_a_weak_password_next_to_the_field(
    logged_in: FlaskClient, session: Session, domain
):
    response = logged_in.post(
        "/admin/mailboxes/new",
        data=mailbox_form(domain, password="short", password_confirm="short"),
    )
    assert response.status_code == 200
    assert "at least 8 characters" in errors_of(response, "password")
    assert count(session, Mailbox) == 0


def test_create_mailbox_refuses_a_duplicate_address_in_any_case(
    logged_in: FlaskClient, session: Session, domain
):
    make_mailbox(session, "carol@shop.test")
    events = count(session, AuditEvent)
    response = logged_in.post("/admin/mailboxes/new", data=mailbox_form(domain, local_part="CAROL"))
    assert response.status_code == 200
    assert "mailbox carol@shop.test already exists" in errors_of(response, "local_part")
    assert count(session, Mailbox) == 1
    assert count(session, AuditEvent) == events


def test_create_mailbox_refuses_an_address_that_is_an_alias(
    logged_in: FlaskClient, session: Session, domain
):
    owner = make_mailbox(session, "owner@shop.test")
    provisioning.create_alias(session, "carol@shop.test", owner, actor=TEST_ACTOR)
    session.commit()
    response = logged_in.post("/admin/mailboxes/new", data=mailbox_form(domain))
    assert response.status_code == 200
    assert "carol@shop.test is already an alias" in errors_of(response, "local_part")
    assert count(session, Mailbox) == 1


def test_create_mailbox_refuses_a_bad_local_part(logged_in: FlaskClient, session: Session, domain):
    response = logged_in.post(
        "/admin/mailboxes/new", data=mailbox_form(domain, local_part="no spaces")
    )
    assert response.status_code == 200
    assert "is not allowed before the @" in errors_of(response, "local_part")


def test_create_mailbox_refuses_a_bad_contact_email(
    logged_in: FlaskClient, session: Session, domain
):
    response = logged_in.post(
        "/admin/mailboxes/new", data=mailbox_form(domain, contact_email="not-an-address")
    )
    assert response.status_code == 200
    assert errors_of(response, "contact_email")
    assert count(session, Mailbox) == 0


def test_failed_create_leaves_nothing_behind_and_keeps_the_input(
    logged_in: FlaskClient, session: Session, domain
):
    before = (count(session, Mailbox), count(session, Alias), count(session, AuditEvent))
    response = logged_in.post(
        "/admin/mailboxes/new",
        data=mailbox_form(domain, quota_gb="1000", contact_email="keep@home.example"),
    )
    assert response.status_code == 200
    after = (count(session, Mailbox), count(session, Alias), count(session, AuditEvent))
    assert after == before
    html = text_of(response)
    assert 'value="carol"' in html and 'value="keep@home.example"' in html
    assert NEW_PASSWORD not in html  # passwords are never echoed back


def test_create_mailbox_in_unknown_domain_id_is_refused(
    logged_in: FlaskClient, session: Session, domain
):
    response = logged_in.post("/admin/mailboxes/new", data=mailbox_form(domain, domain="999999"))
    assert response.status_code == 200
    assert "Not a valid choice" in errors_of(response, "domain")
    assert count(session, Mailbox) == 0


# --- detail and edit -----------------------------------------------------------------------


def test_mailbox_page_shows_usage_aliases_created_and_trial_expiry(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session, "eve@example.test", quota_gb=10, plan="trial")
    mailbox.used_bytes = 5 * GIB
    provisioning.create_alias(session, "info@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    html = text_of(logged_in.get(f"/admin/mailboxes/{mailbox.id}"))
    assert re.search(rf'<meter min="0" max="{10 * GIB}" value="{5 * GIB}"', html)
    assert "5 GB of 10 GB" in html
    assert "info@example.test" in html
    assert mailbox.created_at.strftime("%Y-%m-%d") in html
    assert mailbox.trial_expires_at.strftime("%Y-%m-%d %H:%M UTC") in html
    assert "badge-plan-trial" in html and "badge-active" in html


def test_missing_mailbox_is_404(logged_in: FlaskClient):
    assert logged_in.get("/admin/mailboxes/999999").status_code == 404
    assert logged_in.post("/admin/mailboxes/999999", data={}).status_code == 404


def edit_form(**changes: Any) -> dict[str, Any]:
    data = {"quota_gb": "8", "protocols": "imap", "plan": "paid", "contact_email": ""}
    data.update(changes)
    return data


def test_edit_mailbox_changes_quota_protocols_plan_and_contact(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session, "frank@example.test", plan="trial")
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}",
        data=edit_form(quota_gb="20", protocols="pop3", contact_email="frank@home.example"),
    )
    assert response.status_code == 302
    mailbox = by_address(session, "frank@example.test")
    assert mailbox.quota_bytes == 20 * GIB
    assert mailbox.protocols == ["pop3"]
    assert mailbox.plan == "paid" and mailbox.trial_expires_at is None
    assert mailbox.contact_email == "frank@home.example"
    event = session.scalar(
        select(AuditEvent).where(AuditEvent.action == "mailbox.update").order_by(AuditEvent.id)
    )
    assert event is not None and event.after["quota_bytes"] == 20 * GIB


def test_edit_mailbox_can_clear_the_contact_email(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "gina@example.test", contact_email="gina@home.example")
    logged_in.post(f"/admin/mailboxes/{mailbox.id}", data=edit_form(contact_email=""))
    assert by_address(session, "gina@example.test").contact_email is None


def test_edit_form_is_filled_from_the_mailbox(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(
        session, "hugo@example.test", quota_gb="12.5", protocols="both", plan="trial"
    )
    html = text_of(logged_in.get(f"/admin/mailboxes/{mailbox.id}"))
    assert re.search(r'<input[^>]*id="quota_gb"[^>]*value="12.5"', html)
    assert 'checked id="protocols-2" name="protocols" required type="radio" value="both"' in html
    assert 'checked id="plan-1" name="plan" required type="radio" value="trial"' in html


def test_saving_an_untouched_odd_quota_keeps_it_exactly(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "ivan@example.test", quota_gb="12.3456789")
    exact = mailbox.quota_bytes
    page = text_of(logged_in.get(f"/admin/mailboxes/{mailbox.id}"))
    shown = re.search(r'id="quota_gb"[^>]*value="([^"]+)"', page)
    assert shown and shown.group(1) == "12.3457"
    logged_in.post(
        f"/admin/mailboxes/{mailbox.id}", data=edit_form(quota_gb=shown.group(1), protocols="both")
    )
    mailbox = by_address(session, "ivan@example.test")
    assert mailbox.quota_bytes == exact
    assert mailbox.protocols == ["imap", "pop3"]


@pytest.mark.parametrize("quota", ["7.99", "100.01"])
def test_edit_mailbox_quota_out_of_range_is_refused_next_to_the_field(
    logged_in: FlaskClient, session: Session, quota: str
):
    mailbox = make_mailbox(session, "jane@example.test", quota_gb=10)
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}", data=edit_form(quota_gb=quota, protocols="pop3")
    )
    assert response.status_code == 200
    assert "quota must be between 8 and 100 GB" in errors_of(response, "quota_gb")
    mailbox = by_address(session, "jane@example.test")
    assert mailbox.quota_bytes == 10 * GIB and mailbox.protocols == ["imap"]


def test_edit_mailbox_quota_below_usage_is_refused(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "kim@example.test", quota_gb=50)
    mailbox.used_bytes = 20 * GIB
    session.commit()
    response = logged_in.post(f"/admin/mailboxes/{mailbox.id}", data=edit_form(quota_gb="10"))
    assert response.status_code == 200
    assert "cannot go below what the mailbox already holds" in errors_of(response, "quota_gb")
    assert by_address(session, "kim@example.test").quota_bytes == 50 * GIB


def test_edit_mailbox_needs_a_protocol(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "lea@example.test")
    data = edit_form()
    del data["protocols"]
    response = logged_in.post(f"/admin/mailboxes/{mailbox.id}", data=data)
    assert response.status_code == 200
    assert "Choose how the customer reads mail" in errors_of(response, "protocols")


def test_suspend_and_reactivate_mailbox(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "max@example.test")
    response = logged_in.post(f"/admin/mailboxes/{mailbox.id}/suspend")
    assert response.status_code == 302
    assert by_address(session, "max@example.test").status == "suspended"
    page = text_of(logged_in.get(f"/admin/mailboxes/{mailbox.id}"))
    assert "Mailbox max@example.test suspended." in page
    assert f'action="/admin/mailboxes/{mailbox.id}/reactivate"' in page
    logged_in.post(f"/admin/mailboxes/{mailbox.id}/reactivate")
    assert by_address(session, "max@example.test").status == "active"


def test_password_reset_sets_a_new_password(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "nina@example.test")
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}/password",
        data={"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )
    assert response.status_code == 302
    stored = by_address(session, "nina@example.test").password_hash
    assert auth.verify_password(stored, NEW_PASSWORD).ok
    assert not auth.verify_password(stored, MAILBOX_PASSWORD).ok
    assert session.scalar(select(AuditEvent).where(AuditEvent.action == "mailbox.password"))


def test_password_reset_refuses_mismatch_and_weak_passwords(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session, "otto@example.test")
    old_hash = mailbox.password_hash
    mismatch = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}/password",
        data={"password": NEW_PASSWORD, "password_confirm": "another passphrase"},
    )
    assert mismatch.status_code == 200
    assert "do not match" in errors_of(mismatch, "password_confirm")
    weak = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}/password",
        data={"password": "otto@example.test", "password_confirm": "otto@example.test"},
    )
    assert weak.status_code == 200
    assert "must not be the address" in errors_of(weak, "password")
    assert by_address(session, "otto@example.test").password_hash == old_hash


def test_delete_mailbox_after_confirmation_removes_it_and_its_aliases(
    logged_in: FlaskClient, session: Session
):
    mailbox = make_mailbox(session, "paul@example.test")
    provisioning.create_alias(session, "pa@example.test", mailbox, actor=TEST_ACTOR)
    session.commit()
    confirm = logged_in.get(f"/admin/mailboxes/{mailbox.id}/delete/confirm")
    assert confirm.status_code == 200
    assert "its 1 alias" in text_of(confirm)
    response = logged_in.post(f"/admin/mailboxes/{mailbox.id}/delete")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/mailboxes"
    assert count(session, Mailbox) == 0
    assert count(session, Alias) == 0
    assert session.scalar(select(AuditEvent).where(AuditEvent.action == "mailbox.delete"))


# --- list ----------------------------------------------------------------------------------


def addresses_on(html: str) -> list[str]:
    return re.findall(r'class="address">([^<]+)</a>', html)


def test_list_shows_usage_bar_badges_and_protocols(logged_in: FlaskClient, session: Session):
    mailbox = make_mailbox(session, "quinn@example.test", protocols="pop3", plan="trial")
    mailbox.used_bytes = GIB
    session.commit()
    html = text_of(logged_in.get("/admin/mailboxes"))
    assert addresses_on(html) == ["quinn@example.test"]
    assert re.search(rf'<meter min="0" max="{8 * GIB}" value="{GIB}"', html)
    assert "POP3 only" in html
    assert "badge-plan-trial" in html and "badge-active" in html


def test_list_paginates_fifty_per_page(logged_in: FlaskClient, session: Session):
    domain = make_domain(session, "bulk.test")
    add_mailboxes(session, domain, 120)
    first = text_of(logged_in.get("/admin/mailboxes"))
    assert len(addresses_on(first)) == 50
    assert addresses_on(first)[0] == "user0000@bulk.test"
    assert "1\u201350 of 120 mailboxes" in first and "Page 1 of 3" in first
    last = text_of(logged_in.get("/admin/mailboxes?page=3"))
    assert addresses_on(last) == [f"user{n:04d}@bulk.test" for n in range(100, 120)]
    beyond = text_of(logged_in.get("/admin/mailboxes?page=99"))
    assert "Page 3 of 3" in beyond
    nonsense = logged_in.get("/admin/mailboxes?page=abc")
    assert nonsense.status_code == 200 and "Page 1 of 3" in text_of(nonsense)


def test_list_says_about_when_the_total_is_an_estimate(
    app_config: dict, logged_in: FlaskClient, session: Session
):
    """Past LIST_EXACT_TOTAL_MAX matching rows PostgreSQL's estimate is shown, as such; the
    last page (short) and SQLite are exact."""
    logged_in.application.config["LIST_EXACT_TOTAL_MAX"] = 60
    add_mailboxes(session, make_domain(session, "bulk.test"), 120)
    first = text_of(logged_in.get("/admin/mailboxes"))
    assert len(addresses_on(first)) == 50
    if session.get_bind().dialect.name == "postgresql":
        assert re.search(r"1\u201350 of about \d+ mailboxes", first)
        assert re.search(r"Page 1 of about \d+", first)
    else:
        assert "1\u201350 of 120 mailboxes" in first and "Page 1 of 3" in first
    last = text_of(logged_in.get("/admin/mailboxes?page=3"))
    assert "101\u2013120 of 120 mailboxes" in last and "Page 3 of 3" in last
    few = text_of(logged_in.get("/admin/mailboxes?q=user011"))
    assert "1\u201310 of 10 mailboxes" in few and "about" not in few


@pytest.fixture
def page_size_7(app_config: dict) -> None:
    """PAGE_SIZE = 7; request it before `logged_in`."""
    app_config["PAGE_SIZE"] = 7


def test_list_page_size_follows_the_setting(
    page_size_7: None, logged_in: FlaskClient, session: Session
):
    add_mailboxes(session, make_domain(session, "bulk.test"), 10)
    html = text_of(logged_in.get("/admin/mailboxes"))
    assert len(addresses_on(html)) == 7 and "Page 1 of 2" in html


def test_list_search_matches_part_of_the_address(logged_in: FlaskClient, session: Session):
    domain = make_domain(session, "bulk.test")
    add_mailboxes(session, domain, 60)
    html = text_of(logged_in.get("/admin/mailboxes?q=USER005"))
    assert addresses_on(html) == [f"user{n:04d}@bulk.test" for n in range(50, 60)]
    assert 'value="USER005"' in html
    none = text_of(logged_in.get("/admin/mailboxes?q=nobody%25"))
    assert addresses_on(none) == [] and "No mailbox matches." in none


def test_list_sorts_by_each_column_both_ways(logged_in: FlaskClient, session: Session):
    domain = make_domain(session, "bulk.test")
    add_mailboxes(
        session,
        domain,
        4,
        quota_bytes=lambda n: (8 + [3, 1, 4, 2][n]) * GIB,
        used_bytes=lambda n: [5, 9, 1, 7][n],
        status=lambda n: ["suspended", "active", "expired", "active"][n],
    )
    expectations = {
        "address": [0, 1, 2, 3],
        "quota": [1, 3, 0, 2],
        "used": [2, 0, 3, 1],
        "status": [1, 3, 2, 0],
    }
    for sort, order in expectations.items():
        expected = [f"user{n:04d}@bulk.test" for n in order]
        ascending = addresses_on(text_of(logged_in.get(f"/admin/mailboxes?sort={sort}")))
        assert ascending == expected, sort
        descending = addresses_on(
            text_of(logged_in.get(f"/admin/mailboxes?sort={sort}&order=desc"))
        )
        assert descending == list(reversed(expected)), sort
    unknown = addresses_on(text_of(logged_in.get("/admin/mailboxes?sort=password_hash")))
    assert unknown == [f"user{n:04d}@bulk.test" for n in expectations["address"]]


def test_list_sorts_by_creation_time(logged_in: FlaskClient, session: Session):
    start = now()
    domain = make_domain(session, "bulk.test")
    add_mailboxes(session, domain, 3, created_at=lambda n: start - timedelta(days=[2, 3, 1][n]))
    html = text_of(logged_in.get("/admin/mailboxes?sort=created&order=desc"))
    assert addresses_on(html) == ["user0002@bulk.test", "user0000@bulk.test", "user0001@bulk.test"]


def test_list_filters_by_domain(logged_in: FlaskClient, session: Session):
    first = make_domain(session, "one.test")
    second = make_domain(session, "two.test")
    add_mailboxes(session, first, 2)
    add_mailboxes(session, second, 3)
    html = text_of(logged_in.get(f"/admin/mailboxes?domain={second.id}"))
    assert addresses_on(html) == [f"user{n:04d}@two.test" for n in range(3)]
    assert f'<option value="{second.id}" selected>two.test</option>' in html


def test_sort_links_keep_the_search(logged_in: FlaskClient, session: Session):
    add_mailboxes(session, make_domain(session, "bulk.test"), 2)
    html = text_of(logged_in.get("/admin/mailboxes?q=user"))
    assert 'href="/admin/mailboxes?q=user&amp;sort=used&amp;order=desc"' in html


@pytest.mark.parametrize(
    "contact",
    [
        "carol@home.example\r\nBcc: victim@example.org",
        "carol@home.example,other@home.example",
        "<script>x</script>@home.example",
        "Carol <carol@home.example>",
    ],
)
def test_admin_forms_refuse_a_contact_that_is_not_one_address(
    logged_in: FlaskClient, session: Session, domain, contact: str
):
    """The same parser as the signup (issue 11, item 7): on create and on edit."""
    response = logged_in.post(
        "/admin/mailboxes/new", data=mailbox_form(domain, contact_email=contact)
    )
    assert response.status_code == 200
    assert "not a valid e-mail address" in errors_of(response, "contact_email")
    assert count(session, Mailbox) == 0
    mailbox = make_mailbox(session, "gina@shop.test", contact_email="gina@home.example")
    response = logged_in.post(
        f"/admin/mailboxes/{mailbox.id}", data=edit_form(contact_email=contact)
    )
    assert response.status_code == 200
    assert "not a valid e-mail address" in errors_of(response, "contact_email")
    assert by_address(session, "gina@shop.test").contact_email == "gina@home.example"


def test_admin_contact_is_stored_with_an_idna_lower_case_domain(
    logged_in: FlaskClient, session: Session, domain
):
    response = logged_in.post(
        "/admin/mailboxes/new", data=mailbox_form(domain, contact_email=" Carol@Bücher.Example ")
    )
    assert response.status_code == 302
    assert by_address(session, "carol@shop.test").contact_email == "Carol@xn--bcher-kva.example"


def test_cli_contact_email_goes_through_the_same_parser(runner, session: Session, domain):
    command = ["mailbox", "add", "dan@shop.test", "--quota-gb", "8", "--protocols", "imap"]
    result = runner.invoke(
        args=[*command, "--contact-email", "dan@home.example\nBcc: x@y.example"],
        input="a long enough pass phrase\n",
    )
    assert result.exit_code == 1, result.output
    assert "not a valid e-mail address" in result.output
    assert count(session, Mailbox) == 0


def test_an_empty_list_says_so_once_and_one_mailbox_is_not_plural(
    logged_in: FlaskClient, session: Session
) -> None:
    make_domain(session)
    page = text_of(logged_in.get("/admin/mailboxes"))
    assert "No mailboxes yet." in page and 'class="pagination"' not in page
    make_mailbox(session, "one@example.test")
    page = text_of(logged_in.get("/admin/mailboxes"))
    assert '<span class="count">1 mailbox</span>' in page
