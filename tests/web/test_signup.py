"""Public trial signup through the test client with CSRF on: creation, refusals, abuse limits."""

from __future__ import annotations

import imaplib
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider import create_app
from provider.extensions import db
from provider.models import AuditEvent, Mailbox, Trial
from provider.protocols.server import ProtocolRunner
from provider.services import clock, trials
from provider.services.storage import mail_store
from tests.conftest import TEST_ACTOR, make_domain, make_mailbox
from tests.web.conftest import count, errors_of, text_of

PASSWORD = "a long enough pass phrase"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        WTF_CSRF_ENABLED=True,
        HOSTNAME="mail.provider.test",
        PUBLIC_IMAP_HOST="imap.provider.test",
        IMAP_PORT=0,
        IMAPS_PORT=0,
        LOGIN_FAILURE_DELAY_SECONDS=0,
    )
    return app_config


@pytest.fixture
def open_domain(session: Session) -> None:
    make_domain(session, "example.test", signup_enabled=True)
    make_domain(session, "closed.test")


def token(client: FlaskClient) -> str:
    html = text_of(client.get("/signup"))
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token on the signup page"
    return match.group(1)


def form(**overrides: str) -> dict[str, str]:
    data = {
        "local_part": "alice",
        "domain": "example.test",
        "password": PASSWORD,
        "password_confirm": PASSWORD,
        "contact_email": "alice.smith@elsewhere.test",
        "protocol": "imap",
        "accept_terms": "y",
    }
    data.update(overrides)
    return data


def sign_up(client: FlaskClient, **overrides: str) -> Any:
    return client.post("/signup", data={"csrf_token": token(client), **form(**overrides)})


def mailboxes(session: Session) -> list[str]:
    session.expire_all()
    return list(session.scalars(select(Mailbox.address).order_by(Mailbox.address)))


def test_the_form_offers_open_domains_and_explains_the_protocols(
    client: FlaskClient, open_domain: None
):
    html = text_of(client.get("/signup"))
    for name in ("local_part", "domain", "password", "password_confirm", "contact_email"):
        assert f'name="{name}"' in html
    for value in ("imap", "pop3", "both"):
        assert re.search(rf'<input[^>]*name="protocol"[^>]*type="radio" value="{value}"', html)
    assert 'name="accept_terms"' in html
    assert '<option value="example.test">' in html and "closed.test" not in html
    assert (
        "Mail downloaded to one device and removed from the server, folders and read state "
        "stay on that device, no backups." in html
    )
    assert (
        "Mail stays on the server: every device sees the same folders and read state, and "
        "daily backups let you bring back mail from the last 15 days." in html
    )
    assert "<script" not in html and " style=" not in html and "<style" not in html


def test_signup_creates_a_trial_and_shows_the_client_settings(
    app: Flask, client: FlaskClient, session: Session, open_domain: None
):
    app.config.update(IMAPS_PORT=1993, POP3S_PORT=1995)  # `make run`'s listeners
    moment = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    with clock.frozen_at(moment):
        response = sign_up(client, local_part="Alice", protocol="both")
    assert response.status_code == 302 and response.location.endswith("/signup/done")
    mailbox = session.scalar(select(Mailbox))
    assert mailbox is not None
    assert (mailbox.address, mailbox.plan, mailbox.status) == (
        "alice@example.test",
        "trial",
        "active",
    )
    assert mailbox.quota_bytes == 8 * 1024**3
    assert mailbox.protocols == ["imap", "pop3"]
    assert mailbox.trial_expires_at == moment + timedelta(days=30)
    assert mailbox.contact_email == "alice.smith@elsewhere.test"
    assert mail_store().exists("alice@example.test")
    trial = session.scalar(select(Trial))
    assert trial is not None
    assert (trial.mailbox_id, trial.source, trial.contact_key) == (
        mailbox.id,
        "signup",
        "alice.smith@elsewhere.test",
    )
    assert session.scalar(
        select(AuditEvent.actor).where(AuditEvent.action == "mailbox.create")
    ) == ("signup")

    html = text_of(client.get("/signup/done"))
    assert "alice@example.test" in html
    rows = re.findall(
        r'<tr data-protocol="(\w+)"><td>[^<]*</td><td>([^<]*)</td><td>(\d+)</td><td>([^<]*)</td>',
        html,
    )
    # What listens (PUBLIC_IMAP_HOST is set, the rest is not), and no sending server while
    # none exists (issue 11, item 16: it said 993, 995 and 587).
    assert rows == [
        ("imap", "imap.provider.test", "1993", "SSL/TLS"),
        ("pop3", "127.0.0.1", "1995", "SSL/TLS"),
    ]
    assert "This service does not offer outgoing mail (SMTP)" in html


