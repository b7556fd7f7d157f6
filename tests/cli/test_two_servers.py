"""Two `provider serve` processes on one data directory: IMAP sessions on either see the same
mailbox live (deliveries, flags, expunges, \\Recent given once), as the issue asks."""

from __future__ import annotations

import imaplib
import smtplib
import time

from tests.cli.test_entrypoint import environment, run, serving

__all__ = ["environment"]  # the fixture, shared with test_entrypoint
PASSWORD = "a long passphrase"


def port_of(lines: list[str], name: str) -> int:
    [line] = [line for line in lines if line.startswith(f"{name}: ")]
    return int(line.split()[1].rsplit(":", 1)[1])


def login(port: int) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    client.login("a@example.test", PASSWORD)
    assert client.select("INBOX")[0] == "OK"
    return client


def test_two_servers_share_one_mailbox_live(environment):
    environment.update(PROVIDER_IMAP_PORT="0", PROVIDER_IMAPS_PORT="0", PROVIDER_LMTP_PORT="0")
    assert run(environment, "init").returncode == 0
    assert run(environment, "domain", "add", "example.test").returncode == 0
    created = run(
        environment,
        *("mailbox", "add", "a@example.test", "--quota-gb", "8", "--protocols", "imap"),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    with (
        serving(environment, "imap,lmtp") as (_, first_lines),
        serving(environment, "imap") as (_, second_lines),
    ):
        first, second = login(port_of(first_lines, "imap")), login(port_of(second_lines, "imap"))
        # A delivery through the first process reaches an IDLE session of the second.
        tag = second._new_tag()
        second.send(tag + b" IDLE\r\n")
        assert second.readline().startswith(b"+")
        with smtplib.LMTP("127.0.0.1", port_of(first_lines, "lmtp"), timeout=10) as lmtp:
            started = time.monotonic()
            lmtp.sendmail("s@outside.test", ["a@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
        assert second.readline() == b"* 1 EXISTS\r\n"
        assert time.monotonic() - started < 1.0
        assert second.readline() == b"* 1 RECENT\r\n"  # the IDLE session claimed it
        second.send(b"DONE\r\n")
        assert second.readline().startswith(tag + b" OK")
        # The first process's session is told of the message, but not as \Recent.
        first.noop()
        assert first.untagged_responses.pop("EXISTS")[-1] == b"1"
        assert first.untagged_responses.pop("RECENT")[-1] == b"0"
        # A flag set on one server shows on the other; an expunge too.
        first.store("1", "+FLAGS", "(\\Flagged)")
        second.noop()
        assert any(b"\\Flagged" in line for line in second.untagged_responses.pop("FETCH"))
        second.store("1", "+FLAGS", "(\\Deleted)")
        assert second.expunge()[0] == "OK"
        first.noop()
        assert first.untagged_responses.pop("EXPUNGE") == [b"1"]
        first.logout()
        second.logout()
