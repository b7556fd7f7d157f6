"""Submission sessions: EHLO, TLS, AUTH through the shared login service, policy, bans."""

from __future__ import annotations

import base64
import smtplib
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from provider.models import Mailbox
from provider.services import mail_access, provisioning
from provider.services.clock import now
from tests.conftest import MAILBOX_PASSWORD, TEST_ACTOR, make_mailbox, wait_until
from tests.protocols.conftest import RawClient
from tests.protocols.submission.conftest import ADDRESS, Submission, insecure_context, message


def features(client: smtplib.SMTP) -> set[str]:
    return {name.upper() for name in client.esmtp_features}


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def test_ehlo_advertises_what_a_submission_client_needs(sender: Mailbox, submission: Submission):
    client = submission.connect()
    assert client.has_extn("size") and client.esmtp_features["size"] == str(1024 * 1024)
    assert {"8bitmime", "smtputf8", "enhancedstatuscodes", "pipelining", "dsn", "starttls"} <= (
        set(client.esmtp_features)
    )
    # Loopback: AUTH may be offered before TLS (as IMAP's LOGIN is).
    assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    client.starttls(context=insecure_context())
    client.ehlo("client.test")
    assert "starttls" not in client.esmtp_features
    assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    client.quit()
    implicit = submission.connect_implicit()
    assert "starttls" not in implicit.esmtp_features and "auth" in implicit.esmtp_features
    assert implicit.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
    implicit.quit()


def test_mail_before_auth_is_refused(sender: Mailbox, submission: Submission):
    client = submission.connect_tls()
    assert client.mail(ADDRESS) == (530, b"5.7.0 Authentication required")
    assert client.rcpt("bob@remote.test")[0] == 530
    assert client.docmd("DATA")[0] == 530
    client.quit()


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_auth_plain_and_login_both_work(sender: Mailbox, submission: Submission, implicit: bool):
    for mechanism in ("PLAIN", "LOGIN"):
        client = submission.connect_implicit() if implicit else submission.connect_tls()
        client.user, client.password = ADDRESS, MAILBOX_PASSWORD
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        assert client.auth(mechanism, authobject)[0] == 235
        assert client.mail(ADDRESS)[0] == 250
        client.quit()


def test_auth_with_the_challenge_instead_of_an_initial_response(
    sender: Mailbox, submission: Submission
):
    client = submission.connect_tls()
    client.user, client.password = ADDRESS, MAILBOX_PASSWORD
    assert client.auth("PLAIN", client.auth_plain, initial_response_ok=False)[0] == 235
    client.quit()
    with RawClient(submission.starttls) as raw:
        raw.reply()
        raw.send(b"EHLO client.test\r\n")
        raw.reply_lines()
        assert raw.command("AUTH LOGIN " + base64.b64encode(ADDRESS.encode()).decode()) == (
            334,
            "UGFzc3dvcmQ6",
        )
        assert raw.command(base64.b64encode(MAILBOX_PASSWORD.encode()).decode())[0] == 235
        assert raw.command("AUTH PLAIN")[0] == 503  # already authenticated


def test_wrong_password_and_unknown_user_get_the_same_answer(
    sender: Mailbox, submission: Submission
):
    answers = []
    for user, password in ((ADDRESS, "wrong password"), ("nobody@example.test", "x")):
        client = submission.connect_tls()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.login(user, password)
        answers.append((failure.value.smtp_code, failure.value.smtp_error))
        client.quit()
    assert answers[0] == answers[1] == (535, b"5.7.8 Authentication credentials invalid")


def refusal_of(submission: Submission, password: str = MAILBOX_PASSWORD) -> tuple[int, bytes]:
    client = submission.connect_tls()
    answer = client.docmd("AUTH", "PLAIN " + plain(ADDRESS, password))
    client.quit()
    return answer


def test_suspended_mailbox_is_told_so_never_bad_password(
    session: Session, sender: Mailbox, submission: Submission
):
    provisioning.update_mailbox(session, sender, actor=TEST_ACTOR, status="suspended")
    session.commit()
    assert refusal_of(submission) == (
        535,
        b"5.7.1 This mailbox is suspended; contact your provider",
    )
    # Without the password nothing is revealed.
    assert refusal_of(submission, "wrong")[1] == b"5.7.8 Authentication credentials invalid"


def test_expired_trial_is_told_so(session: Session, submission: Submission):
    mailbox = make_mailbox(session, ADDRESS, plan="trial")
    mailbox.trial_expires_at = now() - timedelta(minutes=1)
    session.commit()
    assert refusal_of(submission) == (
        535,
        b"5.7.1 The trial of this mailbox has expired; contact your provider",
    )


