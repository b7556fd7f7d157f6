"""Folders: the default special-use set, create (with parents), delete, rename, listing."""

from __future__ import annotations

import os

import pytest

from provider.mailstore import (
    SPECIAL_USE,
    FolderExists,
    FolderNotFound,
    InvalidFolderName,
    MailStore,
)
from tests.mailstore import files_in, sample_message


@pytest.fixture
def maildir(tmp_path):
    return MailStore(tmp_path / "mail").create("alice@example.com")


def test_new_mailbox_has_inbox_and_the_special_use_folders(maildir):
    listed = [(info.name, info.special_use) for info in maildir.folders()]
    assert listed == [
        ("INBOX", None),
        ("Archive", "\\Archive"),
        ("Drafts", "\\Drafts"),
        ("Junk", "\\Junk"),
        ("Sent", "\\Sent"),
        ("Trash", "\\Trash"),
    ]
    assert SPECIAL_USE == {
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
        "Archive": "\\Archive",
    }


def test_folder_directory_is_a_maildir_plus_plus_folder(maildir):
    folder = maildir.create_folder("Projects")
    assert folder.path == maildir.root / ".Projects"
    assert sorted(os.listdir(folder.path)) == [
        "cur",
        "dovecot-uidlist",
        "maildirfolder",
        "new",
        "tmp",
    ]
    assert [info.path for info in maildir.folders() if info.name == "Projects"] == [folder.path]
    assert not [name for name in os.listdir(maildir.root) if name.startswith("CREATING-")]


def test_folders_lists_inbox_first_then_by_name(maildir):
    for name in ("zeta", "Alpha", "Projects/2024", "Ärger"):
        maildir.create_folder(name)
    names = [info.name for info in maildir.folders()]
    assert names[0] == "INBOX"
    assert names[1:] == sorted(names[1:])
    assert {"zeta", "Alpha", "Projects", "Projects/2024", "Ärger"} <= set(names)


def test_create_folder_creates_missing_parents(maildir):
    folder = maildir.create_folder("Clients/ACME/2024")
    assert folder.name == "Clients/ACME/2024"
    assert folder.path.name == ".Clients.ACME.2024"
    for name in ("Clients", "Clients/ACME", "Clients/ACME/2024"):
        assert maildir.folder(name).messages() == []


def test_children_of_inbox_are_stored_as_dotted_inbox_folders(maildir):
    folder = maildir.create_folder("inbox/Receipts")
    assert folder.name == "INBOX/Receipts" and folder.path.name == ".INBOX.Receipts"


def test_creating_an_existing_folder_fails(maildir):
    maildir.create_folder("Projects")
    with pytest.raises(FolderExists):
        maildir.create_folder("Projects")
    with pytest.raises(FolderExists):
        maildir.create_folder("inbox")


def test_unknown_folder_is_not_found(maildir):
    with pytest.raises(FolderNotFound, match="Nope"):
        maildir.folder("Nope")
    with pytest.raises(FolderNotFound):
        maildir.delete_folder("Nope")
    with pytest.raises(FolderNotFound):
        maildir.rename_folder("Nope", "Other")


def test_unicode_folder_is_stored_in_modified_utf7(maildir):
    folder = maildir.create_folder("Entwürfe/Ältere")
    assert folder.path.name == ".Entw&APw-rfe.&AMQ-ltere"
    assert maildir.folder("Entwürfe/Ältere").path == folder.path


def test_delete_folder_returns_its_messages_and_keeps_sub_folders(maildir):
    parent = maildir.create_folder("Projects")
    child = maildir.create_folder("Projects/2024")
    stored = [parent.deliver(sample_message(f"p{n}")) for n in range(3)]
    child.deliver(sample_message("child"))
    removed = maildir.delete_folder("Projects")
    assert [(m.uid, m.size) for m in removed] == [(s.uid, s.size) for s in stored]
    assert not parent.path.exists()
    assert [m.uid for m in maildir.folder("Projects/2024").messages()] == [1]
    assert "Projects" not in [info.name for info in maildir.folders()]
    assert not [n for n in os.listdir(maildir.root) if n.startswith("DELETING-")]


