"""Verify (a flipped byte is named, exit 1), the `provider backup` commands and the job bodies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

from jobs.backup import backup as backup_job
from jobs.backup import backup_verify as backup_verify_job
from provider.services import backups, clock
from tests.backup.helpers import bodies, deliver, maildir
from tests.conftest import make_mailbox


def invoke(runner, *args):
    return runner.invoke(args=list(args))


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines


def test_a_flipped_byte_makes_verify_exit_1_and_name_the_object(runner, session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, range(5))
    first = backups.run_backups(session).mailboxes[0].snapshot
    assert invoke(runner, "backup", "verify").exit_code == 0
    store = backups.store_for(mailbox.address)
    victim = sorted(store.digests())[2]
    path = store.object_path(victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    result = invoke(runner, "backup", "verify", mailbox.address)
    assert result.exit_code == 1
    assert victim in result.output and first in result.output and "damaged" in result.output
    [row] = backups.list_snapshots(session, mailbox.address)
    assert row.status == "damaged"
    # Moved aside: the next snapshot stores the message again under the same name, which
    # makes the older snapshot whole; verify then passes.
    assert victim not in store.digests()
    backups.run_backups(session)
    report = json.loads(invoke(runner, "backup", "verify", "--json").output)
    assert report["ok"] is True
    assert {r.status for r in backups.list_snapshots(session, mailbox.address)} == {"complete"}


def test_verify_names_missing_objects_and_damaged_manifests(runner, session):
    mailbox = make_mailbox(session)
    deliver(session, mailbox, range(3))
    snapshot_id = backups.run_backups(session).mailboxes[0].snapshot
    store = backups.store_for(mailbox.address)
    gone = sorted(store.digests())[0]
    store.remove(gone)
    result = invoke(runner, "backup", "verify", "--json")
    assert result.exit_code == 1
    [box] = json.loads(result.output)["mailboxes"]
    assert box["problems"][0]["digest"] == gone and box["problems"][0]["problem"] == "missing"
    assert box["problems"][0]["snapshots"] == [snapshot_id]

    manifest = store.manifest_path(snapshot_id)
    manifest.write_bytes(manifest.read_bytes()[:-3])
    result = invoke(runner, "backup", "verify")
    assert result.exit_code == 1 and f"damaged manifest {snapshot_id}" in result.output


def test_backup_commands_run_list_and_restore(runner, session):
    mailbox = make_mailbox(session)
    make_mailbox(session, "pop@example.test", protocols="pop3")
    uids = deliver(session, mailbox, range(4))
    with clock.frozen_at(datetime(2026, 11, 1, 2, 0, tzinfo=UTC)):
        result = invoke(runner, "backup", "run", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["snapshots"], summary["skipped_pop3_only"]) == (1, 1)
    with clock.frozen_at(datetime(2026, 11, 1, 3, 0, tzinfo=UTC)):
        text = invoke(runner, "backup", "run", mailbox.address)
    assert text.exit_code == 0 and "1 snapshot(s), 0 failed" in text.output

    listed = json.loads(invoke(runner, "backup", "list", mailbox.address, "--json").output)
    assert len(listed) == 2 and listed[1]["created_at"] == "2026-11-01T02:00:00+00:00"
    assert listed[1]["messages"] == 4 and listed[1]["status"] == "complete"
    plain = invoke(runner, "backup", "list", mailbox.address)
    assert listed[1]["snapshot"] in plain.output and "4 messages" in plain.output

    maildir(mailbox).folder("INBOX").expunge(uids[:2])
    args = ["backup", "restore", mailbox.address, "--snapshot", listed[1]["snapshot"]]
    result = invoke(runner, *args, "--uid", str(uids[0]), "--json")
    assert result.exit_code == 0 and json.loads(result.output)["restored"] == 1
    result = invoke(runner, *args)
    assert result.exit_code == 0 and "restored 1 message(s)" in result.output
    assert "skipped 3 already present" in result.output
    assert len(bodies(mailbox)) == 4


def test_backup_commands_refuse_bad_input_with_one_line(runner, session):
    mailbox = make_mailbox(session)
    make_mailbox(session, "pop@example.test", protocols="pop3")
    one_line_error(invoke(runner, "backup", "run", "pop@example.test"), "POP3 only")
    one_line_error(invoke(runner, "backup", "run", "nobody@example.test"), "does not exist")
    one_line_error(invoke(runner, "backup", "list", "nobody@example.test"), "does not exist")
    restore = ["backup", "restore", mailbox.address, "--snapshot"]
    one_line_error(invoke(runner, *restore, "last-week"), "not a snapshot id")
    one_line_error(invoke(runner, *restore, "20260101T000000Z-000000"), "has no snapshot")
    snapshot_id = backups.run_backups(session).mailboxes[0].snapshot
    one_line_error(invoke(runner, *restore, snapshot_id, "--folder", "Nope"), "no folder")
    one_line_error(invoke(runner, *restore, snapshot_id, "--into", "a//b"), "--into")
    one_line_error(invoke(runner, "backup", "verify", "nobody@example.test"), "does not exist")


def test_the_job_bodies_snapshot_with_retention_and_verify(app, session):
    make_mailbox(session)
    make_mailbox(session, "pop@example.test", protocols="pop3")
    with clock.frozen_at(datetime(2026, 11, 1, 2, 0, tzinfo=UTC)):
        summary = backup_job(app)
    assert (summary["snapshots"], summary["failed"], summary["skipped_pop3_only"]) == (1, 0, 1)
    assert summary["mailboxes"][0]["snapshot"].startswith("20261101T020000Z-")
    report = backup_verify_job(app)
    assert report["ok"] is True and len(report["mailboxes"]) == 1


def test_a_snapshot_killed_half_way_is_never_listed(app, app_config, session):
    """RELIABILITY B1: kill -9 in the middle of a snapshot; nothing is listed or restorable."""
    mailbox = make_mailbox(session)
    deliver(session, mailbox, range(20))
    script = textwrap.dedent(
        """
        import json, os, signal, sys
        from provider import create_app
        from provider.extensions import db
        from provider.mailstore import Folder
        from provider.services import backups
        import provider.backup.snapshot
        provider.backup.snapshot.BATCH = 5  # objects are stored five at a time
        app = create_app(json.loads(sys.argv[1]))
        real_read, reads = Folder.read, [0]
        def read(self, uid):
            reads[0] += 1
            if reads[0] == 10:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_read(self, uid)
        Folder.read = read
        with app.app_context():
            backups.run_backups(db.session, [sys.argv[2]])
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(app_config), mailbox.address],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    store = backups.store_for(mailbox.address)
    assert store.digests()  # it got some way
    assert store.snapshot_ids() == [] and backups.list_snapshots(session, mailbox.address) == []
    run = backups.run_backups(session).mailboxes[0]
    assert run.error is None and run.messages == 20
    assert len(backups.list_snapshots(session, mailbox.address)) == 1


