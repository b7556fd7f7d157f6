"""The admin side of trials: the convert button and the dashboard's trials by stage."""

from __future__ import annotations

import re
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Mailbox, Trial
from provider.services import clock
from tests.conftest import login, make_admin, make_domain, make_mailbox
from tests.trials.conftest import ADDRESS, START, run_job

EXPIRES = START + timedelta(days=30)


def stage(html: str, key: str) -> str:
    match = re.search(rf'<dd data-key="{key}">([^<]*)</dd>', html)
    assert match, f"no {key} on the dashboard"
    return match.group(1)


def test_the_convert_button_ends_an_expired_trial_and_restores_it(
    app: Flask, logged_in: FlaskClient, session: Session, trial: Mailbox
):
    clock.set_now(START + timedelta(days=31))
    run_job(app, session)
    page = logged_in.get(f"/admin/mailboxes/{trial.id}").get_data(as_text=True)
    assert f'action="/admin/mailboxes/{trial.id}/convert"' in page
    assert "Convert to paid" in page

    response = logged_in.post(f"/admin/mailboxes/{trial.id}/convert")
    assert response.status_code == 302
    session.expire_all()
    converted = session.get(Mailbox, trial.id)
    assert (converted.plan, converted.status, converted.trial_expires_at) == (
        "paid",
        "active",
        None,
    )
    assert session.scalar(select(Trial.outcome)) == "converted"
    assert "trial.convert" in session.scalars(select(AuditEvent.action)).all()
    page = logged_in.get(f"/admin/mailboxes/{trial.id}").get_data(as_text=True)
    assert "Convert to paid" not in page  # a paid mailbox has no button


def test_convert_is_post_only_and_refuses_a_paid_mailbox(
    logged_in: FlaskClient, session: Session, frozen: None
):
    paid = make_mailbox(session, "paid@example.test")
    assert logged_in.get(f"/admin/mailboxes/{paid.id}/convert").status_code == 405
    response = logged_in.post(f"/admin/mailboxes/{paid.id}/convert", follow_redirects=True)
    assert "is not a trial" in response.get_data(as_text=True)


def test_a_domain_admin_cannot_convert_another_domains_trial(
    app: Flask, session: Session, trial: Mailbox
):
    mine = make_domain(session, "mine.test")
    make_admin(session, "tenant@mine.test", superadmin=False, domains=[mine])
    client = app.test_client()
    assert login(client, "tenant@mine.test").status_code == 302
    assert client.post(f"/admin/mailboxes/{trial.id}/convert").status_code == 404
    session.expire_all()
    assert session.get(Mailbox, trial.id).plan == "trial"


def test_the_dashboard_shows_trials_by_stage_and_the_conversion_rate(
    app: Flask, logged_in: FlaskClient, session: Session, frozen: None, runner
):
    for name in ("a", "b", "c", "d"):
        make_mailbox(session, f"{name}@example.test", plan="trial")
    clock.set_now(START + timedelta(days=10))
    make_mailbox(session, "late@example.test", plan="trial")  # ends 10 days after the others
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert stage(html, "running") == "5"
    assert stage(html, "conversion_rate") == "—"

    assert runner.invoke(args=["mailbox", "set", "a@example.test", "--plan", "paid"]).exit_code == 0
    clock.set_now(EXPIRES - timedelta(days=7))
    run_job(app, session)  # b, c, d reminded
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert [stage(html, k) for k in ("running", "reminded", "expired_in_grace", "converted")] == [
        "1",
        "3",
        "0",
        "1",
    ]
    clock.set_now(EXPIRES + timedelta(days=1))
    run_job(app, session)
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert stage(html, "expired_in_grace") == "3"
    assert runner.invoke(args=["mailbox", "set", "b@example.test", "--plan", "paid"]).exit_code == 0
    clock.set_now(EXPIRES + timedelta(days=30))
    run_job(app, session)  # c and d lapse; "late" is expired, in grace
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert [stage(html, k) for k in ("converted", "lapsed", "expired_in_grace")] == ["2", "2", "1"]
    assert stage(html, "conversion_rate") == "50%"


def test_a_domain_admin_sees_only_their_domains_trials(
    app: Flask, session: Session, trial: Mailbox
):
    mine = make_domain(session, "mine.test")
    make_mailbox(session, "one@mine.test", plan="trial")
    make_admin(session, "tenant@mine.test", superadmin=False, domains=[mine])
    client = app.test_client()
    assert login(client, "tenant@mine.test").status_code == 302
    assert stage(client.get("/admin/").get_data(as_text=True), "running") == "1"
    assert ADDRESS.endswith("example.test")
