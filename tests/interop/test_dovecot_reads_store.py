"""Dovecot serves a mailbox this store wrote, unchanged: UIDVALIDITY, UIDs, flags, keywords, bodies.

Runs the real Dovecot (Debian package dovecot-imapd) as a subprocess on a free loopback port,
configured by bench/dovecot.py (the same harness the IMAP benchmark and the sync-client tests
use; its `write_config` documents every setting and why). Skipped when Dovecot cannot run here,
unless PROVIDER_REQUIRE_DOVECOT=1 (CI), then it fails.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.dovecot import DovecotServer, make_work_dir, unavailable_reason
from bench.dovecot import running_dovecot as serve_store
from provider.mailstore import MailStore, forget_cached_state
from provider.mailstore.maildir import virtual_size
from provider.mailstore.uidlist import UidlistFile
from tests.mailstore import sample_message

ADDRESS = "alice@example.com"
PASSWORD = "dovecot test secret"


@pytest.fixture
def work() -> Iterator[Path]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("PROVIDER_REQUIRE_DOVECOT") == "1":
            pytest.fail(f"{reason}, and PROVIDER_REQUIRE_DOVECOT=1")
        pytest.skip(reason)
    # Not tmp_path: Dovecot's unprivileged processes must be able to reach these files.
    path = make_work_dir("mailstore-dovecot-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_dovecot(work: Path, store: MailStore) -> Iterator[DovecotServer]:
    """Dovecot serving ADDRESS from `store`; its config, log and index files in work/dovecot."""
    dovecot_work = work / "dovecot"
    dovecot_work.mkdir(mode=0o755)
    with serve_store(store.root, {ADDRESS: PASSWORD}, work=dovecot_work) as server:
        yield server


def connect(server: DovecotServer) -> imaplib.IMAP4:
    client = imaplib.IMAP4(server.host, server.port, timeout=10)
    client.login(ADDRESS, PASSWORD)
    return client


FETCH_ITEM = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\) RFC822\.SIZE (\d+)")


def fetch_all(client: imaplib.IMAP4, folder: str) -> tuple[int, int, dict[int, dict]]:
    """EXAMINE a folder; its UIDVALIDITY, UIDNEXT and {uid: flags, size, body}."""
    status, data = client.status(quote(folder), "(UIDVALIDITY UIDNEXT MESSAGES)")
    assert status == "OK", data
    values = dict(re.findall(rb"(UIDVALIDITY|UIDNEXT|MESSAGES) (\d+)", data[0]))
    status, data = client.select(quote(folder), readonly=True)
    assert status == "OK", data
    messages: dict[int, dict] = {}
    if int(values[b"MESSAGES"]):
        status, data = client.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[])")
        assert status == "OK", data
        for item in data:
            if not isinstance(item, tuple):
                continue
            match = FETCH_ITEM.search(item[0])
            assert match is not None, item[0]
            flags = {f for f in match.group(2).decode().split() if f != "\\Recent"}
            messages[int(match.group(1))] = {
                "flags": flags,
                "size": int(match.group(3)),
                "body": item[1],
            }
    client.close()
    return int(values[b"UIDVALIDITY"]), int(values[b"UIDNEXT"]), messages


def quote(folder: str) -> str:
    from provider.mailstore.names import encode_mutf7

    return '"' + encode_mutf7(folder).replace("\\", "\\\\").replace('"', '\\"') + '"'


def uidlist_records(folder_path: Path) -> tuple[int, dict[int, str]]:
    uidlist = UidlistFile(folder_path / "dovecot-uidlist")
    uidlist.refresh(locked=True)
    return uidlist.uidvalidity, {uid: r.basename for uid, r in uidlist.records.items()}


def build_mailbox(store: MailStore) -> dict[str, dict[int, dict]]:
    """Messages in INBOX, a sub-folder and a non-ASCII folder, with flags, keywords and one
    expunged; returns what each folder should show: {folder: {uid: flags, size, body}}."""
    maildir = store.create(ADDRESS)
    maildir.create_folder("Projects/2024")
    maildir.create_folder("Entwürfe")
    plan = {
        "INBOX": [
            ((), ()),
            (("\\Seen",), ("$Forwarded",)),
            (("\\Flagged", "\\Answered"), ("Work", "Important")),
            (("\\Seen",), ()),  # expunged below
            (("\\Draft", "\\Deleted"), ()),
            ((), ("Work",)),
        ],
        "Projects/2024": [(("\\Seen",), ("Work",)), ((), ())],
        "Entwürfe": [(("\\Draft",), ())],
    }
    expected: dict[str, dict[int, dict]] = {}
    for name, messages in plan.items():
        folder = maildir.folder(name)
        expected[name] = {}
        for n, (flags, keywords) in enumerate(messages):
            data = sample_message(f"{name}-{n}", body_lines=n + 2)
            stored = folder.deliver(
                data, flags=flags, keywords=keywords, internal_date=1_700_000_000 + n
            )
            expected[name][stored.uid] = {
                "flags": set(flags) | set(keywords),
                "size": virtual_size(data),
                "body": data,
            }
    inbox = maildir.folder("INBOX")
    inbox.expunge([4])
    del expected["INBOX"][4]
    inbox.set_flags(6, ["\\Seen"], ["Work", "Later"])  # a flag change after delivery
    expected["INBOX"][6]["flags"] = {"\\Seen", "Work", "Later"}
    return expected


def test_dovecot_serves_the_store_unchanged(work):
    store = MailStore(work / "mail")
    expected = build_mailbox(store)
    maildir = store.open(ADDRESS)
    ours = {name: maildir.folder(name) for name in expected}
    before = {name: uidlist_records(folder.path) for name, folder in ours.items()}
    with running_dovecot(work, store) as dovecot:
        client = connect(dovecot)
        status, listed = client.list('""', "*")
        assert status == "OK"
        names = {}
        for line in listed:
            match = re.match(rb'\(([^)]*)\) "/" "?(.*?)"?$', line)
            assert match is not None, line
            names[match.group(2).decode()] = match.group(1).decode()
        assert {"INBOX", "Projects", "Projects/2024", "Entw&APw-rfe"} <= set(names)
        for role in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            assert f"\\{role}" in names[role]
        for name, folder in ours.items():
            uidvalidity, uidnext, messages = fetch_all(client, name)
            assert uidvalidity == folder.uidvalidity, name
            assert uidnext == folder.uidnext, name
            assert messages == expected[name], name
        client.logout()
    assert dovecot.log_problems() == []
    forget_cached_state()
    after_maildir = MailStore(store.root).open(ADDRESS)
    for name, folder in ours.items():
        # Dovecot took our uidlist as it was: nothing renumbered, same UIDVALIDITY.
        assert uidlist_records(folder.path) == before[name], name
        again = after_maildir.folder(name)
        assert [m.uid for m in again.messages()] == sorted(expected[name]), name
        assert again.uidvalidity == folder.uidvalidity


def test_store_reads_back_what_dovecot_changed(work):
    store = MailStore(work / "mail")
    expected = build_mailbox(store)
    inbox_before = store.open(ADDRESS).folder("INBOX")
    highest_validity = max(
        store.open(ADDRESS).folder(info.name).uidvalidity for info in store.open(ADDRESS).folders()
    )
    appended = sample_message("appended-by-dovecot")
    with running_dovecot(work, store) as dovecot:
        client = connect(dovecot)
        assert client.select("INBOX")[0] == "OK"
        assert client.uid("STORE", "1", "+FLAGS", "(\\Seen $Label1)")[0] == "OK"
        assert client.uid("STORE", "2", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert client.expunge()[0] == "OK"
        status, data = client.append("INBOX", "(\\Flagged)", None, appended)
        assert status == "OK", data
        appended_uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        assert client.create("FromDovecot")[0] == "OK"
        status, data = client.status("FromDovecot", "(UIDVALIDITY)")
        dovecot_validity = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
        client.logout()
    assert dovecot.log_problems() == []
    forget_cached_state()
    maildir = MailStore(store.root).open(ADDRESS)
    inbox = maildir.folder("INBOX")
    messages = {m.uid: m for m in inbox.messages()}
    assert inbox.uidvalidity == inbox_before.uidvalidity
    # EXPUNGE removed 2 (flagged just now) and 5 (delivered with \Deleted).
    assert set(messages) == (set(expected["INBOX"]) - {2, 5}) | {appended_uid}
    assert messages[1].flags == {"\\Seen"} and messages[1].keywords == {"$Label1"}
    assert messages[appended_uid].flags == {"\\Flagged"}
    # Dovecot stores what it saves with bare LF (mail_save_crlf = no by default); its W= is the
    # CRLF size, which IMAP reports. read() returns the file as stored.
    assert inbox.read(appended_uid) == appended.replace(b"\r\n", b"\n")
    assert messages[appended_uid].size == len(appended.replace(b"\r\n", b"\n"))
    assert f",W={len(appended)}" in messages[appended_uid].basename
    assert appended_uid == max(expected["INBOX"]) + 1
    # Dovecot and the store share the UIDVALIDITY counter (dovecot-uidvalidity).
    assert dovecot_validity > highest_validity
    assert maildir.create_folder("AfterDovecot").uidvalidity > dovecot_validity
    assert "FromDovecot" in [info.name for info in maildir.folders()]
    assert inbox.deliver(sample_message("ours again")).uid == appended_uid + 1
