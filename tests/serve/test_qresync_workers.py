"""QRESYNC across two mail workers: VANISHED in IDLE for the other worker's expunge, and a
resync on one worker of what was expunged through the other (the history is on disk)."""

from __future__ import annotations

import re

from tests.cli.test_supervisor import PASSWORD
from tests.serve.test_mail_workers import (
    DEADLINE,
    USER,
    connect,
    done,
    environment,
    idle,
    mail_environment,
    message,
    on_each_worker,
    only,
    read_until,
    two_workers,
    workers_environment,
)
from tests.serve.test_mail_workers import logged_in as selected

__all__ = ["environment", "mail_environment", "workers_environment"]  # fixtures


def command(client, text: str) -> tuple[bytes, list[bytes]]:
    tag = client._new_tag()
    client.send(tag + b" " + text.encode() + b"\r\n")
    lines = []
    while True:
        line = client.readline().rstrip(b"\r\n")
        if line.startswith(tag + b" "):
            return line[len(tag) + 1 :], lines
        lines.append(line)


def test_vanished_and_resync_across_two_workers(workers_environment):
    workers_environment["PROVIDER_IMAP_IDLE_POLL_SECONDS"] = "60"  # inotify must wake it
    with two_workers(workers_environment) as served:
        (idler_pid, idler), (writer_pid, writer) = on_each_worker(served)
        assert idler_pid != writer_pid
        selected(writer)
        for n in range(5):
            assert writer.append("INBOX", None, None, message(n))[0] == "OK"
        idler.login(USER, PASSWORD)
        assert command(idler, "ENABLE QRESYNC")[1] == [b"* ENABLED QRESYNC"]
        status, lines = command(idler, "SELECT INBOX")
        valid = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(lines)).group(1))
        modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(lines)).group(1))
        tag = idle(idler)
        writer.select("INBOX")
        writer.store("2", "+FLAGS", "(\\Deleted)")
        assert writer.expunge()[0] == "OK"
        read_until(idler, lambda line: line == b"* VANISHED 2\r\n", DEADLINE)
        done(idler, tag)
        idler.logout()

        # Offline meanwhile: the other worker expunges and flags more.
        writer.store("3", "+FLAGS", "(\\Deleted)")  # UID 4
        assert writer.expunge()[0] == "OK"
        writer.store("1", "+FLAGS", "(\\Answered)")  # UID 1
        writer.logout()

        with only(served, idler_pid):
            again, pid = connect(served)
        assert pid == idler_pid
        again.login(USER, PASSWORD)
        command(again, "ENABLE QRESYNC")
        status, lines = command(again, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1:5))")
        assert status.startswith(b"OK [READ-WRITE]")
        assert [line for line in lines if b"VANISHED" in line] == [b"* VANISHED (EARLIER) 2,4"]
        changed = [line for line in lines if b" FETCH " in line]
        assert len(changed) == 1 and changed[0].startswith(b"* 1 FETCH (FLAGS (\\Answered")
        assert b"UID 1 " in changed[0]
        again.logout()