def test_the_done_page_shows_the_public_settings_when_they_are_set(
    app: Flask, client: FlaskClient, open_domain: None
):
    app.config.update(
        PUBLIC_IMAP_PORT=993, PUBLIC_SMTP_HOST="smtp.provider.test", PUBLIC_SMTP_PORT=587
    )
    assert sign_up(client).status_code == 302
    html = text_of(client.get("/signup/done"))
    rows = re.findall(
        r'<tr data-protocol="(\w+)"><td>[^<]*</td><td>([^<]*)</td><td>(\d+)</td>', html
    )
    assert rows == [("imap", "imap.provider.test", "993"), ("smtp", "smtp.provider.test", "587")]
    assert "does not offer outgoing mail" not in html


def test_the_done_page_names_the_bundled_submission_server_when_it_is_served(
    app: Flask, client: FlaskClient, open_domain: None
):
    """Issue 12: `provider serve` with the submission service sets SUBMISSION_SERVED."""
    app.config.update(SUBMISSION_SERVED=True, SUBMISSIONS_PORT=1465, SUBMISSION_PORT=1587)
    assert sign_up(client).status_code == 302
    html = text_of(client.get("/signup/done"))
    rows = re.findall(
        r'<tr data-protocol="(\w+)"><td>[^<]*</td><td>([^<]*)</td><td>(\d+)</td><td>([^<]*)</td>',
        html,
    )
    assert ("smtp", "127.0.0.1", "1465", "SSL/TLS") in rows
    assert "does not offer outgoing mail" not in html


def test_the_trial_quota_is_a_setting(
    app: Flask, client: FlaskClient, session: Session, open_domain
):
    app.config["TRIAL_QUOTA_GB"] = 10
    assert sign_up(client).status_code == 302
    assert session.scalar(select(Mailbox.quota_bytes)) == 10 * 1024**3


