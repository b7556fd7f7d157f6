"""Login bans and failure penalties shared by every process of an installation (RELIABILITY A2)."""

from __future__ import annotations

import base64
import imaplib
import logging
import multiprocessing
import os
import signal
import smtplib
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from provider import create_app
from provider.protocols.server import ProtocolRunner
from provider.services import login_store
from provider.services.login_store import PRUNE_EVERY, LoginStore
from provider.services.mail_access import BanList, FailureDelay, guards
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.submission.conftest import insecure_context

ADDRESS = "alice@example.test"
SPAWN = multiprocessing.get_context("spawn")


def serve_in_child(config: dict[str, Any], names: list[str], ports: Any) -> None:
    """A separate process (spawned: nothing inherited) serving `names` for one app config
    until SIGTERM (no shared Event: one of them is killed with -9, which would wedge it)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    app = create_app(config)
    runner = ProtocolRunner(app, names)
    ports.put({b.name: (b.host, b.port) for b in runner.start()})
    stop.wait()
    runner.stop()


@pytest.fixture
def two_processes(app_config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """IMAP in one process, submission in another: one installation (database, INSTANCE_DIR)."""
    app_config.update(
        IMAP_PORT=0,
        IMAPS_PORT=0,
        SUBMISSION_PORT=0,
        SUBMISSIONS_PORT=0,
        LOGIN_FAILURE_DELAY_SECONDS=0,
        LOGIN_BAN_FAILURES=4,
    )
    ports = SPAWN.Queue()
    children = [
        SPAWN.Process(target=serve_in_child, args=(app_config, [name], ports), daemon=True)
        for name in ("imap", "submission")
    ]
    for child in children:
        child.start()
    bound: dict[str, Any] = {"processes": children}
    try:
        for _ in children:
            bound.update(ports.get(timeout=60))
        yield bound
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def submission_client(address: tuple[str, int], source: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP(*address, timeout=10, source_address=(source, 0))
    client.ehlo("client.test")
    client.starttls(context=insecure_context())
    client.ehlo("client.test")
    return client


def test_failures_over_imap_and_submission_in_two_processes_ban_everywhere(
    app: Flask, session: Any, two_processes: dict[str, Any]
) -> None:
    make_mailbox(session, ADDRESS, protocols="imap")
    imap = imaplib.IMAP4(*two_processes["imap"], timeout=10)
    for attempt in range(2):
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(ADDRESS, f"wrong {attempt}")
    imap.logout()
    client = submission_client(two_processes["submission"])
    assert client.docmd("AUTH", "PLAIN " + plain(ADDRESS, "wrong 2"))[0] == 535
    # The fourth failure in all, the first two in the other process: the ban.
    assert client.docmd("AUTH", "PLAIN " + plain(ADDRESS, "wrong 3")) == (
        421,
        b"4.7.0 Too many failed logins from your address",
    )
    client.close()
    # Now every protocol refuses the address, before any password.
    with pytest.raises(imaplib.IMAP4.error, match="Too many failed logins"):
        imaplib.IMAP4(*two_processes["imap"], timeout=10)
    with pytest.raises(smtplib.SMTPConnectError):
        smtplib.SMTP(*two_processes["submission"], timeout=10)
    # The admin login (the web process is this one).
    response = app.test_client().post(
        "/admin/login", data={"email": "root@example.com", "password": "whatever it is"}
    )
    assert response.status_code == 429
    # Another address is not affected (ASVS 6.1.1: no malicious lockout).
    other = submission_client(two_processes["submission"], source="127.0.0.2")
    other.login(ADDRESS, MAILBOX_PASSWORD)
    other.quit()
    # kill -9 of one process loses no ban: the other still refuses.
    imap_process = two_processes["processes"][0]
    os.kill(imap_process.pid, signal.SIGKILL)
    imap_process.join(10)
    with pytest.raises(smtplib.SMTPConnectError):
        smtplib.SMTP(*two_processes["submission"], timeout=10)
    assert guards(app).bans.banned("127.0.0.1")


def store_at(path: Path, **kwargs: Any) -> LoginStore:
    return LoginStore(path, max_keys=kwargs.pop("max_keys", 1000), **kwargs)


def test_two_stores_on_one_file_count_together(tmp_path: Path) -> None:
    """Two LoginStores stand for two processes: the limit is reached by their sum."""
    moment = [1000.0]
    first = BanList(3, clock=lambda: moment[0], store=store_at(tmp_path / "l.sqlite3"))
    second = BanList(3, clock=lambda: moment[0], store=store_at(tmp_path / "l.sqlite3"))
    assert not first.failure("192.0.2.1")
    assert not second.failure("192.0.2.1")
    assert not second.banned("192.0.2.1")
    assert first.failure("192.0.2.1")
    assert second.banned("192.0.2.1") and not second.banned("192.0.2.2")


def test_penalties_escalate_across_stores_and_a_success_clears_them(tmp_path: Path) -> None:
    moment = [1000.0]
    first = FailureDelay(2, clock=lambda: moment[0], store=store_at(tmp_path / "l.sqlite3"))
    second = FailureDelay(2, clock=lambda: moment[0], store=store_at(tmp_path / "l.sqlite3"))
    assert first.failed("192.0.2.1", "u", "a") == 2
    assert second.failed("192.0.2.1", "u", "b") == 4
    # The same wrong password again, from the other process: not a new guess.
    assert first.failed("192.0.2.1", "u", "b") == 4
    assert first.failed("192.0.2.1", "u", "c") == 8
    second.succeeded("192.0.2.1")
    assert first.failed("192.0.2.1", "u", "d") == 2
    moment[0] += 3601  # penalties expire an hour after the last failure
    assert second.failed("192.0.2.1", "u", "e") == 2


def test_the_store_stays_bounded_under_a_scan_and_keeps_its_bans(tmp_path: Path) -> None:
    cap = 50
    moment = [1000.0]
    store = store_at(tmp_path / "l.sqlite3", max_keys=cap)
    bans = BanList(3, clock=lambda: moment[0], store=store, max_keys=cap)
    delays = FailureDelay(0, clock=lambda: moment[0], store=store, max_keys=cap)
    while not bans.failure("192.0.2.1"):
        pass
    for number in range(3000):
        moment[0] += 0.01
        remote = f"2001:db8:{number:x}::1"  # a /48 each
        bans.failure(remote)
        delays.failed(remote, "u", "p")
    counts = store.row_counts()
    assert counts["counting"] <= cap + PRUNE_EVERY
    assert counts["penalties"] <= cap + PRUNE_EVERY
    assert BanList(3, store=store_at(tmp_path / "l.sqlite3"), clock=lambda: moment[0]).banned(
        "192.0.2.1"
    )
    moment[0] += 86401
    store.prune(moment[0])
    assert set(store.row_counts().values()) == {0}


def test_a_locked_store_degrades_to_memory_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l.sqlite3"
    bans = BanList(3, store=store_at(path))
    assert not bans.failure("192.0.2.1")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process stuck inside a write
    try:
        with caplog.at_level(logging.WARNING, logger=login_store.__name__):
            started = time.monotonic()
            assert not bans.failure("192.0.2.1")
            assert bans.failure("192.0.2.1")  # this process's own count reaches the limit
            assert bans.banned("192.0.2.1")
            assert time.monotonic() - started < 2
        warnings = [r for r in caplog.records if r.name == login_store.__name__]
        assert len(warnings) == 1 and "unusable" in warnings[0].getMessage()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_an_unopenable_store_never_fails_a_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l.sqlite3"
    path.mkdir()  # not a file at all
    bans = BanList(2, store=store_at(path))
    delays = FailureDelay(2, store=store_at(path))
    with caplog.at_level(logging.WARNING, logger=login_store.__name__):
        assert not bans.failure("192.0.2.1") and bans.failure("192.0.2.1")
        assert delays.failed("192.0.2.1", "u", "a") == 2
        assert delays.failed("192.0.2.1", "u", "b") == 4
        delays.succeeded("192.0.2.1")
    assert len([r for r in caplog.records if r.name == login_store.__name__]) == 2  # one each


def test_a_corrupt_store_is_replaced_and_counting_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l.sqlite3"
    assert not BanList(2, store=store_at(path)).failure("192.0.2.1")
    for name in os.listdir(tmp_path):
        (tmp_path / name).write_bytes(b"\xff" * 8192)  # the file and its WAL, garbage
    with caplog.at_level(logging.WARNING, logger=login_store.__name__):
        bans = BanList(2, store=store_at(path))
        assert not bans.failure("192.0.2.1")
        assert bans.failure("192.0.2.1")
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "l.sqlite3.corrupt").exists()
    assert BanList(2, store=store_at(path)).banned("192.0.2.1")


def test_bad_rows_in_the_store_are_survived(tmp_path: Path) -> None:
    """Odd-length blobs and absurd counts (another version, a bad disk): no exception."""
    path = tmp_path / "l.sqlite3"
    moment = [1000.0]
    bans = BanList(3, clock=lambda: moment[0], store=store_at(path))
    delays = FailureDelay(2, clock=lambda: moment[0], store=store_at(path))
    assert not bans.failure("192.0.2.1")
    delays.failed("192.0.2.1", "u", "p")
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE counting SET times = x'0102030405'")
        raw.execute("UPDATE penalties SET failures = 9223372036854775807, attempts = x'01'")
    assert not bans.failure("192.0.2.1")
    assert delays.failed("192.0.2.1", "u", "q") == 15


def test_a_ban_check_stays_well_under_a_millisecond(tmp_path: Path) -> None:
    """`banned` runs on the event loop at every connection."""
    bans = BanList(3, store=store_at(tmp_path / "l.sqlite3"))
    for number in range(500):
        bans.failure(f"198.51.100.{number % 250}")
    bans.banned("192.0.2.1")  # opens the connection
    timings = []
    for _ in range(200):
        started = time.perf_counter()
        bans.banned("192.0.2.1")
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.0005


def test_the_guards_of_an_app_use_the_instance_file(app: Flask) -> None:
    assert login_store.store_path(app).startswith(str(app.config["INSTANCE_DIR"]))
    shared = guards(app)
    assert shared.bans.store is shared.failures.store is shared.store
    while shared.login_failed("192.0.2.9", "u", "p") is not None:
        pass
    assert Path(login_store.store_path(app)).exists()
    other = BanList(3, store=LoginStore(login_store.store_path(app), max_keys=10))
    assert other.banned("192.0.2.9")


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """`provider serve` forks its services: a connection made before the fork is not reused."""
    bans = BanList(2, store=store_at(tmp_path / "l.sqlite3"))
    assert not bans.failure("192.0.2.1")  # the parent's connection exists now
    pid = os.fork()
    if pid == 0:  # the child: one more failure bans, through a connection of its own
        os._exit(0 if bans.failure("192.0.2.1") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bans.store is not None and bans.store.banned("192.0.2.1", time.time())
    assert not bans.failure("192.0.2.2")  # the parent's own connection still works
