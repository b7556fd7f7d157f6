"""Restore on a full disk (ENOSPC, EDQUOT): a clear one-line error, whole batches, right quota."""

from __future__ import annotations

import errno

import pytest

from provider.errors import ProviderError
from provider.models import Mailbox
from provider.services import quota
from tests.backup.helpers import bodies, deliver, maildir, message
from tests.backup.test_restore import restore, snapshot
from tests.conftest import make_mailbox
from tests.mailstore.diskfull import FailingWrites, leftovers


def used_bytes(session, mailbox: Mailbox) -> int:
    session.expire_all()
    return session.get(Mailbox, mailbox.id).used_bytes


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_restore_on_a_full_disk_stops_with_a_clear_error_and_nothing_half_written(
    session, runner, monkeypatch, code
):
    mailbox = make_mailbox(session)
    uids = deliver(session, mailbox, range(5))
    snapshot_id = snapshot(session, mailbox)
    inbox = maildir(mailbox).folder("INBOX")
    removed = inbox.expunge(uids)
    quota.release(session, mailbox.id, sum(info.size for info in removed))
    session.commit()
    assert used_bytes(session, mailbox) == 0

    failing = FailingWrites(monkeypatch)
    failing.arm(3, code)  # the third message file of the (only) batch
    with pytest.raises(ProviderError, match="not enough disk space; 0 message"):
        restore(session, mailbox, snapshot_id)
    assert failing.failed == 1
    assert bodies(mailbox) == [] and leftovers(inbox.path) == []
    assert used_bytes(session, mailbox) == 0

    failing.arm(1, code)
    result = runner.invoke(args=["backup", "restore", mailbox.address, "--snapshot", snapshot_id])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not enough disk space" in lines[0], result.output
    assert "Free some space and run the restore again" in lines[0]
    failing.disarm()

    # Room again: the restore completes, and the quota matches the disk.
    report = restore(session, mailbox, snapshot_id)
    assert report.restored == 5
    assert sorted(bodies(mailbox)) == sorted(message(n) for n in range(5))
    assert used_bytes(session, mailbox) == maildir(mailbox).usage_bytes()
