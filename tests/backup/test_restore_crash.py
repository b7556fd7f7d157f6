"""A restore killed (SIGKILL) in the middle of writing leaves no over-counted quota behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

import pytest
from sqlalchemy import func, select

from provider.errors import QuotaExceeded
from provider.models import Mailbox, QuotaReservation
from provider.services import backups, delivery, quota
from provider.services.storage import mail_store
from tests.backup.helpers import bodies, deliver, maildir, message
from tests.conftest import TEST_ACTOR, make_mailbox


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["QUOTA_MIN_GB"] = 0.000001
    app_config["QUOTA_WARNING_PERCENTS"] = ""
    return app_config


def _restore_killed_mid_write(
    config: dict[str, Any], address: str, snapshot_id: str, channel: Connection
) -> None:
    """Child process: restore the snapshot, stalling (forever) half-way through writing the
    fifth message of the batch, so the parent can SIGKILL it there."""
    from provider import create_app
    from provider.extensions import db
    from provider.mailstore import diskio

    real_write = diskio.write_all
    calls = 0

    def stall_on_the_fifth(fd: int, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls < 5:
            real_write(fd, data)
            return
        real_write(fd, data[: len(data) // 2])
        channel.send("stalled")
        threading.Event().wait()

    diskio.write_all = stall_on_the_fifth
    app = create_app(config)
    with app.app_context():
        backups.restore(db.session, address, snapshot_id, actor=TEST_ACTOR)
    channel.send("finished")  # pragma: no cover - the parent kills us before


def used(session, mailbox: Mailbox) -> int:
    session.expire_all()
    return session.scalar(select(Mailbox.used_bytes).where(Mailbox.id == mailbox.id))


def test_restore_killed_mid_write_is_settled_and_can_run_again(app, app_config, session):
    mailbox = make_mailbox(session, quota_gb=0.00001)
    uids = deliver(session, mailbox, range(10))
    snapshot_id = backups.run_backups(session, [mailbox.address]).mailboxes[0].snapshot
    maildir(mailbox).folder("INBOX").expunge(uids)
    total = sum(len(message(n)) for n in range(10))
    quota.release(session, mailbox.id, total)
    # Room for the ten messages and one more delivery, not more.
    mailbox.quota_bytes = total + 400
    session.commit()

    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_restore_killed_mid_write,
        args=(app_config, mailbox.address, snapshot_id, child_end),
    )
    child.start()
    try:
        assert parent_end.poll(60) and parent_end.recv() == "stalled"
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
            child.join(30)
    assert child.exitcode == -signal.SIGKILL

    # The defect: the batch's bytes stay reserved although nothing of it landed, so the
    # empty mailbox refuses a message that fits it easily.
    assert bodies(mailbox) == []
    assert used(session, mailbox) == total
    destination = delivery.resolve(session, mailbox.address)
    with pytest.raises(QuotaExceeded):
        delivery.store_message(session, mail_store(), destination, message(99, body="x" * 1000))

    assert quota.settle_interrupted(app) == 1
    assert used(session, mailbox) == 0 == maildir(mailbox).usage_bytes()
    assert session.scalar(select(func.count()).select_from(QuotaReservation)) == 0

    report = backups.restore(session, mailbox.address, snapshot_id, actor=TEST_ACTOR)
    assert (report.restored, report.shortfall) == (10, 0)
    delivery.store_message(session, mail_store(), destination, message(100))
    assert len(bodies(mailbox)) == 11
    assert used(session, mailbox) == maildir(mailbox).usage_bytes()