def test_pop3_only_mailbox_may_authenticate(session: Session, submission: Submission):
    make_mailbox(session, ADDRESS, protocols="pop3")
    client = submission.login()
    assert client.mail(ADDRESS)[0] == 250
    client.quit()


def test_mailbox_suspended_after_login_cannot_send(
    session: Session, sender: Mailbox, submission: Submission
):
    client = submission.login()
    provisioning.update_mailbox(session, sender, actor=TEST_ACTOR, status="suspended")
    session.commit()
    assert client.mail(ADDRESS) == (550, b"5.7.1 This mailbox is suspended; contact your provider")
    client.quit()


def test_sending_suspended_mailbox_is_refused_at_mail_from(
    session: Session, sender: Mailbox, submission: Submission
):
    sender.sending_suspended_at = now()
    sender.sending_suspended_reason = "burst"
    session.commit()
    client = submission.login()  # reading mail is not affected, so the login works
    code, text = client.mail(ADDRESS)
    assert (code, text) == (
        550,
        b"5.7.1 sending suspended for this mailbox; contact your provider",
    )
    client.quit()


@pytest.fixture
def ban_after_three(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(LOGIN_BAN_FAILURES=3)
    return app_config


def test_failed_logins_ban_the_address_across_connections(
    ban_after_three: dict[str, Any], sender: Mailbox, submission: Submission
):
    client = submission.connect_tls()
    for _ in range(2):
        assert client.docmd("AUTH", "PLAIN " + plain(ADDRESS, "wrong"))[0] == 535
    # The third failure: 421 and the connection is closed.
    assert client.docmd("AUTH", "PLAIN " + plain(ADDRESS, "wrong")) == (
        421,
        b"4.7.0 Too many failed logins from your address",
    )
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    with RawClient(submission.starttls) as raw:
        assert raw.reply() == (421, "4.7.0 Too many failed logins from your address")
    with pytest.raises(smtplib.SMTPConnectError):
        smtplib.SMTP(*submission.starttls, timeout=10)


def test_ban_earned_on_pop3_counts_for_submission(
    ban_after_three: dict[str, Any], app: Any, sender: Mailbox, submission: Submission
):
    guards = mail_access.guards(app)
    for _ in range(3):
        guards.bans.failure("127.0.0.1")
    with RawClient(submission.implicit) as raw:
        raw.sock = insecure_context().wrap_socket(raw.sock, server_hostname="localhost")
        raw.file = raw.sock.makefile("rb")
        assert raw.reply()[0] == 421


def test_plaintext_auth_is_refused_off_loopback_until_tls(
    sender: Mailbox, submission: Submission, monkeypatch: pytest.MonkeyPatch
):
    # Make the server treat this loopback client as a remote one.
    monkeypatch.setattr(mail_access, "is_loopback", lambda peer: False)
    client = submission.connect()
    assert "auth" not in client.esmtp_features and "starttls" in client.esmtp_features
    code, text = client.docmd("AUTH", "PLAIN " + plain(ADDRESS, MAILBOX_PASSWORD))
    assert (code, text) == (
        538,
        b"5.7.11 Encryption required for requested authentication mechanism",
    )
    assert client.mail(ADDRESS)[0] == 530
    client.starttls(context=insecure_context())
    client.ehlo("client.test")
    assert "auth" in client.esmtp_features
    client.login(ADDRESS, MAILBOX_PASSWORD)
    assert client.mail(ADDRESS)[0] == 250
    client.quit()


def test_starttls_discards_commands_pipelined_in_plaintext(sender: Mailbox, submission: Submission):
    with RawClient(submission.starttls) as raw:
        raw.reply()
        raw.send(b"EHLO client.test\r\n")
        raw.reply_lines()
        raw.send(f"STARTTLS\r\nAUTH PLAIN {plain(ADDRESS, MAILBOX_PASSWORD)}\r\n".encode())
        assert raw.reply()[0] == 220
        raw.start_tls()
        raw.send(b"EHLO client.test\r\n")
        raw.reply_lines()
        # Had the plaintext AUTH run, this session would be logged in.
        assert raw.command(f"MAIL FROM:<{ADDRESS}>") == (530, "5.7.0 Authentication required")
        assert raw.command("STARTTLS")[0] == 503


def test_starttls_forgets_an_earlier_login(sender: Mailbox, submission: Submission):
    client = submission.connect()
    client.login(ADDRESS, MAILBOX_PASSWORD)  # loopback: allowed before TLS
    client.starttls(context=insecure_context())
    client.ehlo("client.test")
    assert client.mail(ADDRESS)[0] == 530  # RFC 3207 §4.2: start again
    client.quit()


def test_authzid_other_than_the_user_is_refused(sender: Mailbox, submission: Submission):
    client = submission.connect_tls()
    code, text = client.docmd(
        "AUTH", "PLAIN " + plain(ADDRESS, MAILBOX_PASSWORD, authzid="bob@example.test")
    )
    assert (code, text) == (535, b"5.7.8 Authorization identity must be empty or the user")
    assert client.docmd("AUTH", "PLAIN " + plain(ADDRESS, MAILBOX_PASSWORD, ADDRESS))[0] == 235
    client.quit()


@pytest.fixture
def one_connection(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(SUBMISSION_MAX_CONNECTIONS_PER_USER_IP=1)
    return app_config


def test_connections_per_user_and_address_are_limited(
    one_connection: dict[str, Any], sender: Mailbox, submission: Submission
):
    first = submission.login()
    second = submission.connect_tls()
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        second.login(ADDRESS, MAILBOX_PASSWORD)
    assert refused.value.smtp_code == 454
    assert b"Maximum number of connections" in refused.value.smtp_error
    first.quit()

    # The slot is given back when the first session ends.
    def logs_in() -> bool:
        client = submission.connect_tls()
        try:
            client.login(ADDRESS, MAILBOX_PASSWORD)
            return True
        except smtplib.SMTPAuthenticationError:
            return False
        finally:
            client.close()

    assert wait_until(logs_in, timeout=5)
    second.quit()


def test_sessions_send_several_messages_and_quit_cleanly(sender: Mailbox, submission: Submission):
    client = submission.login()
    for number in range(3):
        assert client.sendmail(ADDRESS, ["bob@remote.test"], message(body=f"n{number}")) == {}
    assert client.quit()[0] == 221


def test_commands_out_of_order_are_answered_503(sender: Mailbox, submission: Submission):
    client = submission.login()
    assert client.rcpt("bob@remote.test")[0] == 503  # no MAIL yet
    assert client.mail(ADDRESS)[0] == 250
    assert client.docmd("DATA")[0] == 503  # no recipient yet
    assert client.mail(ADDRESS)[0] == 503  # nested
    assert client.docmd("AUTH", "PLAIN " + plain(ADDRESS, MAILBOX_PASSWORD)) == (
        503,
        b"5.5.1 Already authenticated",
    )
    client.quit()


def test_auth_needs_ehlo_not_helo(sender: Mailbox, submission: Submission):
    with RawClient(submission.starttls) as raw:
        raw.reply()
        assert raw.command("AUTH PLAIN " + plain(ADDRESS, MAILBOX_PASSWORD))[0] == 503
        assert raw.command("HELO client.test")[0] == 250
        assert raw.command("AUTH PLAIN " + plain(ADDRESS, MAILBOX_PASSWORD)) == (
            503,
            "5.5.1 Send EHLO first",
        )


def test_starttls_on_the_implicit_tls_port_is_refused(sender: Mailbox, submission: Submission):
    client = submission.connect_implicit()
    assert client.docmd("STARTTLS")[0] == 503
    client.login(ADDRESS, MAILBOX_PASSWORD)
    client.quit()


def test_a_mailbox_deleted_during_the_session_cannot_send(
    session: Session, sender: Mailbox, submission: Submission
):
    client = submission.login()
    provisioning.delete_mailbox(session, sender, actor=TEST_ACTOR)
    session.commit()
    assert client.mail(ADDRESS) == (550, b"5.7.1 This mailbox no longer exists")
    client.quit()


@pytest.fixture
def slow_failures(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(LOGIN_FAILURE_DELAY_SECONDS=0.2)
    return app_config


def test_failed_logins_are_delayed_and_the_delay_grows(
    slow_failures: dict[str, Any], app: Any, sender: Mailbox, submission: Submission
):
    """RELIABILITY A1, shared with IMAP and POP3: a penalty earned elsewhere counts here."""
    client = submission.connect_tls()
    started = time.monotonic()
    assert client.docmd("AUTH", "PLAIN " + plain(ADDRESS, "wrong one"))[0] == 535
    assert time.monotonic() - started >= 0.2
    mail_access.guards(app).failures.failed("127.0.0.1", "x", "y")  # as POP3 would
    started = time.monotonic()
    assert client.docmd("AUTH", "PLAIN " + plain(ADDRESS, "wrong two"))[0] == 535
    assert time.monotonic() - started >= 0.8  # the third failure of the address: 0.2 * 2**2
    # A right password is never delayed, and clears the penalty.
    client.login(ADDRESS, MAILBOX_PASSWORD)
    client.quit()
