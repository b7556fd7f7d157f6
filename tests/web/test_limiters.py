"""Every in-process limiter stays bounded under a flood of new keys, and still blocks (issue 11)."""

from __future__ import annotations

import os
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from provider.services import clock, login_store, mail_access, ratelimit
from provider.services.login_store import LoginStore
from provider.services.mail_access import BanList, FailureDelay
from provider.services.ratelimit import (
    BoundedMemoryStorage,
    BoundedTable,
    FailureLimiter,
    SharedWindowStorage,
)

FLOOD = 100_000
CAP = 1_000
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def frozen() -> Any:
    with clock.frozen_at(START):
        yield


def test_bounded_table_expires_idle_keys_and_evicts_the_oldest() -> None:
    table: BoundedTable[int] = BoundedTable(max_keys=3)
    for number in range(5):
        table.put(f"k{number}", number, expires=100.0 + number, moment=0.0)
    assert list(table) == ["k2", "k3", "k4"]  # the two oldest evicted at the cap
    assert table.get("k2", moment=102.0) is None  # expired on reading
    table.put("k5", 5, expires=200.0, moment=103.5)  # k3 expired: dropped from the front
    assert list(table) == ["k4", "k5"]


def test_web_login_limiter_stays_bounded_under_a_flood_and_still_blocks(frozen: None) -> None:
    limiter = FailureLimiter(3, 900, max_keys=CAP)
    limiter.fail("email:victim@example.test", "ip:192.0.2.1")
    limiter.fail("email:victim@example.test", "ip:192.0.2.1")
    limiter.fail("email:victim@example.test", "ip:192.0.2.1")
    assert limiter.blocked("email:victim@example.test")
    for number in range(FLOOD):
        key = f"email:user{number}@example.test"
        assert not limiter.blocked(key)
        limiter.fail(key, "ip:192.0.2.1")
    assert limiter.key_count() <= 2 * CAP
    assert limiter.blocked("email:victim@example.test")
    assert limiter.blocked("ip:192.0.2.1")
    for _ in range(3):
        limiter.fail("email:late@example.test")
    assert limiter.blocked("email:late@example.test")
    # A window after the last failure every key is forgotten, blocked ones included.
    with clock.frozen_at(START + timedelta(seconds=901)):
        assert not limiter.blocked("email:victim@example.test", "ip:192.0.2.1")
        limiter.fail("email:fresh@example.test")
        assert limiter.key_count() == 1


def test_web_login_limiter_keeps_its_sliding_window(frozen: None) -> None:
    limiter = FailureLimiter(3, 900)
    for seconds in (0, 100, 200):
        with clock.frozen_at(START + timedelta(seconds=seconds)):
            limiter.fail("email:a@example.test")
    with clock.frozen_at(START + timedelta(seconds=899)):
        assert limiter.blocked("email:a@example.test")
    with clock.frozen_at(START + timedelta(seconds=901)):
        # The first failure left the window: two remain, one more blocks again.
        assert not limiter.blocked("email:a@example.test")
        limiter.fail("email:a@example.test")
        assert limiter.blocked("email:a@example.test")
    limiter.reset("email:a@example.test")
    assert limiter.key_count() == 0


def test_asking_about_keys_stores_nothing(frozen: None) -> None:
    """The reported leak: every lookup of a new e-mail used to add a key."""
    limiter = FailureLimiter(3, 900)
    for number in range(1000):
        limiter.blocked(f"email:user{number}@example.test", "ip:192.0.2.1")
    assert limiter.key_count() == 0