@pytest.fixture
def imap(app: Flask) -> Iterator[tuple[str, int]]:
    runner = ProtocolRunner(app, ["imap"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound["imap"]
    finally:
        runner.stop()


def test_after_signup_imap_login_works_at_once(
    client: FlaskClient, open_domain: None, imap: tuple[str, int]
):
    assert sign_up(client, local_part="newcomer").status_code == 302
    with imaplib.IMAP4(*imap, timeout=10) as connection:
        assert connection.login("newcomer@example.test", PASSWORD)[0] == "OK"
        status, data = connection.select("INBOX")
        assert status == "OK" and data == [b"0"]
        _, folders = connection.list()
        assert any(b"\\Sent" in line for line in folders)


def test_a_filled_honeypot_creates_nothing_and_looks_like_success(
    client: FlaskClient, session: Session, open_domain: None
):
    real = sign_up(client, local_part="human")
    bot = sign_up(
        client, local_part="robot", contact_email="bot@elsewhere.test", website="http://spam"
    )
    assert (bot.status_code, bot.location) == (real.status_code, real.location)
    assert "robot@example.test" in text_of(client.get("/signup/done"))
    assert mailboxes(session) == ["human@example.test"]
    assert not mail_store().exists("robot@example.test")
    assert count(session, Trial) == 1


@pytest.mark.parametrize(
    "local_part",
    [
        "postmaster",
        "Abuse",
        "admin",
        "hostmaster",
        "root",
        "webmaster",
        "noreply",
        "no-reply",
        "mailer-daemon",
        "post.master",
        "no_reply",
        "security",
        "support",
    ],
)
def test_reserved_names_cannot_be_signed_up(
    client: FlaskClient, session: Session, open_domain: None, local_part: str
):
    response = sign_up(client, local_part=local_part)
    assert response.status_code == 200
    assert trials.SIGNUP_REFUSED in errors_of(response, "local_part")
    assert mailboxes(session) == []
    assert count(session, Trial) == 0


def test_a_taken_address_and_a_taken_contact_get_the_same_answer(
    client: FlaskClient, session: Session, open_domain: None
):
    make_mailbox(session, "taken@example.test")
    assert (
        sign_up(client, local_part="first", contact_email="Jo.Hn+work@GoogleMail.com").status_code
        == 302
    )

    address_taken = sign_up(client, local_part="taken", contact_email="other@elsewhere.test")
    contact_taken = sign_up(client, local_part="second", contact_email="john@gmail.com")
    reserved = sign_up(client, local_part="postmaster", contact_email="third@elsewhere.test")
    assert address_taken.status_code == contact_taken.status_code == reserved.status_code == 200

    def body(response: Any) -> str:
        html = text_of(response)
        html = re.sub(r'value="[^"]*"', 'value=""', html)  # what was typed is echoed back
        return html

    assert body(address_taken) == body(contact_taken) == body(reserved)
    assert trials.SIGNUP_REFUSED in errors_of(contact_taken, "local_part")
    assert mailboxes(session) == ["first@example.test", "taken@example.test"]


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("John.Doe+shop@GMail.com", "johndoe@gmail.com"),
        ("j.o.h.n.doe@googlemail.com", "johndoe@gmail.com"),
        ("Jane.Doe+x@Example.ORG", "jane.doe@example.org"),
        ("plain@elsewhere.test", "plain@elsewhere.test"),
    ],
)
def test_contacts_are_normalized(given: str, normalized: str):
    assert trials.normalize_contact(given) == normalized


def test_a_lapsed_or_converted_trial_frees_its_contact(
    client: FlaskClient, session: Session, open_domain: None, runner
):
    assert sign_up(client, local_part="one", contact_email="me@elsewhere.test").status_code == 302
    assert (
        runner.invoke(args=["mailbox", "set", "one@example.test", "--plan", "paid"]).exit_code == 0
    )
    assert sign_up(client, local_part="two", contact_email="me+2@elsewhere.test").status_code == 302
    assert mailboxes(session) == ["one@example.test", "two@example.test"]


def test_closed_domains_and_bad_input_are_refused_on_their_fields(
    client: FlaskClient, session: Session, open_domain: None
):
    closed = sign_up(client, domain="closed.test", contact_email="c1@x.test")
    assert errors_of(closed, "domain")
    weak = sign_up(
        client, password="password", password_confirm="password", contact_email="c2@x.test"
    )
    assert "too common" in errors_of(weak, "password")
    mismatch = sign_up(
        client, password_confirm="something else entirely", contact_email="c3@x.test"
    )
    assert "do not match" in errors_of(mismatch, "password_confirm")
    no_terms = sign_up(client, accept_terms="", contact_email="c4@x.test")
    assert "accept the terms" in errors_of(no_terms, "accept_terms")
    bad_name = sign_up(client, local_part="../etc", contact_email="c5@x.test")
    assert "not allowed" in errors_of(bad_name, "local_part")
    bad_protocol = sign_up(client, protocol="smtp", contact_email="c6@x.test")
    assert errors_of(bad_protocol, "protocol")
    own = sign_up(client, contact_email="Alice+me@example.test")
    assert "already have elsewhere" in errors_of(own, "contact_email")
    assert mailboxes(session) == []


