"""Quota rules: GB bounds on both sides, GB↔bytes, and the atomic reserve/release."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from provider.errors import QuotaOutOfRange
from provider.models import AuditEvent, Mailbox, QuotaReservation
from provider.services import quota
from provider.services.clock import now
from provider.services.quota import GIB, QuotaBounds
from provider.services.storage import mail_store
from tests.conftest import make_mailbox, wait_until

DEFAULT = QuotaBounds(Decimal(8), Decimal(100))


@pytest.mark.parametrize("gb", ["8", "8.0", "12.5", "99.999", "100", 8, 100.0])
def test_quota_inside_bounds_is_accepted(gb):
    assert quota.quota_bytes_from_gb(gb, DEFAULT) == int(Decimal(str(gb)) * GIB)


@pytest.mark.parametrize("gb", ["7.999", "7", "0", "-8", "100.001", "101", "1000"])
def test_quota_outside_bounds_is_refused_naming_the_range(gb):
    with pytest.raises(QuotaOutOfRange, match="between 8 and 100 GB") as caught:
        quota.quota_bytes_from_gb(gb, DEFAULT)
    assert caught.value.field == "quota_gb"


@pytest.mark.parametrize("gb", ["", "abc", "NaN", "inf", "8GB", None])
def test_quota_that_is_no_number_is_refused(gb):
    with pytest.raises(QuotaOutOfRange, match="number of GB"):
        quota.quota_bytes_from_gb(gb, DEFAULT)


def test_one_gb_is_1024_cubed_bytes():
    assert quota.quota_bytes_from_gb("8", DEFAULT) == 8589934592


def test_bounds_come_from_settings(app_config):
    from provider import create_app

    app_config.update(QUOTA_MIN_GB=0.0001, QUOTA_MAX_GB=2)
    with create_app(app_config).app_context():
        assert quota.quota_bytes_from_gb("0.0001") == int(Decimal("0.0001") * GIB)
        with pytest.raises(QuotaOutOfRange, match=r"between 0\.0001 and 2 GB"):
            quota.quota_bytes_from_gb("3")


def test_format_gb_drops_trailing_zeros():
    assert quota.format_gb(Decimal("8.000")) == "8"
    assert quota.format_gb(12.5) == "12.5"
    assert quota.format_gb(100) == "100"


def _usage(session: Session, mailbox_id: int) -> int:
    session.expire_all()
    return session.scalar(select(Mailbox.used_bytes).where(Mailbox.id == mailbox_id))


def test_reserve_up_to_the_limit_and_not_a_byte_more(session):
    mailbox = make_mailbox(session)
    limit = mailbox.quota_bytes
    assert quota.reserve(session, mailbox.id, limit - 10)
    assert not quota.reserve(session, mailbox.id, 11)
    assert _usage(session, mailbox.id) == limit - 10
    assert quota.reserve(session, mailbox.id, 10)
    assert _usage(session, mailbox.id) == limit
    assert not quota.reserve(session, mailbox.id, 1)


def test_release_gives_back_and_never_goes_negative(session):
    mailbox = make_mailbox(session)
    assert quota.reserve(session, mailbox.id, 1000)
    quota.release(session, mailbox.id, 400)
    assert _usage(session, mailbox.id) == 600
    quota.release(session, mailbox.id, 5000)
    assert _usage(session, mailbox.id) == 0


def test_negative_amounts_are_programming_errors(session):
    mailbox = make_mailbox(session)
    with pytest.raises(ValueError):
        quota.reserve(session, mailbox.id, -1)
    with pytest.raises(ValueError):
        quota.release(session, mailbox.id, -1)


def test_concurrent_reservations_never_exceed_the_quota(session, database_url):
    """Eight writers race for 20 slots that fit 10: exactly 10 win, usage equals the quota."""
    mailbox = make_mailbox(session)
    slot = mailbox.quota_bytes // 10
    mailbox_id = mailbox.id
    engine = create_engine(
        database_url, connect_args={"timeout": 30} if "sqlite" in database_url else {}
    )
    wins: list[bool] = []
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(20 // 8 + 1):
            with Session(engine) as own:
                won = quota.reserve(own, mailbox_id, slot)
                own.commit()
            with lock:
                wins.append(won is not None)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert wins.count(True) == 10
    assert _usage(session, mailbox_id) == 10 * slot


def test_fits_uses_the_same_boundary_as_reserve(session):
    mailbox = make_mailbox(session)
    room = mailbox.quota_bytes - 100
    assert quota.reserve(session, mailbox.id, room)
    assert quota.fits(session, mailbox.id, 100) and not quota.fits(session, mailbox.id, 101)
    assert not quota.reserve(session, mailbox.id, 101) and quota.reserve(session, mailbox.id, 100)
    assert not quota.fits(session, mailbox.id, 1)


# --- reservations journaled until the write is on disk (issue 11, item 11) -----------------


def reservations(session: Session) -> list[QuotaReservation]:
    session.expire_all()
    return list(session.scalars(select(QuotaReservation)))


def used(session: Session, mailbox_id: int) -> int:
    session.expire_all()
    return session.scalar(select(Mailbox.used_bytes).where(Mailbox.id == mailbox_id))


def test_a_hold_is_journaled_until_confirmed_or_cancelled(session):
    mailbox = make_mailbox(session, quota_gb=8)
    held = quota.hold(session, mailbox.id, 1000)
    assert held is not None and held.usage.used_bytes == 1000
    [row] = reservations(session)
    assert (row.mailbox_id, row.nbytes, row.pid) == (mailbox.id, 1000, os.getpid())
    held.confirm()
    assert reservations(session) == [] and used(session, mailbox.id) == 1000
    again = quota.hold(session, mailbox.id, 500)
    assert again is not None
    again.cancel()
    assert reservations(session) == [] and used(session, mailbox.id) == 1000


def test_a_confirmed_write_needs_no_commit_of_its_own(session):
    """The journal row of a write on disk goes with the next reservation's commit (one commit
    per APPEND), or with the timer when no write follows."""
    mailbox = make_mailbox(session, quota_gb=8)
    engine = session.get_bind()
    first = quota.hold(session, mailbox.id, 1000)
    assert first is not None
    first.confirm_with_warning_level()
    assert quota._confirmed.pending(engine) == [first.reservation_id]
    assert [row.id for row in reservations(session)] == [first.reservation_id]
    second = quota.hold(session, mailbox.id, 500)  # its commit takes the first row along
    assert second is not None
    assert [row.id for row in reservations(session)] == [second.reservation_id]
    second.confirm_with_warning_level()
    assert wait_until(lambda: reservations(session) == [])  # the timer's own commit
    assert quota._confirmed.pending(engine) == []
    assert used(session, mailbox.id) == 1500


def test_a_confirmed_write_that_crosses_a_warning_level_commits_at_once(session):
    mailbox = make_mailbox(session, quota_gb=8)
    held = quota.hold(session, mailbox.id, int(8 * GIB * 0.85))
    assert held is not None
    held.confirm_with_warning_level()
    assert reservations(session) == []
    session.expire_all()
    assert session.get(Mailbox, mailbox.id).quota_warned_percent == 80


def test_a_failed_reservation_keeps_the_confirmed_rows_for_the_next(session, monkeypatch):
    mailbox = make_mailbox(session, quota_gb=8)
    engine = session.get_bind()
    held = quota.hold(session, mailbox.id, 100)
    assert held is not None
    held.confirm_with_warning_level()
    real_commit = Session.commit

    def failing_commit(self: Session) -> None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(Session, "commit", failing_commit)
    with pytest.raises(RuntimeError):
        quota.hold(session, mailbox.id, 100)
    monkeypatch.setattr(Session, "commit", real_commit)
    session.rollback()
    assert quota._confirmed.pending(engine) == [held.reservation_id]
    quota._confirmed.flush()
    assert reservations(session) == []


def test_a_hold_that_does_not_fit_changes_nothing(session):
    mailbox = make_mailbox(session, quota_gb=8)
    assert quota.hold(session, mailbox.id, 8 * GIB + 1) is None
    assert reservations(session) == [] and used(session, mailbox.id) == 0
    forced = quota.hold(session, mailbox.id, 8 * GIB + 1, force=True)
    assert forced is not None and used(session, mailbox.id) == 8 * GIB + 1


def test_a_hold_that_does_not_fit_keeps_the_confirmed_rows_for_the_next(session):
    mailbox = make_mailbox(session, quota_gb=8)
    engine = session.get_bind()
    held = quota.hold(session, mailbox.id, 100)
    assert held is not None
    held.confirm_with_warning_level()
    assert quota.hold(session, mailbox.id, 8 * GIB) is None
    assert quota._confirmed.pending(engine) == [held.reservation_id]
    assert quota.hold(session, mailbox.id, 100) is not None  # takes the row along
    assert quota._confirmed.pending(engine) == []
    assert held.reservation_id not in [row.id for row in reservations(session)]


def test_usage_statements_see_what_the_session_has_not_flushed_yet(session):
    """The holds run prebuilt Core statements on the session's connection; pending ORM
    changes are flushed first, as the ORM's own execute would."""
    mailbox = make_mailbox(session, quota_gb=8)
    mailbox.quota_bytes = 10 * GIB  # not flushed
    assert quota.reserve(session, mailbox.id, 9 * GIB) is not None
    mailbox.used_bytes = GIB  # not flushed either (the ORM object still says 0)
    held = quota.hold(session, mailbox.id, 9 * GIB)
    assert held is not None and held.usage.used_bytes == 10 * GIB
    session.expire_all()
    assert used(session, mailbox.id) == 10 * GIB


