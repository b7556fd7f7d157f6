"""Admin two-factor login through the test client: setup, the second step, replays, recovery
codes, throttling, remembered browsers, the superadmin requirement and the CLI reset."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import AdminRecoveryCode, AdminUser, AuditEvent
from provider.services import admins, clock, two_factor
from provider.settings import SettingsError, load_settings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_ACTOR, login
from tests.web.conftest import DOMAIN_ADMIN_EMAIL, text_of

# On a 30-second boundary, so `+ STEP` is always the next TOTP time step.
START = datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)
STEP = timedelta(seconds=30)


@pytest.fixture(autouse=True)
def frozen_clock() -> Iterator[None]:
    clock.set_now(START)
    yield
    clock.set_now(None)


def move_clock(by: timedelta) -> None:
    clock.set_now(clock.now() + by)


def code_now(secret: str) -> str:
    return pyotp.TOTP(secret).at(clock.now())


def secret_on(page: Any) -> str:
    match = re.search(r'id="totp-secret">([A-Z2-7]+)<', text_of(page))
    assert match, text_of(page)
    return match.group(1)


def recovery_codes_on(page: Any) -> list[str]:
    return re.findall(
        r"<li><code>([a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4})</code>", text_of(page)
    )


def enable(client: FlaskClient) -> tuple[str, list[str]]:
    """Turn 2FA on for the logged-in admin as a person would; the secret and recovery codes."""
    secret = secret_on(client.get("/admin/two-factor"))
    page = client.post("/admin/two-factor/enable", data={"code": code_now(secret)})
    assert page.status_code == 200, text_of(page)
    codes = recovery_codes_on(page)
    assert len(codes) == 10 and len(set(codes)) == 10
    return secret, codes


def second_step(client: FlaskClient, code: str, **extra: Any) -> Any:
    return client.post("/admin/login/two-factor", data={"code": code, **extra})


def actions(session: Session) -> list[str]:
    session.expire_all()
    return [event.action for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


@pytest.fixture
def with_two_factor(logged_in: FlaskClient) -> tuple[FlaskClient, str, list[str]]:
    """A superadmin with 2FA on, logged out, the clock one step on (a fresh code)."""
    secret, codes = enable(logged_in)
    logged_in.post("/admin/logout")
    move_clock(STEP)
    return logged_in, secret, codes


def test_setup_shows_a_qr_code_drawn_here_and_the_secret_and_needs_a_right_code(
    logged_in: FlaskClient, session: Session, admin: AdminUser
):
    page = logged_in.get("/admin/two-factor")
    html = text_of(page)
    secret = secret_on(page)
    assert '<svg role="img" aria-label="QR code to scan"' in html and "<path" in html
    assert "http" not in html.split("<svg", 1)[1].split("</svg>", 1)[0]  # nothing fetched
    session.expire_all()
    # Kept encrypted: the database holds no copy of the secret as text.
    assert admin.totp_secret and secret not in admin.totp_secret
    assert admin.totp_enabled_at is None
    # The same secret until it is confirmed (reloading the page does not change the app's).
    assert secret_on(logged_in.get("/admin/two-factor")) == secret

    wrong = logged_in.post("/admin/two-factor/enable", data={"code": "000000"})
    assert "not right" in text_of(wrong)
    session.expire_all()
    assert not admin.two_factor_enabled
    assert actions(session)[-1] == "admin.2fa_failed"

    done = logged_in.post("/admin/two-factor/enable", data={"code": code_now(secret)})
    assert len(recovery_codes_on(done)) == 10
    session.expire_all()
    assert admin.two_factor_enabled
    assert "admin.2fa_enable" in actions(session)
    # Stored as hashes only; never shown again.
    stored = {row.code_hash for row in session.scalars(select(AdminRecoveryCode))}
    assert len(stored) == 10 and not set(recovery_codes_on(done)) & stored
    again = text_of(logged_in.get("/admin/two-factor"))
    assert secret not in again and not recovery_codes_on(logged_in.get("/admin/two-factor"))
    assert 'id="recovery-codes-left">10<' in again


def test_login_needs_the_code_after_the_password_and_is_not_logged_in_before(
    with_two_factor: tuple[FlaskClient, str, list[str]], session: Session
):
    client, secret, _ = with_two_factor
    response = login(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login/two-factor"
    # Half way in is not in: every admin page still sends to the login.
    assert client.get("/admin/").headers["Location"].startswith("/admin/login")
    assert client.get("/admin/two-factor").headers["Location"].startswith("/admin/login")
    done = second_step(client, code_now(secret))
    assert done.status_code == 302 and done.headers["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_code_with_spaces_is_accepted_and_next_is_kept(
    with_two_factor: tuple[FlaskClient, str, list[str]],
):
    client, secret, _ = with_two_factor
    client.post(
        "/admin/login?next=/admin/domains", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    code = code_now(secret)
    done = second_step(client, f" {code[:3]} {code[3:]} ")
    assert done.headers["Location"] == "/admin/domains"


def test_a_code_cannot_be_used_twice_in_its_window(
    with_two_factor: tuple[FlaskClient, str, list[str]],
):
    client, secret, _ = with_two_factor
    code = code_now(secret)
    login(client)
    assert second_step(client, code).status_code == 302
    client.post("/admin/logout")
    login(client)
    replayed = second_step(client, code)
    assert replayed.status_code == 200 and "used already" in text_of(replayed)
    assert client.get("/admin/").status_code == 302
    # An older code (the step before, still inside the accepted window) is refused as well.
    move_clock(STEP)
    assert second_step(client, code).status_code == 200
    assert second_step(client, code_now(secret)).status_code == 302


def test_the_code_used_to_turn_it_on_cannot_log_in(logged_in: FlaskClient):
    secret = secret_on(logged_in.get("/admin/two-factor"))
    code = code_now(secret)
    logged_in.post("/admin/two-factor/enable", data={"code": code})
    logged_in.post("/admin/logout")
    login(logged_in)
    assert "used already" in text_of(second_step(logged_in, code))


def test_codes_a_step_away_are_accepted_and_further_ones_are_not(
    with_two_factor: tuple[FlaskClient, str, list[str]],
):
    client, secret, _ = with_two_factor
    totp = pyotp.TOTP(secret)
    login(client)
    assert second_step(client, totp.at(clock.now() - 2 * STEP)).status_code == 200
    assert second_step(client, totp.at(clock.now() + 2 * STEP)).status_code == 200
    assert second_step(client, totp.at(clock.now() + STEP)).status_code == 302


@pytest.mark.parametrize(
    "bad",
    [
        "١٢٣٤٥٦",  # digits, but not ASCII ones
        "1234567",
        "abcdef",
        "-" * 64,
        "\u202e123456",
    ],
)
def test_odd_codes_are_refused_as_wrong(
    with_two_factor: tuple[FlaskClient, str, list[str]], bad: str
):
    client, _, _ = with_two_factor
    login(client)
    refused = second_step(client, bad)
    assert refused.status_code == 200 and "not right" in text_of(refused)
    assert client.get("/admin/").status_code == 302


def test_a_code_with_nul_is_a_bad_request_and_logs_nobody_in(
    with_two_factor: tuple[FlaskClient, str, list[str]],
):
    client, secret, _ = with_two_factor
    login(client)
    assert second_step(client, code_now(secret) + "\x00").status_code == 400
    assert client.get("/admin/").status_code == 302


def test_a_code_too_long_to_be_one_is_refused_by_the_form(
    with_two_factor: tuple[FlaskClient, str, list[str]],
):
    client, secret, _ = with_two_factor
    login(client)
    refused = second_step(client, "1" * 100_000)
    assert refused.status_code == 200 and client.get("/admin/").status_code == 302
    assert second_step(client, code_now(secret)).status_code == 302


def test_a_recovery_code_logs_in_once(
    with_two_factor: tuple[FlaskClient, str, list[str]], session: Session
):
    client, _, codes = with_two_factor
    login(client)
    done = second_step(client, codes[0].upper())
    assert done.status_code == 302
    assert "9 left" in text_of(client.get("/admin/"))
    assert actions(session)[-1] == "admin.2fa_recovery_used"
    client.post("/admin/logout")
    login(client)
    assert "not right" in text_of(second_step(client, codes[0]))
    assert second_step(client, codes[1].replace("-", "")).status_code == 302


@pytest.fixture
def login_limit(app_config: dict) -> int:
    """A small LOGIN_MAX_FAILURES; request it before the client so the app is built with it."""
    app_config["LOGIN_MAX_FAILURES"] = 3
    return 3


def test_wrong_codes_are_throttled_per_account_and_audited(
    login_limit: int, with_two_factor: tuple[FlaskClient, str, list[str]], session: Session
):
    client, _, _ = with_two_factor
    limit = login_limit
    for _ in range(limit):
        # A right password each time must not wipe the count of wrong codes.
        login(client)
        assert second_step(client, "000000").status_code == 200
    login_again = login(client)
    assert login_again.status_code == 429
    assert actions(session).count("admin.2fa_failed") == limit
    failure = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "admin.2fa_failed")
    ).first()
    assert failure is not None and failure.remote_addr == "127.0.0.1"


def test_the_second_step_is_throttled_even_with_the_right_code(
    login_limit: int, with_two_factor: tuple[FlaskClient, str, list[str]]
):
    client, secret, _ = with_two_factor
    login(client)
    for _ in range(3):
        second_step(client, "000000")
    blocked = second_step(client, code_now(secret))
    assert blocked.status_code == 429 and "Too many failed logins" in text_of(blocked)
    assert client.get("/admin/").status_code == 302


def test_wrong_codes_count_per_address_across_accounts(
    login_limit: int, with_two_factor: tuple[FlaskClient, str, list[str]], session: Session
):
    client, _, _ = with_two_factor
    other = admins.create_admin(
        session, "other@example.com", ADMIN_PASSWORD, superadmin=True, actor=TEST_ACTOR
    )
    setup = two_factor.begin_setup(session, other)
    two_factor.enable(session, other, code_now(setup.secret), actor=TEST_ACTOR)
    session.commit()
    login(client)
    for _ in range(login_limit - 1):
        second_step(client, "000000")  # root's account: one short of its limit
    login(client, "other@example.com")
    second_step(client, "000000")  # the address's last allowed failure, on another account
    # The address is blocked: root's right password (and code) get nowhere from it.
    assert login(client).status_code == 429


def test_the_second_step_expires(
    app_config: dict, with_two_factor: tuple[FlaskClient, str, list[str]]
):
    client, secret, _ = with_two_factor
    login(client)
    move_clock(timedelta(seconds=client.application.config["ADMIN_2FA_STEP_SECONDS"] + 1))
    late = second_step(client, code_now(secret))
    assert late.status_code == 302 and late.headers["Location"] == "/admin/login"
    assert "took too long" in text_of(client.get("/admin/login"))
    assert client.get("/admin/").status_code == 302


def test_a_password_change_voids_a_login_half_way_in(
    with_two_factor: tuple[FlaskClient, str, list[str]], session: Session, admin: AdminUser
):
    client, secret, _ = with_two_factor
    login(client)
    admins.set_admin_password(session, admin, "another long passphrase", actor=TEST_ACTOR)
    session.commit()
    assert second_step(client, code_now(secret)).headers["Location"] == "/admin/login"


def test_second_step_without_a_password_goes_to_the_login(client: FlaskClient, admin: AdminUser):
    response = second_step(client, "123456")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/login"


@pytest.fixture
def remember_days(app_config: dict) -> int:
    app_config["ADMIN_2FA_REMEMBER_DAYS"] = 30
    return 30


def device_cookie(client: FlaskClient) -> Any:
    return client.get_cookie("__Host-admin_device")


def test_remembered_browser_skips_the_code_until_it_expires(
    remember_days: int, with_two_factor: tuple[FlaskClient, str, list[str]]
):
    client, secret, _ = with_two_factor
    login(client)
    assert "Remember this browser" in text_of(client.get("/admin/login/two-factor"))
    second_step(client, code_now(secret), remember="y")
    cookie = device_cookie(client)
    assert cookie is not None and cookie.http_only and cookie.secure
    client.post("/admin/logout")
    # Logging out does not forget the browser; the password alone logs in.
    assert login(client).headers["Location"] == "/admin/"
    client.post("/admin/logout")
    move_clock(timedelta(days=remember_days, seconds=1))
    assert login(client).headers["Location"] == "/admin/login/two-factor"


def test_the_box_unticked_remembers_nothing(
    remember_days: int, with_two_factor: tuple[FlaskClient, str, list[str]]
):
    client, secret, _ = with_two_factor
    login(client)
    second_step(client, code_now(secret))
    assert device_cookie(client) is None


def test_remember_is_off_by_default(with_two_factor: tuple[FlaskClient, str, list[str]]):
    client, secret, _ = with_two_factor
    login(client)
    assert "Remember this browser" not in text_of(client.get("/admin/login/two-factor"))
    second_step(client, code_now(secret), remember="y")
    assert device_cookie(client) is None


def test_a_remembered_browser_is_forgotten_on_new_password_or_reset(
    remember_days: int,
    with_two_factor: tuple[FlaskClient, str, list[str]],
    session: Session,
    admin: AdminUser,
    runner: FlaskCliRunner,
):
    client, secret, _ = with_two_factor
    login(client)
    second_step(client, code_now(secret), remember="y")
    client.post("/admin/logout")
    admins.set_admin_password(session, admin, "another long passphrase", actor=TEST_ACTOR)
    session.commit()
    answer = client.post(
        "/admin/login", data={"email": ADMIN_EMAIL, "password": "another long passphrase"}
    )
    assert answer.headers["Location"] == "/admin/login/two-factor"

    move_clock(STEP)
    second_step(client, code_now(secret), remember="y")
    client.post("/admin/logout")
    assert runner.invoke(args=["admin", "reset-2fa", ADMIN_EMAIL]).exit_code == 0
    # Set up again (new secret): the cookie from before the reset is void.
    client.post("/admin/login", data={"email": ADMIN_EMAIL, "password": "another long passphrase"})
    enable(client)
    client.post("/admin/logout")
    answer = client.post(
        "/admin/login", data={"email": ADMIN_EMAIL, "password": "another long passphrase"}
    )
    assert answer.headers["Location"] == "/admin/login/two-factor"


def test_a_forged_or_foreign_device_cookie_is_ignored(
    remember_days: int, with_two_factor: tuple[FlaskClient, str, list[str]]
):
    client, _, _ = with_two_factor
    for value in ("x", "a" * 4000, "eyJhZG1pbiI6MX0.AAAA.BBBB"):
        client.set_cookie("__Host-admin_device", value, secure=True, path="/")
        assert login(client).headers["Location"] == "/admin/login/two-factor"


@pytest.fixture
def required(app_config: dict) -> None:
    app_config["ADMIN_2FA_REQUIRED"] = True


def test_required_sends_a_superadmin_to_the_setup_and_nowhere_else(
    required: None, client: FlaskClient, admin: AdminUser, session: Session
):
    response = login(client)
    assert response.headers["Location"] == "/admin/two-factor"
    for page in ("/admin/", "/admin/domains", "/admin/admins", "/admin/jobs"):
        assert client.get(page).headers["Location"] == "/admin/two-factor", page
    assert client.post("/admin/domains", data={"name": "x.test"}).status_code == 302
    enable(client)
    assert client.get("/admin/domains").status_code == 200
    # And it cannot be turned off while required.
    refused = client.post("/admin/two-factor/disable", data={"password": ADMIN_PASSWORD})
    assert "required for superadmins" in text_of(refused)
    session.expire_all()
    assert admin.two_factor_enabled


def test_required_leaves_domain_admins_alone(required: None, as_domain_admin: FlaskClient):
    assert as_domain_admin.get("/admin/").status_code == 200


def test_required_setup_can_log_out(required: None, client: FlaskClient, admin: AdminUser):
    login(client)
    assert client.post("/admin/logout").headers["Location"] == "/admin/login"


def test_turning_off_needs_a_code_or_the_password(
    logged_in: FlaskClient, session: Session, admin: AdminUser
):
    secret, _ = enable(logged_in)
    nothing = logged_in.post("/admin/two-factor/disable", data={})
    assert "Enter a code" in text_of(nothing)
    wrong = logged_in.post("/admin/two-factor/disable", data={"password": "not my password"})
    assert "not your password" in text_of(wrong)
    session.expire_all()
    assert admin.two_factor_enabled
    assert actions(session)[-1] == "admin.2fa_failed"
    move_clock(STEP)
    off = logged_in.post("/admin/two-factor/disable", data={"code": code_now(secret)})
    assert off.headers["Location"] == "/admin/two-factor"
    session.expire_all()
    assert not admin.two_factor_enabled and admin.totp_secret is None
    assert session.scalar(select(AdminRecoveryCode.id)) is None
    assert "admin.2fa_disable" in actions(session)
    # A fresh secret to set it up again.
    assert secret_on(logged_in.get("/admin/two-factor")) != secret


def test_new_recovery_codes_replace_the_old_ones(
    logged_in: FlaskClient, session: Session, admin: AdminUser
):
    _, old = enable(logged_in)
    page = logged_in.post("/admin/two-factor/recovery-codes", data={"password": ADMIN_PASSWORD})
    new = recovery_codes_on(page)
    assert len(new) == 10 and not set(new) & set(old)
    assert "admin.2fa_recovery_codes" in actions(session)
    logged_in.post("/admin/logout")
    login(logged_in)
    assert "not right" in text_of(second_step(logged_in, old[0]))
    assert second_step(logged_in, new[0]).status_code == 302


def test_cli_reset_turns_it_off_and_is_audited(
    with_two_factor: tuple[FlaskClient, str, list[str]],
    runner: FlaskCliRunner,
    session: Session,
    admin: AdminUser,
):
    client, _, _ = with_two_factor
    result = runner.invoke(args=["admin", "reset-2fa", ADMIN_EMAIL.upper()])
    assert result.exit_code == 0, result.output
    assert "two-factor login reset for root@example.com" in result.output
    session.expire_all()
    assert not admin.two_factor_enabled
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "admin.2fa_reset")).one()
    assert event.actor == "cli" and event.target == ADMIN_EMAIL
    assert login(client).headers["Location"] == "/admin/"
    again = runner.invoke(args=["admin", "reset-2fa", ADMIN_EMAIL])
    assert again.exit_code == 0 and "nothing to reset" in again.output
    assert actions(session).count("admin.2fa_reset") == 1


def test_cli_reset_of_an_unknown_admin_is_one_line_and_exit_1(
    runner: FlaskCliRunner, session: Session
):
    result = runner.invoke(args=["admin", "reset-2fa", "nobody@example.com"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["Error: admin nobody@example.com does not exist"]
    assert session.scalar(select(AuditEvent.id)) is None


def test_two_requests_with_the_same_code_cannot_both_pass(
    logged_in: FlaskClient, session: Session, admin: AdminUser
):
    """The step and the recovery code are claimed by conditional UPDATEs: a request that read
    the admin before another one used the code still loses."""
    secret, codes = enable(logged_in)
    move_clock(STEP)
    code = code_now(secret)
    with Session(db.engine, expire_on_commit=False) as other:
        stale = other.get(AdminUser, admin.id)
        other.commit()  # its copy stays as read: the step before this code
        assert stale is not None
        two_factor.verify(session, admin, code)
        two_factor.verify(session, admin, codes[0])
        session.commit()
        with pytest.raises(two_factor.WrongCode):
            two_factor.verify(other, stale, code)
        with pytest.raises(two_factor.WrongCode):
            two_factor.verify(other, stale, codes[0])
        other.rollback()


def test_domain_admin_can_turn_it_on_too(as_domain_admin: FlaskClient, session: Session):
    enable(as_domain_admin)
    tenant = session.scalar(select(AdminUser).where(AdminUser.email == DOMAIN_ADMIN_EMAIL))
    assert tenant is not None and tenant.two_factor_enabled


def test_a_secret_from_an_earlier_secret_key_is_replaced_during_setup_and_named_at_login(
    app: Flask, session: Session, admin: AdminUser
):
    admin.totp_secret = "gAAAAAB-encrypted-under-another-key"
    session.commit()
    setup = two_factor.begin_setup(session, admin)
    assert re.fullmatch(r"[A-Z2-7]{32}", setup.secret)
    two_factor.enable(session, admin, code_now(setup.secret), actor=TEST_ACTOR)
    session.commit()
    admin.totp_secret = "gAAAAAB-encrypted-under-another-key"
    with pytest.raises(ProviderError, match="reset-2fa"):
        two_factor.verify(session, admin, "123456")
    session.rollback()


def test_superadmins_see_who_has_two_factor_login(logged_in: FlaskClient, admin: AdminUser):
    assert ">off<" in text_of(logged_in.get(f"/admin/admins/{admin.id}"))
    enable(logged_in)
    assert "on since" in text_of(logged_in.get(f"/admin/admins/{admin.id}"))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ADMIN_2FA_REMEMBER_DAYS", "-1"),
        ("ADMIN_2FA_REMEMBER_DAYS", "366"),
        ("ADMIN_2FA_REMEMBER_DAYS", "1.5"),
        ("ADMIN_2FA_STEP_SECONDS", "5"),
        ("ADMIN_2FA_STEP_SECONDS", "99999999999999999999"),
        ("ADMIN_2FA_REQUIRED", "maybe"),
    ],
)
def test_two_factor_settings_out_of_range_are_refused_at_start(key: str, value: str):
    with pytest.raises(SettingsError, match=key):
        load_settings(environ={f"PROVIDER_{key}": value})


def test_a_browser_remembered_for_one_admin_does_not_skip_another_admins_code(
    remember_days: int, with_two_factor: tuple[FlaskClient, str, list[str]], session: Session
):
    client, secret, _ = with_two_factor
    other = admins.create_admin(
        session, "other@example.com", ADMIN_PASSWORD, superadmin=True, actor=TEST_ACTOR
    )
    setup = two_factor.begin_setup(session, other)
    two_factor.enable(session, other, code_now(setup.secret), actor=TEST_ACTOR)
    session.commit()
    login(client)
    second_step(client, code_now(secret), remember="y")
    client.post("/admin/logout")
    assert login(client, "other@example.com").headers["Location"] == "/admin/login/two-factor"


def test_a_reset_during_the_second_step_sends_back_to_the_login(
    with_two_factor: tuple[FlaskClient, str, list[str]],
    runner: FlaskCliRunner,
):
    client, secret, _ = with_two_factor
    login(client)
    assert runner.invoke(args=["admin", "reset-2fa", ADMIN_EMAIL]).exit_code == 0
    assert second_step(client, code_now(secret)).headers["Location"] == "/admin/login"
    assert client.get("/admin/").status_code == 302
