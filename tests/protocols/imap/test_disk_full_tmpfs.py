"""APPEND and COPY on a really full file system (a 2 MB tmpfs): NO [OVERQUOTA], nothing left;
COPY by hard links needs no room for the bytes."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provider.mailstore import IncomingMessage
from provider.mailstore import maildir as mailstore_maildir
from provider.services.storage import mail_store
from tests.mailstore.diskfull import fill, leftovers, small_tmpfs
from tests.protocols.imap.test_commands import used_bytes
from tests.protocols.imap.test_disk_full import (
    ADDRESS,
    DISK_FULL,
    append_line,
    big_message,
    client,
    command,
    files,
)

__all__ = ["client"]  # the fixture, shared with the fault-injection tests


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The mail store on a 2 MB tmpfs of its own."""
    with small_tmpfs(Path(app_config["DATA_DIR"]) / "mail", "2m"):
        yield app_config


def no_hard_link(source: object, target: object) -> None:
    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))


def test_append_and_copy_on_a_really_full_file_system(session, client):
    mailbox, sock, reader = client
    maildir = mail_store().open(ADDRESS)
    inbox = maildir.folder("INBOX")
    stored = inbox.deliver_many([IncomingMessage(big_message(n, 200_000)) for n in range(3)])
    assert len(stored) == 3
    filler = fill(maildir.root.parent.parent.parent, leave=300_000)
    used = used_bytes(session, mailbox)

    # APPEND of a message bigger than the space left.
    reply = command(sock, reader, b"a", append_line(big_message(9, 600_000)))
    assert reply[-1] == b"a " + DISK_FULL + b"\r\n", reply
    assert leftovers(inbox.path) == [] and len(inbox.messages()) == 3

    # COPY of three where the bytes must be written (no hard links): the first fits, the
    # second does not; the target stays empty.
    command(sock, reader, b"s", b"SELECT INBOX")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mailstore_maildir, "link_file", no_hard_link)
        reply = command(sock, reader, b"c", b"COPY 1:3 Archive")
    assert reply[-1] == b"c " + DISK_FULL + b"\r\n", reply
    assert files("Archive") == [] and leftovers(maildir.folder("Archive").path) == []
    assert used_bytes(session, mailbox) == used

    # With hard links (as Dovecot copies) the same COPY needs no room for the bytes.
    assert command(sock, reader, b"d", b"COPY 1:3 Archive")[-1].startswith(b"d OK [COPYUID")
    assert [m.size for m in maildir.folder("Archive").messages()] == [s.size for s in stored]

    # Space again: everything works, and nothing of the failures shows.
    os.unlink(filler)
    reply = command(sock, reader, b"e", append_line(big_message(9, 600_000)))
    assert reply[-1].startswith(b"e OK [APPENDUID"), reply
