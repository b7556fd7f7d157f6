"""The read loop's limits (RELIABILITY P1, P2): overlong lines, literals, bad-command budget."""

from __future__ import annotations

from provider.protocols.imap.session import BAD_AFTER_LOGIN, MAX_LINE
from provider.services.mail_access import guards
from provider.services.storage import mail_store
from tests.conftest import make_mailbox, wait_until
from tests.protocols.imap.test_commands import raw_login, raw_session


def test_ten_megabyte_line_without_crlf_is_answered_before_it_ends(session, imap):
    sock, reader = raw_session(imap)
    chunk = b"x" * MAX_LINE
    sock.sendall(b"a NOOP ")
    # The server must refuse while the line is still open rather than buffer until the CRLF:
    # 10 MB goes through only because it is read and dropped as it arrives.
    for _ in range(10 * 1024 * 1024 // len(chunk)):
        sock.sendall(chunk)
    assert reader.readline().startswith(b"* BAD")
    sock.sendall(b"\r\nb NOOP\r\n")
    assert reader.readline().startswith(b"b OK")
    reader.close()


def test_line_of_8192_octets_is_accepted(session, imap):
    sock, reader = raw_session(imap)
    sock.sendall(b'a ID ("x" "' + b"y" * 8192 + b'")\r\n')
    assert reader.readline().startswith(b"* ID")
    assert reader.readline().startswith(b"a OK")
    reader.close()


def test_big_literal_before_login_gets_bye_without_continuation(session, imap):
    for command in (b"a LOGIN {4097}\r\n", b"a APPEND INBOX {100000}\r\n"):
        sock, reader = raw_session(imap)
        sock.sendall(command)
        assert reader.readline().startswith(b"* BYE [TOOBIG]")
        assert reader.readline() == b""
        reader.close()


def test_small_literal_before_login_gets_continuation(session, imap):
    make_mailbox(session)
    sock, reader = raw_session(imap)
    sock.sendall(b"a LOGIN {18}\r\n")
    assert reader.readline().startswith(b"+")
    sock.sendall(b"alice@example.test {21}\r\n")
    assert reader.readline().startswith(b"+")
    sock.sendall(b"mailbox secret phrase\r\n")
    assert reader.readline().startswith(b"a OK")
    reader.close()


def test_bad_command_budget_after_login_ends_the_session(session, imap):
    make_mailbox(session)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    sock.sendall(b"".join(b"x%d FOO\r\n" % n for n in range(BAD_AFTER_LOGIN - 1)))
    for n in range(BAD_AFTER_LOGIN - 1):
        assert reader.readline().startswith(b"x%d BAD" % n)
    sock.sendall(b"n NOOP\r\n")
    assert reader.readline().startswith(b"n OK")
    sock.sendall(b"last FOO\r\n")
    assert reader.readline().startswith(b"last BAD")
    assert reader.readline().startswith(b"* BYE")
    assert reader.readline() == b""
    reader.close()


def test_overlong_line_counts_against_the_budget_before_login(session, imap):
    sock, reader = raw_session(imap)
    sock.sendall(b"a NOOP " + b"x" * (2 * MAX_LINE) + b"\r\nb FOO\r\nc BAR\r\n")
    lines = [reader.readline() for _ in range(4)]
    assert lines[0].startswith(b"* BAD") and lines[3].startswith(b"* BYE")
    assert reader.readline() == b""
    reader.close()


def test_a_client_that_stops_reading_is_dropped_after_the_output_timeout(session, imap, app):
    """RELIABILITY P3: pipelined FETCHes of a big message, never read: the server gives up on
    the connection (and frees its slot) instead of waiting for the reader forever."""
    app.config["IMAP_OUTPUT_TIMEOUT_SECONDS"] = 0.5
    make_mailbox(session)
    body = b"x" * 76 + b"\r\n"
    message = b"Subject: big\r\n\r\n" + body * 11000  # about 860 KB
    mail_store().open("alice@example.test").folder("INBOX").deliver(message)
    sock, reader = raw_session(imap)
    raw_login(sock, reader)
    sock.sendall(
        b"s SELECT INBOX\r\n" + b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % n for n in range(60))
    )
    slots = guards(app).imap_connections
    assert wait_until(lambda: not slots._counts, timeout=15)
    reader.close()
