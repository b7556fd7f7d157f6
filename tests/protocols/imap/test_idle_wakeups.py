"""IDLE is woken by inotify when anyone changes the folder, not by its poll, and the wake-ups
neither feed themselves nor outlive the sessions."""

from __future__ import annotations

import imaplib
import time
from typing import Any

import pytest

from provider.protocols.imap import wakeups
from provider.protocols.imap.session import ImapSession
from provider.services.storage import mail_store
from tests.conftest import wait_until
from tests.protocols.imap.test_session import MESSAGE, logged_in, make_mailbox


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    # A poll this slow would fail every deadline below: only inotify can wake the sessions.
    app_config.update(IMAP_IDLE_POLL_SECONDS=60)
    return app_config


def idle(client: imaplib.IMAP4) -> bytes:
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    return tag


def done(client: imaplib.IMAP4, tag: bytes) -> None:
    client.send(b"DONE\r\n")
    assert wait_until(lambda: client.readline().startswith(tag + b" OK"), timeout=5)


def test_idle_is_woken_at_once_by_deliveries_flags_and_expunges(session, imap, monkeypatch):
    make_mailbox(session)
    syncs: list[float] = []
    original = ImapSession.sync_selected

    async def counted(self: ImapSession, allow_expunge: bool = True) -> None:
        syncs.append(time.monotonic())
        await original(self, allow_expunge)

    monkeypatch.setattr(ImapSession, "sync_selected", counted)
    idler, writer = logged_in(imap), logged_in(imap)
    idler.select("INBOX")
    tag = idle(idler)
    idler.sock.settimeout(5)
    started = time.monotonic()
    mail_store().open("alice@example.test").folder("INBOX").deliver(MESSAGE)
    assert idler.readline() == b"* 1 EXISTS\r\n"
    assert idler.readline() == b"* 1 RECENT\r\n"
    assert time.monotonic() - started < 2
    writer.select("INBOX")
    writer.store("1", "+FLAGS", "(\\Flagged)")
    line = idler.readline()
    assert line.startswith(b"* 1 FETCH") and b"\\Flagged" in line
    writer.store("1", "+FLAGS", "(\\Deleted)")
    writer.expunge()
    assert wait_until(lambda: idler.readline() == b"* 1 EXPUNGE\r\n", timeout=5)
    # The session's own look (claiming \Recent writes a file in the folder) does not wake it
    # again and again: once things are quiet, so is it.
    quiet_from = len(syncs)
    time.sleep(1.0)  # a window to count in, not a wait for something to happen
    assert len(syncs) - quiet_from <= 3
    done(idler, tag)
    assert not wakeups._WATCHERS  # the last IDLE session closed the watcher
    idler.logout()
    writer.logout()


def test_many_idle_sessions_share_one_watcher_and_each_is_woken(session, imap):
    make_mailbox(session)
    store = mail_store().open("alice@example.test")
    store.create_folder("Other")
    clients = [logged_in(imap) for _ in range(4)]
    tags = []
    for n, client in enumerate(clients):
        client.select("INBOX" if n % 2 == 0 else "Other")
        tags.append(idle(client))
        client.sock.settimeout(5)
    assert wait_until(lambda: len(wakeups._WATCHERS) == 1)
    [watcher] = wakeups._WATCHERS.values()
    assert wait_until(lambda: watcher.subscribed() == 4)
    assert len(watcher._by_wd) == 6  # three per folder, not per session
    store.folder("Other").deliver(MESSAGE)
    assert clients[1].readline() == b"* 1 EXISTS\r\n"
    assert clients[3].readline() == b"* 1 EXISTS\r\n"
    store.folder("INBOX").deliver(MESSAGE)
    assert clients[0].readline() == b"* 1 EXISTS\r\n"
    assert clients[2].readline() == b"* 1 EXISTS\r\n"
    for client, tag in zip(clients, tags, strict=True):
        done(client, tag)
        client.logout()
    assert wait_until(lambda: not wakeups._WATCHERS)


def test_a_folder_deleted_under_an_idle_session_ends_it_cleanly(session, imap):
    make_mailbox(session)
    mail_store().open("alice@example.test").create_folder("Doomed")
    idler, other = logged_in(imap), logged_in(imap)
    idler.select("Doomed")
    idle(idler)
    idler.sock.settimeout(5)
    assert other.delete("Doomed")[0] == "OK"
    assert idler.readline().startswith(b"* BYE")
    other.logout()
    idler.shutdown()
    assert wait_until(lambda: not wakeups._WATCHERS)
