"""Login failure counts, bans, failure penalties and the web's throttles in one SQLite file
shared by every process of an installation."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import threading
import time
import weakref
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flask import Flask

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long (ms) a write waits for another process's transaction before the caller falls back
# to its own memory. Every transaction here is a few rows (tens of µs), so a wait this long
# means a stuck or foreign lock holder, not load.
BUSY_TIMEOUT_MS = 100
# After a failure the file is not tried again for this long (s): one log line, then memory.
RETRY_SECONDS = 60.0
# Expired rows are swept, and the tables cut back to max_keys, every this many writes of one
# process (a COUNT(*) per write would cost more than the write). A table so holds at most
# max_keys + PRUNE_EVERY * processes rows.
PRUNE_EVERY = 64
FINGERPRINT_BYTES = 16
# SQLITE_CORRUPT and SQLITE_NOTADB: the file is replaced by a new one.
CORRUPT_CODES = (11, 26)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counting (
    key TEXT PRIMARY KEY, times BLOB NOT NULL, expires REAL NOT NULL, touched REAL NOT NULL);
CREATE INDEX IF NOT EXISTS counting_touched ON counting (touched);
CREATE INDEX IF NOT EXISTS counting_expires ON counting (expires);
CREATE TABLE IF NOT EXISTS bans (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE INDEX IF NOT EXISTS bans_until ON bans (until);
CREATE TABLE IF NOT EXISTS penalties (
    key TEXT PRIMARY KEY, failures INTEGER NOT NULL, attempts BLOB NOT NULL,
    expires REAL NOT NULL, touched REAL NOT NULL);
CREATE INDEX IF NOT EXISTS penalties_touched ON penalties (touched);
CREATE INDEX IF NOT EXISTS penalties_expires ON penalties (expires);
CREATE TABLE IF NOT EXISTS throttles (
    key TEXT PRIMARY KEY, times BLOB NOT NULL, blocked INTEGER NOT NULL,
    expires REAL NOT NULL, touched REAL NOT NULL);
CREATE INDEX IF NOT EXISTS throttles_touched ON throttles (blocked, touched);
CREATE INDEX IF NOT EXISTS throttles_expires ON throttles (expires);
CREATE TABLE IF NOT EXISTS windows (
    key TEXT PRIMARY KEY, hits INTEGER NOT NULL, expires REAL NOT NULL, touched REAL NOT NULL);
CREATE INDEX IF NOT EXISTS windows_touched ON windows (hits > 1, touched);
CREATE INDEX IF NOT EXISTS windows_expires ON windows (expires);
"""
TABLES = ("counting", "bans", "penalties", "throttles", "windows")


# Connections a forked child inherited: never closed (nor used) in the child.
_INHERITED: list[sqlite3.Connection] = []


class StoreUnavailable(Exception):
    """The shared file cannot be used now; the caller uses its in-memory table instead."""


