"""Hostile input on submission: bad bytes, huge lines and numbers, garbage AUTH, stalled clients."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import Mailbox, OutboundMessage
from tests.conftest import MAILBOX_PASSWORD
from tests.protocols.conftest import RawClient
from tests.protocols.submission.conftest import ADDRESS, Submission, insecure_context, message

from .test_queue import logged_in_raw
from .test_session import plain


def queued(session: Session) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(OutboundMessage)) or 0)


def greeted(submission: Submission) -> RawClient:
    raw = RawClient(submission.starttls)
    raw.reply()
    raw.send(b"EHLO client.test\r\n")
    raw.reply_lines()
    return raw


@pytest.mark.parametrize(
    "address",
    [b"alice\x00@example.test", b"alice@example.test\x00bob@evil.test", b"ali\x01ce@example.test"],
)
def test_control_bytes_in_the_sender_are_refused(
    sender: Mailbox, submission: Submission, address: bytes
):
    with logged_in_raw(submission) as raw:
        raw.send(b"MAIL FROM:<" + address + b">\r\n")
        code, _ = raw.reply()
        assert code == 501
        assert raw.command(f"MAIL FROM:<{ADDRESS}>")[0] == 250


@pytest.mark.parametrize(
    ("address", "reply"),
    [
        (b"bob\x00@remote.test", "501 5.1.3"),
        (b"bob@remote.test\x00", "501 5.1.3"),
        (b"x" * 65 + b"@remote.test", "501 5.1.3 Bad recipient address: a local part may be"),
        (b"bob@" + b"d" * 251 + b".test", "501 5.1.3 Bad recipient address: an address may be"),
        (b"bob", "501 5.1.3"),
        (b"b\xc3\xb6b@remote.test", "553 5.6.7 Bad recipient address: a non-ASCII address"),
        (b"b\xffb@remote.test", "553 5.6.7"),
    ],
)
def test_bad_recipients_are_refused(
    session: Session, sender: Mailbox, submission: Submission, address: bytes, reply: str
):
    with logged_in_raw(submission) as raw:
        assert raw.command(f"MAIL FROM:<{ADDRESS}>")[0] == 250
        raw.send(b"RCPT TO:<" + address + b">\r\n")
        code, text = raw.reply()
        assert f"{code} {text}".startswith(reply)
        assert raw.command("DATA")[0] == 503  # no recipient was accepted
    assert queued(session) == 0


def test_utf8_recipient_is_accepted_with_smtputf8(
    session: Session, sender: Mailbox, submission: Submission
):
    with logged_in_raw(submission) as raw:
        assert raw.command(f"MAIL FROM:<{ADDRESS}> SMTPUTF8")[0] == 250
        raw.send("RCPT TO:<böb@rémote.test>\r\n".encode())
        assert raw.reply()[0] == 250
        raw.send(b"RCPT TO:<b\xffb@remote.test>\r\n")  # not UTF-8 at all
        assert raw.reply()[0] == 501
        assert raw.command("DATA")[0] == 354
        raw.send(message() + b".\r\n")
        assert raw.reply()[0] == 250
    session.expire_all()
    stored = session.scalar(select(OutboundMessage))
    assert stored is not None and [r.address for r in stored.recipients] == ["böb@rémote.test"]


def test_a_megabyte_command_line_is_answered_and_skipped(sender: Mailbox, submission: Submission):
    with logged_in_raw(submission) as raw:
        raw.send(b"MAIL FROM:<" + b"a" * (1024 * 1024) + b"@example.test>\r\n")
        code, text = raw.reply()
        assert (code, text[:5]) == (500, "5.5.2")
        assert raw.command("NOOP") == (250, "2.0.0 OK")
        assert raw.command(f"MAIL FROM:<{ADDRESS}>")[0] == 250


def test_a_megabyte_line_in_data_refuses_the_message(
    session: Session, sender: Mailbox, submission: Submission
):
    with logged_in_raw(submission) as raw:
        raw.command(f"MAIL FROM:<{ADDRESS}>")
        raw.command("RCPT TO:<bob@remote.test>")
        assert raw.command("DATA")[0] == 354
        raw.send(message() + b"y" * (1024 * 1024) + b"\r\n.\r\n")
        code, text = raw.reply()
        assert code == 500 and text.startswith("5.5.2 Line too long")
        assert raw.command("NOOP")[0] == 250
    assert queued(session) == 0


def test_bare_line_feeds_in_data_are_refused(
    session: Session, sender: Mailbox, submission: Submission
):
    with logged_in_raw(submission) as raw:
        raw.command(f"MAIL FROM:<{ADDRESS}>")
        raw.command("RCPT TO:<bob@remote.test>")
        raw.command("DATA")
        # SMTP smuggling: "\n.\r\n" must neither end the message nor pass to the next hop.
        raw.send(message() + b"\n.\r\nMAIL FROM:<ceo@bank.test>\r\n.\r\n")
        code, text = raw.reply()
        assert code == 550 and text.startswith("5.6.0")
    assert queued(session) == 0


@pytest.mark.parametrize(
    "response",
    [
        "AUTH PLAIN !!!notbase64",
        "AUTH PLAIN " + "QUJD",  # "ABC": no NULs
        "AUTH PLAIN " + "AGFsaWNlAHNlY3JldABleHRyYQ==",  # four parts
        "AUTH LOGIN %%%",
        "AUTH PLAIN " + "A" * 400,
        "AUTH CRAM-MD5",
        "AUTH",
        "AUTH PLAIN a b c",
    ],
)
def test_garbage_auth_is_refused_without_a_login(
    sender: Mailbox, submission: Submission, response: str
):
    with greeted(submission) as raw:
        code, _ = raw.command(response)
        assert code in (500, 501, 504, 535)
        assert raw.command(f"MAIL FROM:<{ADDRESS}>")[0] == 530
        assert raw.command("AUTH PLAIN " + plain(ADDRESS, MAILBOX_PASSWORD))[0] == 235


def test_auth_credentials_that_are_not_utf8_are_refused(sender: Mailbox, submission: Submission):
    import base64

    blob = base64.b64encode(b"\0alice@example.test\0\xff\xfe").decode()
    with greeted(submission) as raw:
        assert raw.command("AUTH PLAIN " + blob) == (501, "5.5.2 Credentials must be UTF-8")


def test_auth_exchange_can_be_cancelled_and_survives_garbage(
    sender: Mailbox, submission: Submission
):
    with greeted(submission) as raw:
        assert raw.command("AUTH LOGIN")[0] == 334
        assert raw.command("*") == (501, "5.7.0 Authentication cancelled")
        assert raw.command("AUTH PLAIN")[0] == 334
        raw.send(b"x" * (1024 * 1024) + b"\r\n")
        assert raw.reply()[0] == 500
        assert raw.command("AUTH PLAIN")[0] == 334
        assert raw.command("=")[0] == 501  # an empty response has no NULs
        assert raw.command("NOOP")[0] == 250


@pytest.fixture
def short_timeout(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(SMTP_TIMEOUT_SECONDS=0.5)
    return app_config


def closed_within(sock: socket.socket | ssl.SSLSocket, seconds: float) -> bool:
    """Read until the server closes the connection; False if it is still open after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            return True
    return False


