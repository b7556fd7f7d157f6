"""Folder names: modified UTF-7 on disk (RFC 3501 §5.1.3) and the names the store refuses."""

from __future__ import annotations

import pytest

from provider.mailstore import InvalidFolderName, MailStore
from provider.mailstore.names import (
    decode_mutf7,
    disk_name,
    encode_mutf7,
    folder_name,
    normalize_folder_name,
)


@pytest.fixture
def maildir(tmp_path):
    return MailStore(tmp_path / "mail").create("alice@example.com")


def test_rfc3501_example_encodes_and_decodes():
    # The example of RFC 3501 §5.1.3.
    name = "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
    assert encode_mutf7(name) == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert decode_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == name


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("Entwürfe", "Entw&APw-rfe"),
        ("A & B", "A &- B"),
        ("Gesendete Objekte", "Gesendete Objekte"),
        ("\U0001f4e7 Mail", "&2D3c5w- Mail"),  # outside the BMP: a UTF-16 surrogate pair
        ("日本語", "&ZeVnLIqe-"),
    ],
)
def test_modified_utf7_round_trips(text, encoded):
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


@pytest.mark.parametrize(
    "bad",
    ["&AGE-", "&ZeVnLIqe", "&Ze!nLIqe-", "caf\u00e9", "&ZeVnLIqe-&AOk-"],
    ids=["encoded-ascii", "unterminated", "bad-base64", "raw-8bit", "split-run"],
)
def test_non_canonical_modified_utf7_is_refused(bad):
    with pytest.raises(ValueError):
        decode_mutf7(bad)


def test_nested_folders_use_dots_on_disk():
    assert disk_name("INBOX") == ""
    assert disk_name("Sent") == ".Sent"
    assert disk_name("Projects/2024") == ".Projects.2024"
    assert disk_name("Entwürfe/Alt") == ".Entw&APw-rfe.Alt"
    assert folder_name(".Projects.2024") == "Projects/2024"
    assert folder_name(".Entw&APw-rfe.Alt") == "Entwürfe/Alt"


@pytest.mark.parametrize(
    "directory",
    ["cur", "tmp", ".", "..", "..x", ".a..b", ".x.", ".&AGE-", ".inbox", ".a*b"],
)
def test_directories_that_are_not_folders_are_ignored(directory):
    assert folder_name(directory) is None


def test_inbox_is_case_insensitive(maildir):
    assert normalize_folder_name("inbox") == "INBOX"
    assert normalize_folder_name("Inbox/Sub") == "INBOX/Sub"
    assert maildir.folder("iNbOx").name == "INBOX"
    assert maildir.folder("inbox").path == maildir.root


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a.b", "'.'"),
        ("..", "'.'"),
        ("a/../b", "'.'"),
        ("/Sent", "start or end"),
        ("Sent/", "start or end"),
        ("a//b", "empty level"),
        ("bad\x00name", "control character"),
        ("tab\there", "control character"),
        ("bell\x7f", "control character"),
        ("wild*", "wildcard"),
        ("wild%", "wildcard"),
        ("x" * 256, "longer than 255 bytes"),
        ("ü" * 128, "longer than 255 bytes"),
    ],
)
def test_bad_folder_names_are_refused_with_a_reason(maildir, name, reason):
    with pytest.raises(InvalidFolderName, match=reason):
        maildir.create_folder(name)
    with pytest.raises(InvalidFolderName):
        maildir.folder(name)


def test_longest_allowed_component_is_accepted(maildir):
    folder = maildir.create_folder("x" * 254)
    assert folder.path.name == "." + "x" * 254


def test_name_too_long_once_encoded_is_refused(maildir):
    # 240 UTF-8 bytes, but 480 once each "é" becomes "&AOk-": more than one file name holds.
    with pytest.raises(InvalidFolderName, match="too long"):
        maildir.create_folder("aé" * 80)