def journal(session: Session, mailbox_id: int, nbytes: int, **owner: object) -> None:
    """A reservation row as another process would have left it."""
    values: dict[str, object] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": "",
        "created_at": now(),
    }
    values.update(owner)
    session.add(QuotaReservation(mailbox_id=mailbox_id, nbytes=nbytes, **values))
    quota.force_reserve(session, mailbox_id, nbytes)
    session.commit()


def test_settling_recounts_only_the_mailboxes_of_dead_writers(app, session):
    dead = make_mailbox(session, "dead@example.test")
    alive = make_mailbox(session, "alive@example.test")
    untouched = make_mailbox(session, "untouched@example.test")
    session.execute(update(Mailbox).where(Mailbox.id == untouched.id).values(used_bytes=777))
    session.commit()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that is gone now
    journal(session, dead.id, 4000, pid=child.pid)
    journal(session, alive.id, 3000)  # this very process: alive
    journal(session, alive.id, 2000, host="other-host.test")  # young, on another host
    journal(session, alive.id, 1000, host="other-host.test", created_at=now() - timedelta(hours=2))
    assert quota.settle_interrupted(app) == 2
    assert used(session, dead.id) == 0  # nothing of it reached the disk
    # The live reservations keep their bytes; the stale one from the other host is settled.
    assert used(session, alive.id) == 5000
    assert used(session, untouched.id) == 777  # never read from disk: not interrupted
    assert sorted(row.nbytes for row in reservations(session)) == [2000, 3000]
    events = session.scalars(select(AuditEvent).where(AuditEvent.action == "quota.settle")).all()
    assert sorted(event.target for event in events) == [
        "alive@example.test",
        "dead@example.test",
    ]


