"""`provider serve` with two mail workers on one port: IDLE, \\Recent, bans and connection limits
behave as one server, and a worker killed mid-APPEND loses no acknowledged mail."""

from __future__ import annotations

import contextlib
import imaplib
import os
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cli.test_supervisor import (
    PASSWORD,
    Served,
    environment,
    mail_environment,
    supervised,
    used_bytes,
)
from tests.conftest import wait_until

__all__ = ["environment", "mail_environment"]  # fixtures
USER = "a@example.test"
DEADLINE = 20.0


@pytest.fixture
def workers_environment(mail_environment: dict[str, str]) -> dict[str, str]:
    mail_environment["PROVIDER_MAIL_WORKERS"] = "2"
    return mail_environment


# Every client a test opened, closed at the end whatever state it was left in.
OPENED: list[imaplib.IMAP4] = []


@contextmanager
def two_workers(environment: dict[str, str], services: str = "imap,lmtp") -> Iterator[Served]:
    try:
        with supervised(environment, services) as served:
            assert len(served.pids("mail")) == 2
            yield served
    finally:
        while OPENED:
            with contextlib.suppress(OSError):
                OPENED.pop().shutdown()


def server_inode(server_port: int, client_port: int) -> str | None:
    """The socket inode of the server's end of the loopback connection from `client_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == server_port and (
                int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                return inode
    return None


def worker_of(served: Served, sock: socket.socket, server_port: int) -> int | None:
    """The pid of the mail worker that accepted this client socket (from /proc)."""
    inode = server_inode(server_port, sock.getsockname()[1])
    if inode is None:
        return None
    for pid in served.pids("mail"):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if f"socket:[{inode}]" in links:
            return pid
    return None


def connect(served: Served, name: str = "imap") -> tuple[imaplib.IMAP4, int]:
    """A client and the worker serving it (once the worker has taken the connection)."""
    port = served.port(name)
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)  # returns after the greeting
    OPENED.append(client)
    pid = worker_of(served, client.sock, port)
    assert pid is not None, "no worker holds the connection"
    return client, pid


def stopped(pid: int) -> bool:
    """Every thread of the process is stopped (SIGSTOP has taken effect)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state == "T" for state in states)


@contextmanager
def only(served: Served, pid: int) -> Iterator[None]:
    """Only worker `pid` accepts meanwhile: the others are stopped (SIGSTOP), so a connection
    made now is accepted by it (the others' share of the backlog waits for SIGCONT)."""
    others = [other for other in served.pids("mail") if other != pid]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        # SIGSTOP takes effect when each thread next runs: until then it could still accept.
        assert wait_until(lambda: all(stopped(other) for other in others), DEADLINE)
        yield
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)


def on_each_worker(served: Served) -> list[tuple[int, imaplib.IMAP4]]:
    """A client on each worker (greeted, so accepted by it; /proc confirms which)."""
    clients = []
    for pid in served.pids("mail"):
        with only(served, pid):
            client, holder = connect(served)
        assert holder == pid
        clients.append((pid, client))
    return clients


def logged_in(client: imaplib.IMAP4) -> imaplib.IMAP4:
    client.login(USER, PASSWORD)
    assert client.select("INBOX")[0] == "OK"
    return client


def message(n: int, size: int = 0) -> bytes:
    body = b"x" * size + b"\r\n"
    return (
        f"From: s@outside.test\r\nTo: {USER}\r\nSubject: {n}\r\n"
        f"Message-ID: <m{n}@outside.test>\r\n\r\n".encode()
        + body
    )