@pytest.fixture
def account_limits(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(LOGIN_MAX_FAILURES=3, LOGIN_FAILURE_DELAY_SECONDS=0)
    return app_config


@pytest.mark.parametrize("url", ["/account/login", "/admin/login"])
def test_blocked_logins_with_new_emails_add_no_keys(
    account_limits: dict[str, Any], app: Flask, client: FlaskClient, url: str
) -> None:
    """After the remote address is blocked, each POST with a new e-mail added a key for the
    life of the process (~0.9 KB each); now the counters hold what the failures put there."""
    for number in range(3):
        client.post(url, data={"email": f"guess{number}@example.test", "password": "wrong pw"})
    for number in range(500):
        response = client.post(
            url, data={"email": f"new{number}@example.test", "password": "wrong pw"}
        )
        assert response.status_code == 429
    name = "account" if url.startswith("/account") else "admin"
    assert ratelimit.login_limiter(app, name).key_count() == 4  # three e-mails and the address


def test_signup_counters_stay_bounded_under_a_flood_and_still_block() -> None:
    storage = BoundedMemoryStorage(max_keys=CAP)
    limiter = FixedWindowRateLimiter(storage)
    per_contact = parse("3 per day")
    for _ in range(3):
        assert limiter.hit(per_contact, "contact:victim@example.org")
    assert not limiter.hit(per_contact, "contact:victim@example.org")
    for number in range(FLOOD):
        assert limiter.hit(per_contact, f"contact:user{number}@example.org")
    assert storage.key_count() <= 2 * CAP
    assert not limiter.hit(per_contact, "contact:victim@example.org")
    assert limiter.get_window_stats(per_contact, "contact:victim@example.org").remaining == 0
    storage.clear(per_contact.key_for("contact:victim@example.org"))
    assert limiter.hit(per_contact, "contact:victim@example.org")


def test_signup_and_api_counters_live_in_the_installations_login_store(app: Flask) -> None:
    storage = app.extensions["signup_limiter"].storage
    assert isinstance(storage, SharedWindowStorage)
    assert str(storage.store.path) == os.path.abspath(login_store.store_path(app))
    assert ratelimit.storage_uri("redis://localhost:6379", app) == "redis://localhost:6379"
    # Another process of the installation (another storage on the same file) counts along.
    other = FixedWindowRateLimiter(storage_from_string(ratelimit.storage_uri("memory://", app)))
    mine = FixedWindowRateLimiter(storage)
    per_hour = parse("3 per hour")
    assert mine.hit(per_hour, "signup", "192.0.2.1") and other.hit(per_hour, "signup", "192.0.2.1")
    assert mine.hit(per_hour, "signup", "192.0.2.1")
    assert not other.hit(per_hour, "signup", "192.0.2.1")
    stats = other.get_window_stats(per_hour, "signup", "192.0.2.1")
    assert stats.remaining == 0 and 3590 < stats.reset_time - time.time() <= 3600
    assert mine.hit(per_hour, "signup", "192.0.2.9")  # another key is its own
    storage.clear(per_hour.key_for("signup", "192.0.2.1"))
    assert other.hit(per_hour, "signup", "192.0.2.1")


def test_one_store_per_file_serves_the_guards_the_throttles_and_the_counters(app: Flask) -> None:
    """One LoginStore (one connection per thread) per file per process, whoever asks."""
    store = mail_access.guards(app).store
    assert ratelimit.login_limiter(app, "admin").store is store
    assert ratelimit.login_limiter(app, "account").store is store
    assert app.extensions["signup_limiter"].storage.store is store
    with pytest.raises(ValueError, match="colon"):
        FailureLimiter(3, 900, store=store, name="admin:login")


def test_keys_with_nul_and_line_breaks_are_kept_apart(frozen: None, tmp_path: Path) -> None:
    limiter = FailureLimiter(2, 900, store=LoginStore(tmp_path / "l.sqlite3", 100), name="admin")
    fresh = FailureLimiter(2, 900, store=limiter.store, name="admin")  # asks the file only
    for _ in range(2):
        limiter.fail("email:a\0b@example.test", "email:a\r\nb@example.test")
    assert fresh.blocked("email:a\0b@example.test") and fresh.blocked("email:a\r\nb@example.test")
    assert not fresh.blocked("email:a\0c@example.test") and not fresh.blocked("email:a")


def test_the_shared_window_counters_fall_back_to_memory(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file where the directory should be")
    storage = SharedWindowStorage(f"provider-shared://{tmp_path}/run/logins.sqlite3")
    limiter = FixedWindowRateLimiter(storage)
    per_hour = parse("2 per hour")
    assert limiter.hit(per_hour, "k") and limiter.hit(per_hour, "k")
    assert not limiter.hit(per_hour, "k")  # still limited, in this process's memory
    assert BoundedMemoryStorage.get(storage, per_hour.key_for("k")) == 3


def test_web_login_throttles_hold_in_memory_while_the_file_is_unusable(
    frozen: None, tmp_path: Path
) -> None:
    (tmp_path / "run").write_text("a file where the directory should be")
    store = LoginStore(tmp_path / "run" / "logins.sqlite3", max_keys=CAP)
    limiter = FailureLimiter(3, 900, store=store, name="admin-login")
    for _ in range(3):
        limiter.fail("email:a@example.test", "ip:192.0.2.1")
    assert limiter.blocked("email:a@example.test") and limiter.blocked("ip:192.0.2.1")
    assert not limiter.blocked("email:b@example.test")
    limiter.reset("email:a@example.test")
    assert not limiter.blocked("email:a@example.test") and limiter.blocked("ip:192.0.2.1")


def test_web_login_failures_count_together_across_processes(frozen: None, tmp_path: Path) -> None:
    """Two limiters on one file, as two web processes have; each keeps its own memory."""
    path = tmp_path / "logins.sqlite3"
    first = FailureLimiter(3, 900, store=LoginStore(path, max_keys=CAP), name="admin-login")
    second = FailureLimiter(3, 900, store=LoginStore(path, max_keys=CAP), name="admin-login")
    other_name = FailureLimiter(3, 900, store=LoginStore(path, max_keys=CAP), name="account")
    first.fail("email:a@example.test", "ip:192.0.2.1")
    second.fail("email:a@example.test", "ip:192.0.2.1")
    assert not first.blocked("email:a@example.test") and not second.blocked("ip:192.0.2.1")
    first.fail("email:a@example.test", "ip:192.0.2.1")
    assert second.blocked("email:a@example.test") and second.blocked("ip:192.0.2.1")
    assert not other_name.blocked("email:a@example.test")  # the account pages count apart
    with clock.frozen_at(START + timedelta(seconds=901)):
        assert not second.blocked("email:a@example.test")  # the window ended
    second.reset("email:a@example.test")  # a successful login forgets its e-mail's count
    assert not first.blocked("email:a@example.test") and first.blocked("ip:192.0.2.1")


def test_the_shared_throttles_stay_bounded_and_keep_what_is_blocked(
    frozen: None, tmp_path: Path
) -> None:
    store = LoginStore(tmp_path / "logins.sqlite3", max_keys=CAP)
    limiter = FailureLimiter(3, 900, max_keys=CAP, store=store, name="admin-login")
    for _ in range(3):
        limiter.fail("email:victim@example.test")
    for number in range(3 * CAP):
        limiter.fail(f"email:user{number}@example.test")
    store.prune(START.timestamp())
    assert store.row_counts()["throttles"] <= CAP
    fresh = FailureLimiter(3, 900, store=store, name="admin-login")  # nothing in its memory
    assert fresh.blocked("email:victim@example.test")
    windows = SharedWindowStorage(f"provider-shared://{tmp_path}/logins.sqlite3", max_keys=CAP)
    per_day = parse("3 per day")
    hits = FixedWindowRateLimiter(windows)
    for _ in range(3):
        hits.hit(per_day, "contact:victim@example.org")
    for number in range(3 * CAP):
        hits.hit(per_day, f"contact:user{number}@example.org")
    windows.store.prune(time.time())
    assert windows.store.row_counts()["windows"] <= CAP
    assert not hits.hit(per_day, "contact:victim@example.org")


def test_ban_list_stays_bounded_under_a_scan_and_keeps_its_bans() -> None:
    now = Clock()
    bans = BanList(5, window=3600, ban_seconds=7200, clock=now, max_keys=CAP)
    for _ in range(5):
        bans.failure("192.0.2.1")
    assert bans.banned("192.0.2.1")
    for number in range(FLOOD):
        bans.failure(f"2001:db8:{number:x}::1")  # one /48 each
    assert bans.key_count() <= 2 * CAP
    assert bans.banned("192.0.2.1")
    now.value += 7201
    assert not bans.banned("192.0.2.1")


def test_failure_delay_stays_bounded_under_a_scan_and_still_delays() -> None:
    now = Clock()
    delays = FailureDelay(2.0, clock=now, max_keys=CAP)
    for number in range(FLOOD):
        delays.failed(f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}", "u", "p")
    assert delays.key_count() <= CAP
    assert delays.failed("192.0.2.1", "u", "a") == 2.0
    assert delays.failed("192.0.2.1", "u", "b") == 4.0
    now.value += mail_access.PENALTY_EXPIRES_SECONDS + 1
    assert delays.failed("192.0.2.9", "u", "a") == 2.0
    assert delays.key_count() == 1  # every idle penalty expired


def test_a_full_limiter_holds_a_few_megabytes(frozen: None) -> None:
    """The cap in bytes: MAX_KEYS keys at the limit in both tables of a web login limiter."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        limiter = FailureLimiter(10, 900)
        for number in range(2 * ratelimit.MAX_KEYS):
            limiter.fail(f"email:someone-with-a-long-name-{number}@example.test")
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert limiter.key_count() == ratelimit.MAX_KEYS
    assert used < 40 * 1024 * 1024, used
