"""MailStore: where mailboxes live, creating, opening and removing them, and path safety."""

from __future__ import annotations

import os

import pytest

from provider.mailstore import (
    InvalidAddress,
    MailboxMissing,
    MailStore,
)
from tests.mailstore import sample_message


@pytest.fixture
def store(tmp_path):
    return MailStore(tmp_path / "mail")


def snapshot(path) -> set[str]:
    return {
        os.path.join(root, name) for root, dirs, files in os.walk(path) for name in dirs + files
    }


def test_mailbox_lives_under_domain_and_local_part(store):
    path = store.path_for("Alice.Smith@Example.COM")
    assert path == store.root / "example.com" / "alice.smith" / "Maildir"
    maildir = store.create("alice.smith@example.com")
    assert maildir.root == path
    assert {"cur", "new", "tmp", "dovecot-uidlist"} <= set(os.listdir(path))


def test_create_is_idempotent_and_keeps_mail(store):
    stored = store.create("alice@example.com").folder("INBOX").deliver(sample_message("kept"))
    again = store.create("alice@example.com")
    assert [m.uid for m in again.folder("INBOX").messages()] == [stored.uid]
    assert [info.name for info in again.folders()].count("Sent") == 1


def test_open_and_exists(store):
    assert not store.exists("alice@example.com")
    with pytest.raises(MailboxMissing, match=r"alice@example\.com"):
        store.open("alice@example.com")
    store.create("alice@example.com")
    assert store.exists("ALICE@example.com")
    assert store.open("alice@example.com").root == store.path_for("alice@example.com")


def test_remove_deletes_one_mailbox_and_nothing_else(store):
    store.create("alice@example.com").folder("INBOX").deliver(sample_message("a"))
    bob = store.create("bob@example.com")
    bob.folder("INBOX").deliver(sample_message("b"))
    store.remove("alice@example.com")
    assert not store.exists("alice@example.com")
    assert not (store.root / "example.com" / "alice").exists()
    assert os.listdir(store.root / "example.com") == ["bob"]
    assert len(bob.folder("INBOX").messages()) == 1
    store.remove("alice@example.com")  # again: nothing to do


def test_removed_and_recreated_mailbox_starts_empty(store):
    store.create("alice@example.com").folder("INBOX").deliver(sample_message("old"))
    store.remove("alice@example.com")
    inbox = store.create("alice@example.com").folder("INBOX")
    assert inbox.messages() == [] and inbox.uidnext == 1


@pytest.mark.parametrize(
    "address",
    [
        "../x@example.com",
        "..@example.com",
        "a/b@example.com",
        "a\\b@example.com",
        "a\x00b@example.com",
        ".hidden@example.com",
        "a..b@example.com",
        "alice@../../etc",
        "alice@example.com/..",
        "alice@example..com",
        "alice@.example.com",
        "alice@localhost",
        "alice@exa mple.com",
        "@example.com",
        "alice@",
        "alice",
        "",
        "alice@example.com\n",
        "x" * 65 + "@example.com",
    ],
)
def test_unsafe_addresses_are_refused_and_nothing_is_touched(tmp_path, store, address):
    before = snapshot(tmp_path)
    for call in (store.path_for, store.create, store.open, store.exists, store.remove):
        with pytest.raises(InvalidAddress):
            call(address)
    assert snapshot(tmp_path) == before


def test_a_symlink_out_of_the_store_is_not_followed(tmp_path, store):
    outside = tmp_path / "outside"
    outside.mkdir()
    store.root.mkdir(parents=True)
    (store.root / "evil.example").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidAddress, match="outside"):
        store.create("alice@evil.example")
    assert os.listdir(outside) == []


def test_folder_names_cannot_reach_outside_the_mailbox(tmp_path, store):
    maildir = store.create("alice@example.com")
    before = snapshot(tmp_path)
    for name in ("../../x", "a/../../b", "..", "/etc", "a\x00b"):
        with pytest.raises(ValueError):
            maildir.create_folder(name)
    assert snapshot(tmp_path) == before


def _tree(path) -> list[tuple[str, int, str | None]]:
    """Every entry under `path`: name (counter values as X), mode, and a file's text with the
    values that differ by design (UIDVALIDITY, GUID, the counter) as X."""
    import re

    entries = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            text = None
            if name in files:
                with open(full) as file:
                    text = re.sub(r"V\d+|G[0-9a-f]{32}|^[0-9a-f]{8}$", "X", file.read())
            relative = re.sub(r"uidvalidity\.[0-9a-f]{8}$", "uidvalidity.X", name)
            place = os.path.join(os.path.relpath(root, path), relative)
            entries.append((place, os.lstat(full).st_mode, text))
    return sorted(entries)


def test_create_unsynced_writes_the_tree_create_makes(store):
    store.create("made@example.com")
    store.create_unsynced("fast@example.com")
    made = store.path_for("made@example.com").parent
    fast = store.path_for("fast@example.com").parent
    assert _tree(fast) == _tree(made)
    assert sorted(os.listdir(fast)) == ["Maildir"]  # no staging directory left behind
    maildir = store.open("fast@example.com")
    names = [info.name for info in maildir.folders()]
    assert names == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    # The UIDVALIDITY counter goes on from the values written: a new folder gets a higher one.
    highest = max(maildir.folder(name).uidvalidity for name in names)
    assert maildir.create_folder("Projects").uidvalidity > highest
    stored = maildir.folder("Sent").deliver(sample_message("sent"))
    assert [m.uid for m in maildir.folder("Sent").messages()] == [stored.uid] == [1]


def test_create_unsynced_completes_what_is_there_and_keeps_mail(store):
    stored = store.create("alice@example.com").folder("INBOX").deliver(sample_message("kept"))
    store.create_unsynced("alice@example.com")
    assert [m.uid for m in store.open("alice@example.com").folder("INBOX").messages()] == [
        stored.uid
    ]
    half = store.path_for("half@example.com")
    (half / "new").mkdir(parents=True)
    store.create_unsynced("half@example.com")
    assert len(store.open("half@example.com").folders()) == 6


def test_create_unsynced_that_fails_leaves_nothing(store, monkeypatch):
    real_mkdir = os.mkdir

    def failing_mkdir(path, *args, **kwargs):
        if str(path).endswith(os.path.join(".Trash", "tmp")):
            raise OSError(28, "No space left on device")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", failing_mkdir)
    with pytest.raises(OSError, match="No space"):
        store.create_unsynced("alice@example.com")
    assert not store.exists("alice@example.com")
    assert os.listdir(store.path_for("alice@example.com").parent) == []