def read_until(client: imaplib.IMAP4, wanted: Callable[[bytes], bool], seconds: float) -> bytes:
    """Untagged lines from an IDLE session until one is `wanted` (within `seconds`)."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        client.sock.settimeout(remaining)
        line = client.readline()
        if not line:
            break
        if wanted(line):
            return line
    raise AssertionError("the IDLE session was not told in time")


def idle(client: imaplib.IMAP4) -> bytes:
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    return tag


def done(client: imaplib.IMAP4, tag: bytes) -> None:
    client.send(b"DONE\r\n")
    read_until(client, lambda line: line.startswith(tag + b" OK"), 10)
    client.sock.settimeout(10)


def test_an_idle_session_on_one_worker_sees_changes_made_through_the_other_at_once(
    workers_environment,
):
    # A poll this slow would miss every deadline: the other worker's changes must wake it.
    workers_environment["PROVIDER_IMAP_IDLE_POLL_SECONDS"] = "60"
    with two_workers(workers_environment) as served:
        (idler_pid, idler), (writer_pid, writer) = on_each_worker(served)
        assert idler_pid != writer_pid
        logged_in(idler)
        logged_in(writer)
        tag = idle(idler)

        started = time.monotonic()
        assert writer.append("INBOX", None, None, message(1))[0] == "OK"
        read_until(idler, lambda line: line == b"* 1 EXISTS\r\n", DEADLINE)
        assert time.monotonic() - started < 2.0

        writer.select("INBOX")
        writer.store("1", "+FLAGS", "(\\Flagged)")
        read_until(idler, lambda line: line.startswith(b"* 1 FETCH") and b"\\Flagged" in line, 5)

        # A delivery over LMTP (whichever worker takes it) shows too.
        with smtplib.LMTP("127.0.0.1", served.port("lmtp"), timeout=10) as lmtp:
            lmtp.sendmail("s@outside.test", [USER], message(2))
        read_until(idler, lambda line: line == b"* 2 EXISTS\r\n", 5)

        writer.store("1", "+FLAGS", "(\\Deleted)")
        assert writer.expunge()[0] == "OK"
        read_until(idler, lambda line: line == b"* 1 EXPUNGE\r\n", 5)
        done(idler, tag)
        idler.logout()
        writer.logout()


def recent_uids(client: imaplib.IMAP4) -> set[int]:
    status, lines = client.uid("FETCH", "1:*", "(FLAGS)")
    assert status == "OK"
    found = set()
    for line in lines:
        text = line.decode() if isinstance(line, bytes) else ""
        if "\\Recent" in text:
            found.add(int(text.split("UID ")[1].split()[0].rstrip(")")))
    return found


def test_each_message_is_recent_in_exactly_one_session_across_workers(workers_environment):
    with two_workers(workers_environment) as served:
        sessions = [logged_in(client) for _, client in on_each_worker(served)]
        sessions += [logged_in(connect(served)[0]) for _ in range(4)]
        for session in sessions:
            assert session.select("INBOX")[0] == "OK"
        writer = connect(served)[0]
        writer.login(USER, PASSWORD)  # nothing selected: it claims nothing itself
        for n in range(12):
            assert writer.append("INBOX", None, None, message(n))[0] == "OK"

        # Every session looks at once (in threads): they race to claim the new messages.
        barrier = threading.Barrier(len(sessions))
        claims: list[set[int]] = [set() for _ in sessions]

        def look(i: int) -> None:
            barrier.wait()
            sessions[i].noop()
            claims[i] = recent_uids(sessions[i])

        threads = [threading.Thread(target=look, args=(i,)) for i in range(len(sessions))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        every = [uid for claim in claims for uid in claim]
        assert sorted(every) == list(range(1, 13))  # each UID recent once, none twice
        for session in [*sessions, writer]:
            session.logout()


def test_a_ban_earned_on_one_worker_holds_on_the_other(workers_environment):
    workers_environment.update(
        PROVIDER_LOGIN_BAN_FAILURES="3", PROVIDER_LOGIN_FAILURE_DELAY_SECONDS="0.01"
    )
    with two_workers(workers_environment, "imap") as served:
        (first_pid, first), (second_pid, second) = on_each_worker(served)
        for attempt in range(2):
            with pytest.raises(imaplib.IMAP4.error):
                first.login(USER, f"wrong {attempt}")
        with pytest.raises(imaplib.IMAP4.abort):  # the third: banned, BYE
            first.login(USER, "wrong 2")
        second.logout()
        # A new connection to either worker is greeted with BYE.
        for pid in (first_pid, second_pid):
            with only(served, pid):
                sock = socket.create_connection(("127.0.0.1", served.port("imap")), timeout=10)
                with sock, sock.makefile("rb") as reader:
                    greeting = reader.readline()
            assert greeting.startswith(b"* BYE Too many failed logins"), (pid, greeting)


def try_login(served: Served) -> tuple[imaplib.IMAP4 | None, str]:
    client, pid = connect(served)
    try:
        client.login(USER, PASSWORD)
    except imaplib.IMAP4.error as error:
        client.logout()
        return None, str(error)
    return client, str(pid)


def test_connection_limits_per_user_and_address_hold_across_workers_and_a_killed_worker_frees_its_slots(  # noqa: E501
    workers_environment,
):
    workers_environment["PROVIDER_IMAP_MAX_CONNECTIONS_PER_USER_IP"] = "2"
    with two_workers(workers_environment, "imap") as served:
        (doomed_pid, doomed), (_kept_pid, kept) = on_each_worker(served)
        doomed.login(USER, PASSWORD)
        kept.login(USER, PASSWORD)
        # A third login, on either worker, is over the limit of 2.
        for _pid, client in on_each_worker(served):
            with pytest.raises(imaplib.IMAP4.error, match="Maximum number of connections"):
                client.login(USER, PASSWORD)
            client.logout()
        os.kill(doomed_pid, signal.SIGKILL)  # it never releases anything
        served.output.until("mail: killed by SIGKILL", DEADLINE)
        # The dead worker's slot is free at once (whichever worker takes the login, the
        # survivor or its replacement), and the limit still holds after.
        replacement, detail = try_login(served)
        assert replacement is not None, detail
        third, detail = try_login(served)
        assert third is None and "Maximum number of connections" in detail
        served.output.until("mail: restarted", DEADLINE)
        third, detail = try_login(served)
        assert third is None and "Maximum number of connections" in detail
        # A session that logs out gives its slot back too.
        kept.logout()
        held: list[imaplib.IMAP4] = []
        assert wait_until(lambda: keep(try_login(served)[0], held), 10)
        third, detail = try_login(served)
        assert third is None and "Maximum number of connections" in detail
        for client in [replacement, *held]:
            client.logout()


def keep(client: imaplib.IMAP4 | None, held: list[imaplib.IMAP4]) -> bool:
    if client is not None:
        held.append(client)
    return client is not None


def test_a_worker_killed_during_appends_loses_no_acknowledged_mail_and_is_replaced(
    workers_environment,
):
    with two_workers(workers_environment, "imap") as served:
        pids_before = set(served.pids("mail"))
        (victim_pid, victim), (other_pid, other) = on_each_worker(served)
        logged_in(victim)
        logged_in(other)
        acknowledged: list[int] = []
        stopped = threading.Event()

        def append_until_killed() -> None:
            n = 0
            try:
                while True:
                    status, _ = victim.append("INBOX", None, None, message(n, 20_000))
                    assert status == "OK"
                    acknowledged.append(n)
                    n += 1
            except (imaplib.IMAP4.abort, OSError):
                stopped.set()

        appender = threading.Thread(target=append_until_killed, daemon=True)
        appender.start()
        assert wait_until(lambda: len(acknowledged) >= 20, DEADLINE)
        # Also one APPEND stopped mid-literal on the same worker, as a client on a slow link.
        with only(served, victim_pid):
            partial = socket.create_connection(("127.0.0.1", served.port("imap")), timeout=10)
            partial_reader = partial.makefile("rb")
            assert partial_reader.readline().startswith(b"* OK")
        partial.sendall(f"a LOGIN {USER} {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\n".encode())
        assert partial_reader.readline().startswith(b"a OK")
        partial.sendall(b"b APPEND INBOX {1000000+}\r\n" + message(9999, 500_000))

        os.kill(victim_pid, signal.SIGKILL)
        assert stopped.wait(DEADLINE)
        partial_reader.close()
        partial.close()
        # The other worker serves on meanwhile, and every acknowledged message is there.
        assert other.noop()[0] == "OK"
        status, data = other.search(None, "ALL")
        assert status == "OK"
        count = len(data[0].split())
        assert count in (len(acknowledged), len(acknowledged) + 1)  # the last may be stored
        for n in acknowledged:
            status, found = other.search(None, "HEADER", "Message-ID", f"<m{n}@outside.test>")
            assert status == "OK" and len(found[0].split()) == 1, n
        status, found = other.search(None, "HEADER", "Message-ID", "<m9999@outside.test>")
        assert found == [b""]  # the literal never arrived whole: nothing stored
        # The supervisor replaces the dead worker.
        served.output.until("mail: restarted", DEADLINE)
        pids_after = set(served.pids("mail"))
        assert len(pids_after) == 2 and victim_pid not in pids_after and other_pid in pids_after
        assert pids_after != pids_before
        fresh = {pid for pid, client in on_each_worker(served)}
        assert fresh == pids_after  # the new worker accepts on the same port
        # The quota counts what is stored: a reservation the dead worker left mid-APPEND is
        # settled by its replacement.
        status, sizes = other.fetch("1:*", "(RFC822.SIZE)")
        stored = sum(int(line.split(b"RFC822.SIZE ")[1].rstrip(b")")) for line in sizes)
        assert wait_until(lambda: used_bytes(workers_environment) == stored, 60, 0.5)
        other.logout()