def test_signup_needs_a_csrf_token(client: FlaskClient, session: Session, open_domain: None):
    assert client.post("/signup", data=form()).status_code == 400
    stranger = client.application.test_client()
    foreign = token(stranger)
    client.get("/signup")
    assert client.post("/signup", data={"csrf_token": foreign, **form()}).status_code == 400
    assert client.get("/signup/done").status_code == 302  # nothing to show
    assert mailboxes(session) == []


def test_without_open_domains_signup_is_closed(client: FlaskClient, session: Session):
    make_domain(session, "closed.test")
    assert "Signup is closed" in text_of(client.get("/signup"))


def test_too_many_signups_from_one_address_get_429(
    client: FlaskClient, session: Session, open_domain: None
):
    for number in range(3):
        response = sign_up(client, local_part=f"user{number}", contact_email=f"p{number}@x.test")
        assert response.status_code == 302
    response = sign_up(client, local_part="user3", contact_email="p3@x.test")
    assert response.status_code == 429
    assert "Too many signups" in text_of(response)
    assert "user3@example.test" not in mailboxes(session)
    # Another address is not affected.
    other = client.application.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert sign_up(other, local_part="user4", contact_email="p4@x.test").status_code == 302


def test_refused_signups_do_not_use_up_the_signup_limit_but_attempts_are_bounded(
    app: Flask, client: FlaskClient, session: Session, open_domain: None
):
    app.config["SIGNUP_ATTEMPTS_PER_ADDRESS"] = "5 per hour"
    for _ in range(4):
        assert sign_up(client, local_part="postmaster").status_code == 200
    assert sign_up(client, local_part="fine").status_code == 302  # 5th post
    assert sign_up(client, local_part="sixth", contact_email="six@x.test").status_code == 429


def test_one_contact_is_limited_across_addresses(app: Flask, session: Session, open_domain: None):
    app.config["SIGNUP_LIMIT_PER_CONTACT"] = "2 per day"
    for number in range(2):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"198.51.100.{number}"
        sign_up(client, local_part=f"try{number}", contact_email="Target+x@Elsewhere.test")
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "198.51.100.9"
    assert (
        sign_up(client, local_part="try9", contact_email="target@elsewhere.test").status_code == 429
    )


def test_ipv6_addresses_of_one_48_count_as_one(app: Flask, session: Session, open_domain: None):
    for number in range(3):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"2001:db8:1:{number}::1"
        assert (
            sign_up(client, local_part=f"v6{number}", contact_email=f"v{number}@x.test").status_code
            == 302
        )
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "2001:db8:1:ffff::2"
    assert sign_up(client, local_part="v6x", contact_email="vx@x.test").status_code == 429


def test_the_limits_can_live_in_redis_shared_by_two_web_processes(
    app_config: dict[str, Any], session: Session, open_domain: None
):
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url("redis://127.0.0.1:6379", socket_timeout=2).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"provider-test-{uuid.uuid4().hex}"
    config = {
        **app_config,
        "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379",
        "RATELIMIT_KEY_PREFIX": prefix,
    }
    first, second = create_app(config), create_app(config)
    try:
        for number, web in enumerate([first, second, first]):
            client = web.test_client()
            assert (
                sign_up(
                    client, local_part=f"r{number}", contact_email=f"r{number}@x.test"
                ).status_code
                == 302
            )
        client = second.test_client()
        assert sign_up(client, local_part="r3", contact_email="r3@x.test").status_code == 429
        assert redis.Redis.from_url("redis://127.0.0.1:6379").keys(f"*{prefix}*")
    finally:
        client = redis.Redis.from_url("redis://127.0.0.1:6379")
        for key in client.scan_iter(f"*{prefix}*"):
            client.delete(key)
        client.close()
        for web in (first, second):
            with web.app_context():
                db.engine.dispose()