class LoginStore:
    """One SQLite file (WAL, synchronous=OFF: a power cut may lose a few counts, never mail)
    that the login guards of every process of an installation read and write.

    Each thread of each process has its own connection (opened on first use, again after a
    fork), so a thread waiting for the file's lock never holds up another thread. Every
    method raises StoreUnavailable instead of sqlite3's errors; after one, the file is left
    alone for RETRY_SECONDS and one warning is logged, one info line when it works again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_keys: int,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_keys = max(int(max_keys), 1)
        self.busy_timeout_ms = busy_timeout_ms
        self._monotonic = clock or time.monotonic
        self._local = threading.local()
        self._state_lock = threading.Lock()
        self._down_until: float | None = None
        self._writes = 0
        self._secret: bytes | None = None

    # --- plumbing

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        connection: sqlite3.Connection | None = getattr(local, "connection", None)
        if connection is not None:
            if local.pid == os.getpid():
                return connection
            # Inherited over a fork: closing it here could upset the parent's locks and WAL
            # (SQLite's "do not carry a connection across a fork"); keep it, never use it.
            _INHERITED.append(connection)
            local.connection = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = self._open()
        except sqlite3.DatabaseError as error:
            if getattr(error, "sqlite_errorcode", None) not in CORRUPT_CODES:
                raise
            self._replace_corrupt(error)
            connection = self._open()
        local.connection, local.pid = connection, os.getpid()
        return connection

    def _replace_corrupt(self, error: sqlite3.Error) -> None:
        """Counts and bans are worth less than a working guard: start a new file, keeping the
        broken one aside for a look (only the newest)."""
        log.warning("login ban store %s is corrupt (%s): starting a new one", self.path, error)
        with contextlib.suppress(OSError):
            self.path.replace(self.path.with_name(self.path.name + ".corrupt"))
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                self.path.with_name(self.path.name + suffix).unlink()

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = OFF")
            connection.executescript(SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def _forget_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def _run(self, work: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """`work` in one transaction (IMMEDIATE when it writes), or StoreUnavailable."""
        with self._state_lock:
            down_until = self._down_until
        if down_until is not None and self._monotonic() < down_until:
            raise StoreUnavailable(str(self.path))
        try:
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as error:
            self._forget_connection()
            if getattr(error, "sqlite_errorcode", None) in CORRUPT_CODES:
                self._replace_corrupt(error)
            with self._state_lock:
                first = self._down_until is None
                self._down_until = self._monotonic() + RETRY_SECONDS
            if first:
                log.warning(
                    "login ban store %s unusable (%s): failures and bans are counted per "
                    "process until it works again",
                    self.path,
                    error,
                )
            raise StoreUnavailable(str(self.path)) from error
        if down_until is not None:
            with self._state_lock:
                self._down_until = None
            log.info("login ban store %s works again", self.path)
        return result

    def _maybe_prune(self, connection: sqlite3.Connection, moment: float) -> None:
        self._writes += 1
        if self._writes % PRUNE_EVERY:
            return
        self._prune(connection, moment)

    def _prune(self, connection: sqlite3.Connection, moment: float) -> None:
        connection.execute("DELETE FROM counting WHERE expires <= ?", (moment,))
        connection.execute("DELETE FROM penalties WHERE expires <= ?", (moment,))
        connection.execute("DELETE FROM bans WHERE until <= ?", (moment,))
        connection.execute("DELETE FROM throttles WHERE expires <= ?", (moment,))
        connection.execute("DELETE FROM windows WHERE expires <= ?", (moment,))
        for table, order in (
            ("counting", "touched"),
            ("penalties", "touched"),
            ("bans", "until"),  # past the cap, the ban that would end first goes first
            # Past the cap, keys still counting go before blocked ones, and window counters
            # hit once (what a flood of new keys is made of) before those hit more.
            ("throttles", "blocked, touched"),
            ("windows", "hits > 1, touched"),
        ):
            (count,) = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            if count > self.max_keys:
                connection.execute(
                    f"DELETE FROM {table} WHERE key IN "
                    f"(SELECT key FROM {table} ORDER BY {order} LIMIT ?)",
                    (count - self.max_keys,),
                )

    def prune(self, moment: float) -> None:
        """Sweep expired rows and cut every table back to max_keys now."""
        self._run(lambda connection: self._prune(connection, moment), write=True)

    def row_counts(self) -> dict[str, int]:
        """Rows per table (a measure of the file's size)."""

        def count(connection: sqlite3.Connection) -> dict[str, int]:
            return {
                table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in TABLES
            }

        return self._run(count, write=False)

    def secret(self) -> bytes:
        """A random key made once per file: every process fingerprints attempts alike."""
        if self._secret is not None:
            return self._secret

        def get(connection: sqlite3.Connection) -> bytes:
            connection.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('secret', ?)",
                (secrets.token_bytes(16),),
            )
            row = connection.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
            return bytes(row[0])

        self._secret = self._run(get, write=True)
        return self._secret

    # --- bans (mail_access.BanList)

    def banned(self, key: str, moment: float) -> bool:
        def read(connection: sqlite3.Connection) -> bool:
            row = connection.execute("SELECT until FROM bans WHERE key = ?", (key,)).fetchone()
            return row is not None and row[0] > moment

        return self._run(read, write=False)

    def ban_failure(
        self, key: str, moment: float, limit: int, window: float, ban_seconds: float
    ) -> bool:
        """Count a failure of `key`; True when it is (now) banned."""

        def count(connection: sqlite3.Connection) -> bool:
            row = connection.execute("SELECT until FROM bans WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] > moment:
                return True
            row = connection.execute("SELECT times FROM counting WHERE key = ?", (key,)).fetchone()
            earlier = array("d")
            if row is not None:
                blob = bytes(row[0])
                earlier.frombytes(blob[: len(blob) - len(blob) % earlier.itemsize])
            # Keep at most limit-1 times: more can never be needed (a bad row cannot grow it).
            recent = array("d", (t for t in earlier if 0 <= moment - t <= window))
            recent = recent[max(len(recent) - (limit - 1), 0) :]
            recent.append(moment)
            if len(recent) >= limit:
                connection.execute("DELETE FROM counting WHERE key = ?", (key,))
                connection.execute(
                    "INSERT OR REPLACE INTO bans (key, until) VALUES (?, ?)",
                    (key, moment + ban_seconds),
                )
                self._maybe_prune(connection, moment)
                return True
            connection.execute(
                "INSERT OR REPLACE INTO counting (key, times, expires, touched) "
                "VALUES (?, ?, ?, ?)",
                (key, recent.tobytes(), moment + window, moment),
            )
            self._maybe_prune(connection, moment)
            return False

        return self._run(count, write=True)

    # --- failure penalties (mail_access.FailureDelay)

    def penalty_failed(
        self, key: str, fingerprint: bytes, moment: float, expires_seconds: float, remembered: int
    ) -> int:
        """Count a failure of `key` unless `fingerprint` repeats a remembered attempt; the
        failures counted so far."""

        def count(connection: sqlite3.Connection) -> int:
            row = connection.execute(
                "SELECT failures, attempts FROM penalties WHERE key = ? AND expires > ?",
                (key, moment),
            ).fetchone()
            failures, blob = (int(row[0]), bytes(row[1])) if row is not None else (0, b"")
            attempts = [
                blob[i : i + FINGERPRINT_BYTES]
                for i in range(0, len(blob) - FINGERPRINT_BYTES + 1, FINGERPRINT_BYTES)
            ][-remembered:]
            if fingerprint not in attempts or failures <= 0:
                failures = max(failures, 0) + 1
                attempts = [*attempts, fingerprint][-remembered:]
            # A huge count from a bad row is harmless: the delay is capped by the caller.
            failures = min(failures, 1_000_000)
            connection.execute(
                "INSERT OR REPLACE INTO penalties (key, failures, attempts, expires, touched) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, failures, b"".join(attempts), moment + expires_seconds, moment),
            )
            self._maybe_prune(connection, moment)
            return failures

        return self._run(count, write=True)

    def penalty_clear(self, key: str) -> None:
        def has(connection: sqlite3.Connection) -> bool:
            found = connection.execute("SELECT 1 FROM penalties WHERE key = ?", (key,))
            return found.fetchone() is not None

        # Most logins have nothing to clear: a read needs no write lock.
        if self._run(has, write=False):
            self._run(
                lambda connection: connection.execute(
                    "DELETE FROM penalties WHERE key = ?", (key,)
                ),
                write=True,
            )

    # --- the web's login throttles (ratelimit.FailureLimiter)

    def throttle_failed(
        self, keys: tuple[str, ...], moment: float, limit: int, window: float
    ) -> None:
        """Count a failure of each of `keys`, keeping the times within `window` (at most
        `limit` of them); a key with `limit` of them is blocked."""

        def count(connection: sqlite3.Connection) -> None:
            for key in keys:
                row = connection.execute(
                    "SELECT times FROM throttles WHERE key = ?", (key,)
                ).fetchone()
                recent = _recent_times(row[0] if row else b"", moment, window)
                recent.append(moment)
                recent = recent[max(len(recent) - limit, 0) :]
                connection.execute(
                    "INSERT OR REPLACE INTO throttles (key, times, blocked, expires, touched) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key, recent.tobytes(), int(len(recent) >= limit), moment + window, moment),
                )
            self._maybe_prune(connection, moment)

        self._run(count, write=True)

    def throttle_blocked(
        self, keys: tuple[str, ...], moment: float, limit: int, window: float
    ) -> bool:
        """Whether any of `keys` has `limit` failures within `window` (a read: never waits)."""

        def read(connection: sqlite3.Connection) -> bool:
            for key in keys:
                row = connection.execute(
                    "SELECT times FROM throttles WHERE key = ? AND blocked AND expires > ?",
                    (key, moment),
                ).fetchone()
                if row is not None and len(_recent_times(row[0], moment, window)) >= limit:
                    return True
            return False

        return self._run(read, write=False)

    def throttle_reset(self, keys: tuple[str, ...]) -> None:
        def held(connection: sqlite3.Connection) -> list[str]:
            return [
                key
                for key in keys
                if connection.execute("SELECT 1 FROM throttles WHERE key = ?", (key,)).fetchone()
            ]

        # A successful login usually has nothing to forget: a read needs no write lock.
        found = self._run(held, write=False)
        if found:
            self._run(
                lambda connection: connection.executemany(
                    "DELETE FROM throttles WHERE key = ?", [(key,) for key in found]
                ),
                write=True,
            )

    # --- fixed-window hit counters (ratelimit.SharedWindowStorage: signups, API tokens)

    def window_hit(self, key: str, moment: float, expiry: float, amount: int) -> tuple[int, float]:
        """Add `amount` to `key`'s counter (a new window of `expiry` seconds when it has none
        or it ended); its count and the end of its window."""

        def hit(connection: sqlite3.Connection) -> tuple[int, float]:
            row = connection.execute(
                "SELECT hits, expires FROM windows WHERE key = ? AND expires > ?", (key, moment)
            ).fetchone()
            if row is None:
                hits, expires = amount, moment + expiry
            else:
                hits, expires = int(row[0]) + amount, float(row[1])
            connection.execute(
                "INSERT OR REPLACE INTO windows (key, hits, expires, touched) VALUES (?, ?, ?, ?)",
                (key, hits, expires, moment),
            )
            self._maybe_prune(connection, moment)
            return hits, expires

        return self._run(hit, write=True)

    def window_count(self, key: str, moment: float) -> tuple[int, float]:
        """`key`'s count and the end of its window ((0, moment) when it has none)."""

        def read(connection: sqlite3.Connection) -> tuple[int, float]:
            row = connection.execute(
                "SELECT hits, expires FROM windows WHERE key = ? AND expires > ?", (key, moment)
            ).fetchone()
            return (int(row[0]), float(row[1])) if row else (0, moment)

        return self._run(read, write=False)

    def window_clear(self, key: str | None = None) -> int:
        """Forget `key`'s counter, or every counter; how many were forgotten."""

        def clear(connection: sqlite3.Connection) -> int:
            if key is None:
                return connection.execute("DELETE FROM windows").rowcount
            return connection.execute("DELETE FROM windows WHERE key = ?", (key,)).rowcount

        return self._run(clear, write=True)


def _recent_times(blob: bytes, moment: float, window: float) -> array[float]:
    """The failure times of a stored blob that are within `window` before `moment` (a torn or
    foreign blob reads as fewer times, never as an error)."""
    times = array("d")
    data = bytes(blob)
    times.frombytes(data[: len(data) - len(data) % times.itemsize])
    return array("d", (t for t in times if 0 <= moment - t < window))


def store_path(app: Flask) -> str:
    """The file the login guards and throttles of every process of an installation share."""
    return os.path.join(app.config["INSTANCE_DIR"], "run", "logins.sqlite3")


_OPEN: weakref.WeakValueDictionary[str, LoginStore] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


def open_store(path: str | os.PathLike[str], max_keys: int) -> LoginStore:
    """This process's one LoginStore of the file at `path` (made on first use, kept while
    something holds it): the mail guards, the web's login throttles and its hit counters share
    its connections (one per thread) instead of opening one each."""
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None:
            store = _OPEN[key] = LoginStore(key, max_keys=max_keys)
        return store


def shared_store(app: Flask, max_keys: int) -> LoginStore:
    """The LoginStore of the app's installation (store_path)."""
    return open_store(store_path(app), max_keys)
