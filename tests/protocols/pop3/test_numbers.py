"""Huge and malformed numeric arguments get -ERR and the session goes on (issue 11 item 6)."""

from __future__ import annotations

import poplib

import pytest

from tests.conftest import make_mailbox
from tests.protocols.pop3.conftest import deliver, message

HUGE = "99999999999999999999"
# Past the 4,300 digits int() converts: a ValueError, not an OverflowError, if parsed.
ENDLESS = "9" * 5000


def answer(client: poplib.POP3, line: str) -> bytes:
    try:
        return client._shortcmd(line)
    except poplib.error_proto as error:
        return error.args[0]


@pytest.mark.parametrize(
    "line",
    [
        f"TOP 1 {HUGE}",
        f"TOP {HUGE} 1",
        f"TOP 1 {HUGE}{HUGE}{HUGE}",
        "TOP 1 -1",
        "TOP 1 ²",
        f"RETR {HUGE}",
        f"DELE {HUGE}",
        f"LIST {HUGE}",
        f"UIDL {HUGE}",
        f"TOP 1 {ENDLESS}",
        f"RETR {ENDLESS}",
        f"LIST {ENDLESS}",
        "RETR 0",
        "LIST -1",
        "DELE ٣",
    ],
)
def test_huge_or_malformed_numbers_get_err_and_the_session_goes_on(session, pop3, line):
    make_mailbox(session, protocols="pop3")
    deliver(session, message(1))
    client = pop3.login()
    assert answer(client, line).startswith(b"-ERR")
    assert client.stat() == (1, len(message(1)))
    assert client.quit().startswith(b"+OK")


def test_top_with_a_large_but_valid_line_count_gives_the_whole_message(session, pop3):
    make_mailbox(session, protocols="pop3")
    deliver(session, message(1, "one\r\ntwo\r\nthree"))
    client = pop3.login()
    status, lines, _ = client.top(1, 2**63 - 1)
    assert status.startswith(b"+OK") and lines[-3:] == [b"one", b"two", b"three"]
    client.quit()
