"""SQLite write transactions take turns on a file lock, so a waiting writer wakes within a
millisecond instead of sleeping through SQLite's busy back-off (up to 100 ms per try).

SQLite lets one writer at a time into the database and makes the others wait in its busy
handler, which sleeps 1, 2, 5, 10 … 100 ms between tries no matter when the lock comes free.
Under a mixed IMAP load (two worker processes, each with threads that APPEND, COPY and EXPUNGE)
those sleeps were most of the tail: p99 of APPEND 283 ms against a p50 of 68 ms. Here every
connection takes an exclusive `flock` on `<database>-writer.lock` before its first write
statement and lets go at commit or rollback: the same window in which SQLite holds its own
write lock, so no transaction waits longer than before, only the waiting is cheaper. A writer
that cannot get the turn within the busy timeout goes ahead without it and SQLite's own locking
decides, as it did before (a stuck transaction elsewhere never hangs this one for good).
Readers never take the lock (WAL lets them read beside the writer).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

TURN_TIMEOUT_SECONDS = 10.0
"""As long as SQLite's busy_timeout (provider/extensions.py): then SQLite decides."""

CHECKPOINT_EVERY = 200
"""Write transactions (of this process) between two WAL checkpoints. SQLite's automatic
checkpoint runs inside the COMMIT that pushed the WAL past 1000 pages, so it ran while that
writer still held the turn, and every other writer waited for its fsyncs (bursts of ~200 ms
under the mixed IMAP load). Here it is turned off, and a passive checkpoint runs after the
commit, the turn already given back: SQLite lets writers go on beside a checkpoint."""
_commits = itertools.count(1)

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")
# Between tries of a taken lock: short, since a turn is one transaction (a few ms).
_POLL_SECONDS = (0.0002, 0.0005, 0.001, 0.002)


def lock_path_for(database: str) -> str | None:
    """The turn lock of a database file, or None for a database only in memory."""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):
        database = database[len("file:") :].partition("?")[0]
        if "mode=memory" in database:
            return None
    return f"{database}-writer.lock"


def _is_write(statement: str) -> bool:
    return statement.lstrip()[:7].upper().startswith(_WRITES)


class WriterTurn:
    """One connection's hold on the lock file: acquire before the first write, release at the
    end of the transaction. Not shared between connections (each has its own open file, so
    two threads of one process take turns too)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.held = False

    def acquire(self) -> None:
        if self.held:
            return
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                return  # a read-only directory: SQLite's own locking still holds
        deadline = time.monotonic() + TURN_TIMEOUT_SECONDS
        tries = 0
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(_POLL_SECONDS[min(tries, len(_POLL_SECONDS) - 1)])
                tries += 1
                continue
            self.held = True
            return

    def release(self) -> None:
        if self.held and self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        self.release()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_checkpointing = threading.Lock()


def checkpoint_in_background(database: str) -> None:
    """A passive WAL checkpoint on a connection of its own, in a thread: it copies what it can
    without waiting for readers or blocking writers (its fsyncs delay no command). One at a
    time per process; a busy or failed one is left to the next."""
    if not _checkpointing.acquire(blocking=False):
        return

    def run() -> None:
        try:
            connection = sqlite3.connect(
                database, timeout=TURN_TIMEOUT_SECONDS, uri=database.startswith("file:")
            )
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                connection.close()
        except sqlite3.Error:
            pass
        finally:
            _checkpointing.release()

    threading.Thread(target=run, name="sqlite-checkpoint", daemon=True).start()


class TurnTakingCursor(sqlite3.Cursor):
    """A cursor that takes the writer turn before a write statement."""

    def execute(self, sql: str, parameters: Any = (), /) -> TurnTakingCursor:
        connection = self.connection
        assert isinstance(connection, TurnTakingConnection)
        connection.before(sql)
        try:
            super().execute(sql, parameters)
        finally:
            connection.after()
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> TurnTakingCursor:
        connection = self.connection
        assert isinstance(connection, TurnTakingConnection)
        connection.before(sql)
        try:
            super().executemany(sql, seq_of_parameters)
        finally:
            connection.after()
        return self


class TurnTakingConnection(sqlite3.Connection):
    """sqlite3 connection factory (`sqlite3.connect(..., factory=…)`) whose write transactions
    take turns on the database's writer lock."""

    def __init__(self, database: str | bytes | os.PathLike[str], *args: Any, **kwargs: Any):
        super().__init__(database, *args, **kwargs)
        path = lock_path_for(os.fsdecode(database))
        self._turn = WriterTurn(path) if path else None
        self._database = os.fsdecode(database) if path else None
        self._restore_synchronous: int | None = None
        self._synchronous: int | None = None  # the level set at connect, read once
        if self._turn is not None:
            super().execute("PRAGMA wal_autocheckpoint=0")  # see CHECKPOINT_EVERY

    def relax_next_commit(self) -> bool:
        """Let the transaction about to begin commit without waiting for the disk: WAL with
        synchronous=NORMAL, so the commit writes the WAL but does not fsync it (the next durable
        commit, or a checkpoint, syncs it with its own). The connection's level comes back at
        that transaction's commit or rollback. For bookkeeping that a power cut may take back
        and a repair puts right (quota counters, see DESIGN-NOTES), never for what a reply
        promised. False, and nothing changed, when a transaction is already open: SQLite fixes
        the level for a transaction at its start."""
        if self.in_transaction:
            return False
        if self._restore_synchronous is None:
            if self._synchronous is None:
                self._synchronous = int(super().execute("PRAGMA synchronous").fetchone()[0])
            level = self._synchronous
            if level <= 1:
                return True  # already NORMAL or OFF: nothing to relax or restore
            super().execute("PRAGMA synchronous=NORMAL")
            self._restore_synchronous = int(level)
        return True

    def _end_relaxed(self) -> None:
        if self._restore_synchronous is not None and not self.in_transaction:
            level, self._restore_synchronous = self._restore_synchronous, None
            super().execute(f"PRAGMA synchronous={level}")

    def cursor(self, factory: Any = None) -> Any:  # type: ignore[override]
        return super().cursor(factory or TurnTakingCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().executemany(sql, parameters)

    def before(self, sql: str) -> None:
        if self._turn is not None and not self._turn.held and _is_write(sql):
            self._turn.acquire()

    def after(self) -> None:
        # In autocommit mode, or when the statement failed before a transaction began, there
        # is nothing to wait for: let the next writer in.
        if self._turn is not None and self._turn.held and not self.in_transaction:
            self._turn.release()

    def commit(self) -> None:
        wrote = self._turn is not None and self._turn.held
        try:
            super().commit()
        finally:
            self.after()
            self._end_relaxed()
        if wrote and next(_commits) % CHECKPOINT_EVERY == 0:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Start a passive WAL checkpoint beside the writers (see checkpoint_in_background)."""
        if self._database is not None:
            checkpoint_in_background(self._database)

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.after()
            self._end_relaxed()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._turn is not None:
                self._turn.close()
