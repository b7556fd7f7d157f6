"""AUTHENTICATE LOGIN (the SASL mechanism Outlook uses) on real sockets: offered and accepted
only where AUTH=PLAIN is (TLS or loopback, DESIGN.md §6)."""

from __future__ import annotations

import base64
import imaplib
import ssl

import pytest

from provider.services import mail_access
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.test_session import connect

ADDRESS = "alice@example.test"


def b64(text: str | bytes) -> bytes:
    return base64.b64encode(text.encode() if isinstance(text, str) else text)


def login_answers(challenge: bytes) -> bytes:
    return {b"Username:": ADDRESS.encode(), b"Password:": MAILBOX_PASSWORD.encode()}[challenge]


def test_auth_login_through_imaplib(session, imap):
    make_mailbox(session)
    client = connect(imap)
    assert "AUTH=LOGIN" in client.capabilities and "AUTH=PLAIN" in client.capabilities
    typ, _ = client.authenticate("LOGIN", login_answers)
    assert typ == "OK" and client.state == "AUTH"
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_auth_login_challenges_and_initial_response(session, imap):
    make_mailbox(session)
    client = connect(imap)
    client.send(b"a AUTHENTICATE LOGIN\r\n")
    assert client.readline() == b"+ " + b64("Username:") + b"\r\n"
    client.send(b64(ADDRESS) + b"\r\n")
    assert client.readline() == b"+ " + b64("Password:") + b"\r\n"
    client.send(b64(MAILBOX_PASSWORD) + b"\r\n")
    assert client.readline().startswith(b"a OK [CAPABILITY ")
    client.logout()
    # SASL-IR: the user name comes with the command, only the password is asked for.
    client = connect(imap)
    client.send(b"b AUTHENTICATE LOGIN " + b64(ADDRESS) + b"\r\n")
    assert client.readline() == b"+ " + b64("Password:") + b"\r\n"
    client.send(b64(MAILBOX_PASSWORD) + b"\r\n")
    assert client.readline().startswith(b"b OK")
    client.logout()


def test_auth_login_wrong_password_answers_as_login_does(session, imap):
    make_mailbox(session)
    client = connect(imap)
    client.send(b"a AUTHENTICATE LOGIN " + b64(ADDRESS) + b"\r\n")
    client.readline()
    client.send(b64("wrong") + b"\r\n")
    assert client.readline() == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    client.logout()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (b"*", None),  # cancelled at the user name
        (b64(ADDRESS), b"*"),  # cancelled at the password
        (b"%%%notbase64", None),
        (b64(ADDRESS), b"\x00\xff"),
        (b64(b"\xff\xfe"), b64(MAILBOX_PASSWORD)),  # not UTF-8
        (b64(ADDRESS), b64(b"\xc3")),
    ],
)
def test_auth_login_bad_responses_are_bad_and_the_session_goes_on(session, imap, first, second):
    make_mailbox(session)
    client = connect(imap)
    client.send(b"a AUTHENTICATE LOGIN\r\n")
    assert client.readline().startswith(b"+ ")
    client.send(first + b"\r\n")
    if second is not None:
        assert client.readline().startswith(b"+ ")
        client.send(second + b"\r\n")
    assert client.readline().startswith(b"a BAD")
    client.send(b"b NOOP\r\n")
    assert client.readline().startswith(b"b OK")
    client.logout()


def test_auth_login_extra_arguments_are_bad(session, imap):
    make_mailbox(session)
    client = connect(imap)
    client.send(b"a AUTHENTICATE LOGIN " + b64(ADDRESS) + b" extra\r\n")
    assert client.readline().startswith(b"a BAD")
    client.logout()


def test_auth_login_needs_tls_away_from_loopback(session, imap, monkeypatch):
    """As if the client were remote: no AUTH=LOGIN and PRIVACYREQUIRED before STARTTLS (the
    password is never asked for), both offered and working after it."""
    make_mailbox(session)
    monkeypatch.setattr(mail_access, "plaintext_login_allowed", lambda tls, peer: tls)
    client = connect(imap)
    assert "AUTH=LOGIN" not in client.capabilities and "LOGINDISABLED" in client.capabilities
    client.send(b"a AUTHENTICATE LOGIN\r\n")
    assert client.readline().startswith(b"a NO [PRIVACYREQUIRED]")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client.starttls(context)
    assert "AUTH=LOGIN" in client.capabilities
    typ, _ = client.authenticate("LOGIN", login_answers)
    assert typ == "OK"
    client.logout()


def test_unknown_mechanism_is_refused(session, imap):
    make_mailbox(session)
    client = connect(imap)
    with pytest.raises(imaplib.IMAP4.error, match="CANNOT"):
        client.authenticate("CRAM-MD5", lambda _: b"x")
    client.logout()


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN", "command"])
def test_nul_in_a_user_name_is_a_failed_login_not_a_crash(session, imap, mechanism):
    """PostgreSQL cannot hold NUL in text: a user name with one must fail like any unknown
    user, on every database, and the session goes on."""
    make_mailbox(session)
    client = connect(imap)
    user = "alice@example.test\0x"
    if mechanism == "LOGIN":
        client.send(b"a AUTHENTICATE LOGIN " + b64(user) + b"\r\n")
        client.readline()
        client.send(b64(MAILBOX_PASSWORD) + b"\r\n")
    elif mechanism == "PLAIN":
        client.send(b"a AUTHENTICATE PLAIN " + b64(f"\0{user}\0{MAILBOX_PASSWORD}") + b"\r\n")
    else:
        client.send(f'a LOGIN "{user}" "{MAILBOX_PASSWORD}"\r\n'.encode())
    answer = client.readline()
    if mechanism == "PLAIN":  # a fourth NUL-separated part: not a PLAIN message at all
        assert answer.startswith(b"a BAD")
    else:
        assert answer == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    client.send(b"b NOOP\r\n")
    assert client.readline().startswith(b"b OK")
    client.logout()
