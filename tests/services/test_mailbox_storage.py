"""Mailboxes and their mail on disk: created with the mailbox, removed only after commit."""

from __future__ import annotations

import json

from sqlalchemy import select

from provider.models import AuditEvent, Mailbox
from provider.services import provisioning, quota
from provider.services.storage import mail_store
from tests.conftest import TEST_ACTOR, make_mailbox


def test_new_mailbox_gets_inbox_and_special_folders(session):
    make_mailbox(session, "alice@example.test")
    maildir = mail_store().open("alice@example.test")
    folders = {info.name: info.special_use for info in maildir.folders()}
    assert folders == {
        "INBOX": None,
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
        "Archive": "\\Archive",
    }
    assert maildir.root == mail_store().path_for("alice@example.test")
    assert maildir.root.parts[-3:] == ("example.test", "alice", "Maildir")


def test_deleted_mailbox_loses_its_mail_only_when_committed(session):
    mailbox = make_mailbox(session, "alice@example.test")
    mail_store().open("alice@example.test").folder("INBOX").deliver(b"Subject: x\r\n\r\nhi\r\n")

    provisioning.delete_mailbox(session, mailbox, actor=TEST_ACTOR)
    session.rollback()
    assert mail_store().exists("alice@example.test")

    mailbox = provisioning.get_mailbox(session, "alice@example.test")
    provisioning.delete_mailbox(session, mailbox, actor=TEST_ACTOR)
    assert mail_store().exists("alice@example.test")
    session.commit()
    assert not mail_store().exists("alice@example.test")


def test_recount_repairs_drift_and_is_audited(session, runner):
    make_mailbox(session, "alice@example.test")
    make_mailbox(session, "bob@example.test")
    stored = (
        mail_store().open("alice@example.test").folder("INBOX").deliver(b"Subject: x\r\n\r\nhi\r\n")
    )
    bob = provisioning.get_mailbox(session, "bob@example.test")
    bob.used_bytes = 12345  # drift: counted, but not on disk
    session.commit()

    result = runner.invoke(args=["jobs", "run", "quota-recount", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert sorted(summary["repaired"], key=lambda r: r["address"]) == [
        {"address": "alice@example.test", "recorded_bytes": 0, "disk_bytes": stored.size},
        {"address": "bob@example.test", "recorded_bytes": 12345, "disk_bytes": 0},
    ]
    session.expire_all()
    used = dict(session.execute(select(Mailbox.address, Mailbox.used_bytes)).all())
    assert used == {"alice@example.test": stored.size, "bob@example.test": 0}
    events = session.scalars(select(AuditEvent).where(AuditEvent.action == "quota.repair")).all()
    assert {e.target for e in events} == {"alice@example.test", "bob@example.test"}

    again = json.loads(runner.invoke(args=["jobs", "run", "quota-recount", "--json"]).output)
    assert again["repaired"] == []


def test_recount_rearms_quota_warnings(session):
    mailbox = make_mailbox(session, "alice@example.test")
    mailbox.quota_warned_percent = 95
    session.commit()
    quota.recount_usage(session, mail_store(), actor=TEST_ACTOR)
    session.expire_all()
    assert provisioning.get_mailbox(session, "alice@example.test").quota_warned_percent == 95
    mailbox = provisioning.get_mailbox(session, "alice@example.test")
    mailbox.used_bytes = 1
    session.commit()
    quota.recount_usage(session, mail_store(), actor=TEST_ACTOR)
    session.expire_all()
    assert provisioning.get_mailbox(session, "alice@example.test").quota_warned_percent == 0


def test_deleted_mailbox_loses_its_backups_only_when_committed(session):
    from provider.services import backups

    mailbox = make_mailbox(session)
    mail_store().open(mailbox.address).folder("INBOX").deliver(b"Subject: s\r\n\r\nbody\r\n")
    backups.run_backups(session, [mailbox.address])
    root = backups.store_for(mailbox.address).root
    assert root.is_dir()
    provisioning.delete_mailbox(session, mailbox, actor=TEST_ACTOR)
    session.rollback()
    assert root.is_dir()  # a rolled-back delete keeps them
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == "alice@example.test"))
    provisioning.delete_mailbox(session, mailbox, actor=TEST_ACTOR)
    session.commit()
    assert not root.exists()