def test_delete_counts_a_message_that_has_no_uid_yet(maildir):
    folder = maildir.create_folder("Projects")
    (folder.path / "new" / "1700000000.M1P1.mx,S=3,W=3").write_bytes(b"x\r\n")
    assert [m.size for m in maildir.delete_folder("Projects")] == [3]


def test_inbox_cannot_be_deleted_or_renamed(maildir):
    with pytest.raises(InvalidFolderName, match="INBOX cannot be deleted"):
        maildir.delete_folder("INBOX")
    with pytest.raises(InvalidFolderName, match="INBOX cannot be renamed"):
        maildir.rename_folder("inbox", "Old mail")
    with pytest.raises(FolderExists):
        maildir.rename_folder("Sent", "INBOX")


def test_rename_moves_sub_folders_and_keeps_uids(maildir):
    maildir.create_folder("Projects/2024/Q1")
    source = maildir.folder("Projects/2024")
    stored = source.deliver(sample_message("kept"), flags=["\\Seen"])
    validity = source.uidvalidity
    maildir.rename_folder("Projects", "Archive/Projects")
    names = [info.name for info in maildir.folders()]
    assert "Projects" not in names and "Projects/2024" not in names
    assert {"Archive/Projects", "Archive/Projects/2024", "Archive/Projects/2024/Q1"} <= set(names)
    moved = maildir.folder("Archive/Projects/2024")
    [info] = moved.messages()
    assert (info.uid, info.basename, info.flags) == (stored.uid, stored.basename, {"\\Seen"})
    assert moved.uidvalidity == validity
    assert moved.read(stored.uid) == sample_message("kept")


def test_rename_creates_missing_parents_of_the_new_name(maildir):
    maildir.create_folder("Old")
    maildir.rename_folder("Old", "Deep/Down/New")
    assert {"Deep", "Deep/Down", "Deep/Down/New"} <= {i.name for i in maildir.folders()}


def test_rename_onto_an_existing_folder_or_into_itself_fails(maildir):
    maildir.create_folder("A/B")
    maildir.create_folder("C")
    with pytest.raises(FolderExists):
        maildir.rename_folder("A", "C")
    with pytest.raises(InvalidFolderName, match="inside itself"):
        maildir.rename_folder("A", "A/B/C")
    maildir.create_folder("D/B")
    maildir.delete_folder("D")  # D/B stays
    with pytest.raises(FolderExists, match="D/B"):
        maildir.rename_folder("A", "D")  # A/B would land on the existing D/B
    assert maildir.folder("A/B")  # nothing moved


def test_usage_bytes_sums_every_folder(maildir):
    sizes = []
    for name in ("INBOX", "Sent", "Trash"):
        sizes.append(maildir.folder(name).deliver(sample_message(name)).size)
    sizes.append(maildir.folder("INBOX").deliver(b"tiny\r\n", flags=["\\Seen"]).size)
    (maildir.root / "cur" / "1700000000.M1P1.other").write_bytes(b"12345")  # no S=: stat
    assert maildir.usage_bytes() == sum(sizes) + 5


def test_tmp_and_control_files_are_not_counted_as_usage(maildir):
    inbox = maildir.folder("INBOX")
    stored = inbox.deliver(sample_message("counted"))
    (inbox.path / "tmp" / "partial").write_bytes(b"x" * 1000)
    assert maildir.usage_bytes() == stored.size
    assert files_in(inbox.path, "tmp") == ["partial"]


def test_delivery_into_a_folder_deleted_meanwhile_fails_cleanly(maildir):
    folder = maildir.create_folder("Gone")
    maildir.delete_folder("Gone")
    with pytest.raises(FolderNotFound):
        folder.deliver(sample_message("late"))
    with pytest.raises(FolderNotFound):
        folder.messages()
    assert not folder.path.exists()


def test_a_symlinked_folder_is_not_followed(tmp_path, maildir):
    outside = tmp_path / "outside"
    for subdir in ("cur", "new", "tmp"):
        (outside / subdir).mkdir(parents=True)
    (maildir.root / ".Evil").symlink_to(outside, target_is_directory=True)
    assert "Evil" not in [info.name for info in maildir.folders()]
    with pytest.raises(FolderNotFound):
        maildir.folder("Evil")
    assert sorted(os.listdir(outside)) == ["cur", "new", "tmp"]