def test_two_signups_racing_for_one_contact_create_one_trial(
    app: Flask, session: Session, open_domain: None
):
    trials.sign_up(
        session,
        local_part="racer1",
        domain="example.test",
        password=PASSWORD,
        contact_email="same@elsewhere.test",
        protocol="imap",
        actor=TEST_ACTOR,
    )
    session.commit()
    # The second passes the open-trial check only if the first is not yet committed; the unique
    # open contact catches it then. Simulate by dropping contact_key (the check) but not the claim.
    row = session.scalar(select(Trial))
    row.contact_key = None
    session.commit()
    with pytest.raises(trials.SignupRefused):
        trials.sign_up(
            session,
            local_part="racer2",
            domain="example.test",
            password=PASSWORD,
            contact_email="same@elsewhere.test",
            protocol="imap",
            actor=TEST_ACTOR,
        )
    assert mailboxes(session) == ["racer1@example.test"]
    assert not mail_store().exists("racer2@example.test")


# --- contact addresses (issue 11, item 7) -------------------------------------------------------

BAD_CONTACTS = [
    "me@example.org\n1",
    "me@example.org\r\nBcc: victim@example.org",
    "me@example.org,other@example.org",
    "<script>alert(1)</script>@example.org",
    "Me <me@example.org>",
    "me@example.org 1",
    "me@localhost",
    '"quoted"@example.org',
    "me@[192.0.2.1]",
]


@pytest.mark.parametrize("contact", BAD_CONTACTS)
def test_a_contact_that_is_not_one_plain_address_is_refused_on_its_field(
    client: FlaskClient, session: Session, open_domain: None, contact: str
):
    response = sign_up(client, contact_email=contact)
    assert response.status_code == 200
    assert "not a valid e-mail address" in errors_of(response, "contact_email")
    assert "<script>alert" not in text_of(response)  # echoed escaped, never as markup
    assert mailboxes(session) == [] and count(session, Trial) == 0


def test_a_nul_in_the_contact_is_a_400_and_creates_nothing(
    client: FlaskClient, session: Session, open_domain: None
):
    response = sign_up(client, contact_email="me@example.org\x00")
    assert response.status_code == 400
    assert mailboxes(session) == [] and count(session, Trial) == 0


def test_variants_of_one_contact_get_one_trial(
    client: FlaskClient, session: Session, open_domain: None
):
    """`me@example.org\\n1`, `\\n2`, … no longer count as other people (the reported attack),
    nor do spaces, case or the Unicode spelling of the domain."""
    assert sign_up(client, local_part="first", contact_email="me@Bücher.Example").status_code == 302
    for number, variant in enumerate(
        [
            "me@bücher.example\n1",
            "me@bücher.example\n2",
            "  ME@xn--bcher-kva.EXAMPLE  ",
            "me+shop@BÜCHER.example",
        ]
    ):
        response = sign_up(client, local_part=f"again{number}", contact_email=variant)
        assert response.status_code == 200, variant
        refusal = errors_of(response, "contact_email") + errors_of(response, "local_part")
        assert refusal, variant
    assert mailboxes(session) == ["first@example.test"]
    session.expire_all()
    stored = session.scalar(select(Mailbox.contact_email))
    assert stored == "me@xn--bcher-kva.example"  # stripped, domain IDNA and lower-case
    assert session.scalar(select(Trial.contact_key)) == "me@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("  Jane.Doe@Example.ORG ", "Jane.Doe@example.org"),
        ("jane@BÜCHER.example", "jane@xn--bcher-kva.example"),
    ],
)
def test_contact_addresses_are_stored_normalized(given: str, stored: str):
    from provider.services.contacts import parse_contact_email

    assert parse_contact_email(given) == stored
