"""SQLite writers take turns on a file lock: held from the first write to commit or rollback."""

from __future__ import annotations

import fcntl
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from provider import create_app, sqlite_writes
from provider.extensions import db
from provider.sqlite_writes import TurnTakingConnection, lock_path_for


def _connect(path: Path, **kwargs: object) -> TurnTakingConnection:
    connection = sqlite3.connect(path, factory=TurnTakingConnection, timeout=10, **kwargs)
    assert isinstance(connection, TurnTakingConnection)
    return connection


def _lock_is_free(path: Path) -> bool:
    """Whether another open file (another writer) could take the turn now."""
    fd = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    with _connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (n INTEGER)")
    return path


def test_the_turn_is_held_from_the_first_write_to_commit(database: Path) -> None:
    connection = _connect(database)
    connection.execute("SELECT count(*) FROM t").fetchone()
    assert _lock_is_free(database), "a read takes no turn"
    connection.execute("INSERT INTO t VALUES (1)")
    assert not _lock_is_free(database)
    connection.execute("UPDATE t SET n = 2")
    connection.commit()
    assert _lock_is_free(database)
    connection.execute("DELETE FROM t")
    connection.rollback()
    assert _lock_is_free(database)
    connection.close()


def test_a_reader_reads_beside_the_writer_and_a_second_writer_waits_for_commit(
    database: Path,
) -> None:
    writer = _connect(database)
    writer.execute("INSERT INTO t VALUES (1)")
    reader = _connect(database, check_same_thread=False)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)

    second_done = threading.Event()

    def second_writer() -> None:
        reader.execute("INSERT INTO t VALUES (2)")
        reader.commit()
        second_done.set()

    thread = threading.Thread(target=second_writer)
    thread.start()
    # The second writer is waiting for its turn (not failing): it finishes only after commit.
    assert not second_done.wait(0.2)
    writer.commit()
    assert second_done.wait(10)
    thread.join()
    assert writer.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]
    writer.close()
    reader.close()


def test_autocommit_and_failed_statements_do_not_keep_the_turn(database: Path) -> None:
    connection = _connect(database, isolation_level=None)
    connection.execute("INSERT INTO t VALUES (1)")
    assert _lock_is_free(database)
    connection.close()

    connection = _connect(database)
    with pytest.raises(sqlite3.OperationalError):
        connection.execute("INSERT INTO missing VALUES (1)")
    assert _lock_is_free(database)
    connection.close()


def test_a_stuck_holder_does_not_hang_a_writer_forever(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writes, "TURN_TIMEOUT_SECONDS", 0.05)
    fd = os.open(f"{database}-writer.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held by something that is not even SQLite
    try:
        connection = _connect(database)
        connection.execute("INSERT INTO t VALUES (1)")  # goes ahead on SQLite's own lock
        connection.commit()
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (1,)
        connection.close()
    finally:
        os.close(fd)


def test_memory_databases_have_no_lock_file() -> None:
    assert lock_path_for(":memory:") is None
    assert lock_path_for("file::memory:?cache=shared") is None
    assert lock_path_for("file:/x/app.db?mode=ro") == "/x/app.db-writer.lock"
    assert lock_path_for("/x/app.db") == "/x/app.db-writer.lock"


def test_the_app_uses_turn_taking_connections_on_sqlite(tmp_path: Path) -> None:
    app = create_app(
        {
            "INSTANCE_DIR": str(tmp_path),
            "SECRET_KEY": "x",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        }
    )
    with app.app_context():
        raw = db.engine.raw_connection()
        try:
            assert isinstance(raw.driver_connection, TurnTakingConnection)
        finally:
            raw.close()
        db.engine.dispose()


def _synchronous(connection: sqlite3.Connection) -> int:
    return connection.execute("PRAGMA synchronous").fetchone()[0]


def test_a_relaxed_commit_is_normal_for_one_transaction_then_full_again(database: Path) -> None:
    connection = _connect(database)
    connection.execute("PRAGMA synchronous=FULL")
    assert connection.relax_next_commit()
    connection.execute("SELECT count(*) FROM t").fetchone()  # a read ends no transaction
    connection.execute("INSERT INTO t VALUES (1)")
    assert _synchronous(connection) == 1, "the transaction commits without an fsync"
    connection.commit()
    assert _synchronous(connection) == 2, "the next transaction is durable again"
    assert connection.relax_next_commit()
    connection.execute("INSERT INTO t VALUES (2)")
    connection.rollback()
    assert _synchronous(connection) == 2
    connection.close()


def test_a_transaction_already_open_is_not_relaxed(database: Path) -> None:
    connection = _connect(database)
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("INSERT INTO t VALUES (1)")
    assert not connection.relax_next_commit()
    assert _synchronous(connection) == 2
    connection.commit()
    connection.execute("PRAGMA synchronous=OFF")
    assert connection.relax_next_commit()  # nothing to relax: OFF stays OFF after the commit
    connection.execute("INSERT INTO t VALUES (2)")
    connection.commit()
    assert _synchronous(connection) == 0
    connection.close()


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_checkpoints_run_after_every_nth_commit_not_inside_one(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writes, "CHECKPOINT_EVERY", 5)
    monkeypatch.setattr(sqlite_writes, "_commits", itertools.count(1))
    connection = _connect(database)
    assert connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    size_before = database.stat().st_size
    for _ in range(4):
        connection.execute("INSERT INTO t VALUES (randomblob(20000))")
        connection.commit()
    assert database.stat().st_size == size_before, "the rows wait in the WAL"
    connection.execute("INSERT INTO t VALUES (randomblob(20000))")
    connection.commit()
    assert _wait_for(lambda: database.stat().st_size > size_before + 80_000), (
        "the fifth commit started a checkpoint that copied the WAL into the database"
    )
    assert _lock_is_free(database), "the checkpoint holds no writer turn"
    connection.close()
