"""The admin panel's sending: the mailbox page's Sending card (stats, limits, override,
suspend/resume), the dashboard's list of suspended senders, CSRF and a domain admin's scope."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime

import pytest
from flask import Flask
from sqlalchemy import select

from provider.errors import SendingLimited, SendingSuspended
from provider.models import AuditEvent, Mailbox
from provider.services import sending
from provider.services.clock import frozen_at
from tests.conftest import TEST_ACTOR, make_mailbox
from tests.web.conftest import errors_of, text_of
from tests.web.timemachine_helpers import csrf_token

T0 = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)


def card(response) -> str:
    """The Sending card of a mailbox page."""
    match = re.search(r'<section class="card" id="sending".*?</section>', text_of(response), re.S)
    assert match, text_of(response)
    return match.group(0)


def actions(session) -> list[str]:
    return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_mailbox_page_shows_today_the_last_seven_days_and_the_limits(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    with frozen_at(datetime(2026, 12, 4, 9, 0, tzinfo=UTC)):
        sending.record_accepted(session, alice.id, 7)
    with frozen_at(T0):
        sending.record_accepted(session, alice.id, 3)
        session.commit()
        shown = card(logged_in.get(f"/admin/mailboxes/{alice.id}"))
    assert 'data-state="active"' in shown
    assert re.search(r'data-key="today">3 recipients', shown)
    assert re.search(r'data-key="hour">3 of 300 <span class="muted">\(the paid plan', shown)
    assert re.search(r'data-key="day">3 of 1000', shown)
    assert re.search(r'data-day="2026-12-04"><td>[^<]+</td><td>7</td>', shown)
    assert re.search(r'data-day="2026-12-06"><td>[^<]+</td><td>3</td>', shown)
    assert shown.count("data-day=") == 7
    assert 'placeholder="300"' in shown  # the plan's setting, when no override is set


def test_admin_overrides_the_limits_and_clears_them(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    saved = logged_in.post(
        f"/admin/mailboxes/{alice.id}/sending/limits",
        data={"send_limit_hour": "40", "send_limit_day": " 400 "},
    )
    assert saved.status_code == 302
    assert saved.headers["Location"].endswith(f"/admin/mailboxes/{alice.id}#sending")
    session.expire_all()
    assert (alice.send_limit_hour, alice.send_limit_day) == (40, 400)
    shown = card(logged_in.get(f"/admin/mailboxes/{alice.id}"))
    assert '0 of 40 <span class="muted">(this mailbox&#39;s limit)' in shown
    assert 'value="40"' in shown
    cleared = logged_in.post(
        f"/admin/mailboxes/{alice.id}/sending/limits",
        data={"send_limit_hour": "", "send_limit_day": "400"},
    )
    assert cleared.status_code == 302
    session.expire_all()
    assert (alice.send_limit_hour, alice.send_limit_day) == (None, 400)
    assert actions(session).count("mailbox.sending_limits") == 2


@pytest.mark.parametrize("value", ["0", "100001", "ten", "-5", "9" * 20])
def test_bad_limits_show_next_to_the_field_and_change_nothing(logged_in, session, value):
    alice = make_mailbox(session, "alice@example.test")
    refused = logged_in.post(
        f"/admin/mailboxes/{alice.id}/sending/limits",
        data={"send_limit_hour": "50", "send_limit_day": value},
    )
    assert refused.status_code == 200
    assert "whole number from 1 to 100000" in errors_of(refused, "send_limit_day")
    assert errors_of(refused, "send_limit_hour") == ""
    assert f'value="{value}"' in card(refused)  # the input is kept
    session.expire_all()
    assert (alice.send_limit_hour, alice.send_limit_day) == (None, None)
    assert "mailbox.sending_limits" not in actions(session)


def test_too_long_input_is_a_field_error(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    refused = logged_in.post(
        f"/admin/mailboxes/{alice.id}/sending/limits",
        data={"send_limit_hour": "1" * 5000, "send_limit_day": ""},
    )
    assert refused.status_code == 200
    assert errors_of(refused, "send_limit_hour") != ""


def test_suspend_and_resume_from_the_page_and_the_dashboard_lists_it(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    make_mailbox(session, "bob@example.test")
    assert 'id="suspended-senders"' not in text_of(logged_in.get("/admin/"))
    stopped = logged_in.post(f"/admin/mailboxes/{alice.id}/sending/suspend")
    assert stopped.status_code == 302
    shown = card(logged_in.get(f"/admin/mailboxes/{alice.id}"))
    assert 'data-state="suspended"' in shown
    assert "stopped by admin:root@example.com" in shown
    assert "Resume sending" in shown
    dashboard = text_of(logged_in.get("/admin/"))
    assert 'id="suspended-senders"' in dashboard
    assert 'data-address="alice@example.test"' in dashboard
    assert 'data-address="bob@example.test"' not in dashboard
    resumed = logged_in.post(f"/admin/mailboxes/{alice.id}/sending/resume")
    assert resumed.status_code == 302
    session.expire_all()
    assert alice.sending_suspended_at is None
    assert 'id="suspended-senders"' not in text_of(logged_in.get("/admin/"))
    assert actions(session)[-2:] == ["mailbox.sending_suspend", "mailbox.sending_resume"]


def test_a_burst_suspension_shows_its_reason(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    alice.send_limit_hour = 1
    session.commit()
    with frozen_at(T0):
        sending.record_accepted(session, alice.id, 1)
        session.commit()
        for _ in range(2):
            with contextlib.suppress(SendingLimited, SendingSuspended):
                sending.check_recipient(session, alice, 0)
    session.expire_all()
    shown = card(logged_in.get(f"/admin/mailboxes/{alice.id}"))
    assert "burst: 2 recipients tried within an hour" in shown
    assert "burst: 2 recipients" in text_of(logged_in.get("/admin/"))


def test_get_on_the_post_routes_answers_405(logged_in, session):
    alice = make_mailbox(session, "alice@example.test")
    for action in ("limits", "suspend", "resume"):
        assert logged_in.get(f"/admin/mailboxes/{alice.id}/sending/{action}").status_code == 405


def test_domain_admin_only_for_their_domains(as_domain_admin, session, tenants):
    mine = make_mailbox(session, "alice@mine.test")
    theirs = make_mailbox(session, "bob@other.test")
    sending.suspend_sending(session, theirs, actor=TEST_ACTOR)
    sending.suspend_sending(session, mine, actor=TEST_ACTOR)
    session.commit()
    dashboard = text_of(as_domain_admin.get("/admin/"))
    assert 'data-address="alice@mine.test"' in dashboard
    assert "bob@other.test" not in dashboard
    assert 'id="sending"' in text_of(as_domain_admin.get(f"/admin/mailboxes/{mine.id}"))
    assert (
        as_domain_admin.post(
            f"/admin/mailboxes/{mine.id}/sending/limits",
            data={"send_limit_hour": "10", "send_limit_day": ""},
        ).status_code
        == 302
    )
    for action, data in (
        ("limits", {"send_limit_hour": "99999", "send_limit_day": ""}),
        ("resume", {}),
        ("suspend", {}),
    ):
        response = as_domain_admin.post(f"/admin/mailboxes/{theirs.id}/sending/{action}", data=data)
        assert response.status_code == 404
    session.expire_all()
    other = session.get(Mailbox, theirs.id)
    assert other.send_limit_hour is None and other.sending_suspended_at is not None


@pytest.fixture
def csrf_on(app_config: dict) -> dict:
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


def test_sending_forms_need_a_csrf_token(csrf_on, app: Flask, session, admin):
    alice = make_mailbox(session, "alice@example.test")
    client = app.test_client()
    token = csrf_token(text_of(client.get("/admin/login")))
    client.post(
        "/admin/login",
        data={
            "email": "root@example.com",
            "password": "correct horse battery staple",
            "csrf_token": token,
        },
    )
    for action, data in (
        ("limits", {"send_limit_hour": "5", "send_limit_day": ""}),
        ("suspend", {}),
    ):
        assert (
            client.post(f"/admin/mailboxes/{alice.id}/sending/{action}", data=data).status_code
            == 400
        )
    session.expire_all()
    assert alice.send_limit_hour is None and alice.sending_suspended_at is None
    token = csrf_token(text_of(client.get(f"/admin/mailboxes/{alice.id}")))
    ok = client.post(f"/admin/mailboxes/{alice.id}/sending/suspend", data={"csrf_token": token})
    assert ok.status_code == 302
    session.expire_all()
    assert alice.sending_suspended_at is not None