def test_stalled_client_is_disconnected(
    short_timeout: dict[str, Any], sender: Mailbox, submission: Submission
):
    with greeted(submission) as raw:
        assert closed_within(raw.sock, 10)


def test_stalled_client_in_the_middle_of_data_is_disconnected_and_nothing_queued(
    short_timeout: dict[str, Any], session: Session, sender: Mailbox, submission: Submission
):
    with logged_in_raw(submission) as raw:
        raw.command(f"MAIL FROM:<{ADDRESS}>")
        raw.command("RCPT TO:<bob@remote.test>")
        raw.command("DATA")
        raw.send(message())  # and never the final dot
        assert closed_within(raw.sock, 10)
    assert queued(session) == 0


def test_client_that_never_starts_the_tls_handshake_is_disconnected(
    short_timeout: dict[str, Any], sender: Mailbox, submission: Submission
):
    with socket.create_connection(submission.implicit, timeout=10) as sock:
        assert closed_within(sock, 10)
    # The listener still serves others.
    client = submission.login(implicit=True)
    assert client.noop()[0] == 250
    client.quit()


def test_plaintext_on_the_implicit_tls_port_is_dropped(sender: Mailbox, submission: Submission):
    with socket.create_connection(submission.implicit, timeout=10) as sock:
        sock.sendall(b"EHLO client.test\r\nAUTH PLAIN " + plain(ADDRESS, "x").encode() + b"\r\n")
        assert closed_within(sock, 10)
    with insecure_context().wrap_socket(
        socket.create_connection(submission.implicit, timeout=10), server_hostname="localhost"
    ) as tls:
        assert tls.recv(1024).startswith(b"220 ")