def test_two_settlers_at_once_correct_the_usage_once(app, session, monkeypatch):
    """A second settle (another process) finishes while the first scans the disk: the first
    finds the dead rows claimed and leaves the usage alone, rather than subtract them again."""
    from provider.mailstore import Maildir

    mailbox = make_mailbox(session)
    mail_store().open(mailbox.address).folder("INBOX").deliver(b"Subject: kept\r\n\r\nbody\r\n")
    on_disk = mail_store().open(mailbox.address).usage_bytes()
    session.execute(update(Mailbox).where(Mailbox.id == mailbox.id).values(used_bytes=on_disk))
    session.commit()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    journal(session, mailbox.id, 100, pid=child.pid)
    real_usage = Maildir.usage_bytes
    raced = []

    def usage_while_another_settles(self: Maildir) -> int:
        if not raced:
            raced.append(True)
            assert quota.settle_interrupted(app) == 1  # the other settler, to the end
        return real_usage(self)

    monkeypatch.setattr(Maildir, "usage_bytes", usage_while_another_settles)
    assert quota.settle_interrupted(app) == 0
    assert used(session, mailbox.id) == on_disk  # not on_disk - 100
    assert reservations(session) == []


def test_a_dead_writer_not_yet_reaped_is_settled(app, session):
    mailbox = make_mailbox(session)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: quota._process_start(child.pid) is None)  # a zombie until waited
    journal(session, mailbox.id, 100, pid=child.pid, process_start="x")
    assert quota.settle_interrupted(app) == 1
    child.wait()
    assert used(session, mailbox.id) == 0