def test_backup_list_says_why_a_mailbox_has_no_snapshots(runner, session):
    mailbox = make_mailbox(session)
    pop = make_mailbox(session, "pop@example.test", protocols="pop3")
    result = invoke(runner, "backup", "list", pop.address)
    assert result.exit_code == 0
    assert result.output.strip() == (
        "pop@example.test uses POP3 only: its mail leaves the server, so no snapshot is taken"
    )
    assert json.loads(invoke(runner, "backup", "list", pop.address, "--json").output) == []
    result = invoke(runner, "backup", "list", mailbox.address)
    assert result.exit_code == 0
    assert "no snapshots yet" in result.output
    assert f"provider backup run {mailbox.address}" in result.output
    # Snapshots from its IMAP days are listed, with the reason no new one comes.
    snapshot_id = backups.run_backups(session, [mailbox.address]).mailboxes[0].snapshot
    from provider.services import provisioning
    from tests.conftest import TEST_ACTOR

    provisioning.update_mailbox(session, mailbox, actor=TEST_ACTOR, protocols="pop3")
    session.commit()
    lines = invoke(runner, "backup", "list", mailbox.address).output.splitlines()
    assert lines[0].startswith(snapshot_id)
    assert lines[1].endswith("no snapshot is taken (those above were taken while it used IMAP)")