def test_too_many_unknown_commands_end_the_session(sender: Mailbox, submission: Submission):
    with greeted(submission) as raw:
        for _ in range(4):
            assert raw.command("XYZZY")[0] == 500
        assert raw.command("XYZZY")[0] == 502
        assert closed_within(raw.sock, 10)


def test_shutdown_says_421_to_connected_clients(sender: Mailbox, submission: Submission):
    raw = greeted(submission)
    submission.stop()
    assert raw.reply() == (421, "4.3.2 Service shutting down")
    raw.close()


def test_shutdown_with_a_client_stuck_before_its_tls_handshake_is_prompt(
    sender: Mailbox, submission: Submission
):
    stuck = socket.create_connection(submission.implicit, timeout=10)
    half = socket.create_connection(submission.implicit, timeout=10)
    half.sendall(b"\x16\x03\x01\x00\xff")  # the start of a ClientHello, and no more
    started = time.monotonic()
    submission.stop()
    assert time.monotonic() - started < 3  # not the runner's 5 s last resort
    assert closed_within(stuck, 5) and closed_within(half, 5)
    stuck.close()
    half.close()


def test_data_read_in_blocks_keeps_dots_and_ends_where_the_client_ended(
    session: Session, sender: Mailbox, submission: Submission, app: Any
):
    """DATA is read in blocks: dot-stuffed lines, a line ending in ".", a ".\\r\\n" sent
    byte by byte, and the next transaction pipelined right behind the end marker."""
    from provider.services import outbound

    body = b".leading dot\r\nends with a dot.\r\n..\r\n" + b"x" * 900 + b"\r\n"
    first = message() + body
    stuffed = message() + b"..leading dot\r\nends with a dot.\r\n...\r\n" + b"x" * 900 + b"\r\n"
    with logged_in_raw(submission) as raw:
        raw.send(f"MAIL FROM:<{ADDRESS}>\r\nRCPT TO:<bob@remote.test>\r\nDATA\r\n".encode())
        assert [raw.reply()[0] for _ in range(3)] == [250, 250, 354]
        raw.send(stuffed[:-1])
        for octet in (b"\n", b".", b"\r", b"\n"):
            raw.send(octet)
        raw.send(f"MAIL FROM:<{ADDRESS}>\r\nRCPT TO:<carol@remote.test>\r\nDATA\r\n".encode())
        code, text = raw.reply()
        assert code == 250 and text.startswith("2.0.0 Ok: queued as "), text
        first_id = text.rsplit(" ", 1)[1]
        assert [raw.reply()[0] for _ in range(3)] == [250, 250, 354]
        raw.send(b".\r\nQUIT\r\n")  # an empty message: refused (no From:), session in step
        assert raw.reply()[0] == 553
        assert raw.reply()[0] == 221
    with app.app_context():
        assert outbound.spool_path(first_id).read_bytes().endswith(first)
    assert queued(session) == 1