def test_sizes_are_written_one_way_on_the_web_and_in_the_cli() -> None:
    from provider.commands import _size
    from provider.services.quota import format_size
    from provider.web.admin.filters import human_size

    cases = {
        0: "0 bytes",
        1: "1 byte",
        1023: "1023 bytes",
        1024: "1 KB",
        9155: "8.94 KB",
        8 * 1024**3: "8 GB",
        int(12.5 * 1024**2): "12.5 MB",
        5 * 1024**5: "5 PB",
    }
    for nbytes, text in cases.items():
        assert format_size(nbytes) == human_size(nbytes) == _size(nbytes) == text


def test_the_cli_counts_in_words_that_agree() -> None:
    from provider.commands import _count

    assert _count(1, "message") == "1 message"
    assert _count(0, "message") == "0 messages" and _count(2, "message") == "2 messages"


def _traced_statements(session: Session) -> list[str] | None:
    """The SQL the session's SQLite connection runs from now on (None on PostgreSQL)."""
    dbapi_connection = session.connection().connection.dbapi_connection
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return None
    statements: list[str] = []
    dbapi_connection.set_trace_callback(statements.append)
    return statements


@pytest.mark.parametrize("durable", [True, False])
def test_only_a_non_durable_hold_commits_without_an_fsync_and_leaves_the_connection_full(
    session, durable
):
    """IMAP's APPEND, COPY and EXPUNGE move the counter without waiting for the disk (a power
    cut may take that back; the nightly recount repairs it); the connection is FULL again for
    whatever it serves next. Deliveries keep durable holds."""
    mailbox = make_mailbox(session, quota_gb=8)
    statements = _traced_statements(session)
    if statements is None:
        pytest.skip("SQLite only: PostgreSQL commits are not relaxed")
    dbapi_connection = session.connection().connection.dbapi_connection
    held = quota.hold(session, mailbox.id, 1000, durable=durable)
    assert held is not None
    held.confirm()
    levels = [s for s in statements if s.upper().startswith("PRAGMA SYNCHRONOUS")]
    if durable:
        assert levels == []
    else:
        commit = next(i for i, s in enumerate(statements) if s.upper() == "COMMIT")
        relaxed = statements.index("PRAGMA synchronous=NORMAL")
        restored = statements.index("PRAGMA synchronous=2")
        assert relaxed < commit < restored
    dbapi_connection.set_trace_callback(None)
    assert dbapi_connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert used(session, mailbox.id) == 1000 and reservations(session) == []
    quota.release(session, mailbox.id, 1000, durable=False)
    session.commit()
    assert dbapi_connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert used(session, mailbox.id) == 0
