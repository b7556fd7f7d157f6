"""The store on a full disk: StorageFull, and nothing half-written (tmp/, new/, cur/, uidlist)."""

from __future__ import annotations

import errno
import os

import pytest

from provider.mailstore import IncomingMessage, MailStore, StorageFull, diskio
from tests.mailstore import files_in, sample_message
from tests.mailstore.diskfull import FailingWrites, leftovers

ADDRESS = "alice@example.com"


@pytest.fixture
def inbox(tmp_path):
    folder = MailStore(tmp_path / "mail").create(ADDRESS).folder("INBOX")
    folder.deliver(sample_message("already there"))
    return folder


@pytest.fixture
def failing(monkeypatch):
    return FailingWrites(monkeypatch)


def state(folder) -> tuple[list[str], list[str], list[str]]:
    return tuple(files_in(folder.path, sub) for sub in ("tmp", "new", "cur"))  # type: ignore[return-value]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("nth", [1, 2, 3, 4, 5])
def test_deliver_many_on_a_full_disk_raises_storage_full_and_leaves_nothing(
    inbox, failing, code, nth
):
    before = state(inbox)
    uidlist_before = (inbox.path / "dovecot-uidlist").read_bytes()
    batch = [IncomingMessage(sample_message(f"m{n}"), keywords=["$Label1"]) for n in range(3)]
    failing.arm(nth, code)  # 1 dovecot-keywords, 2-4 message files, 5 the uidlist lines
    with pytest.raises(StorageFull, match="not enough disk space"):
        inbox.deliver_many(batch)
    failing.disarm()
    assert state(inbox) == before and leftovers(inbox.path) == []
    if nth < 5:
        assert (inbox.path / "dovecot-uidlist").read_bytes() == uidlist_before
    assert [m.uid for m in inbox.messages()] == [1]
    assert inbox.deliver_many(batch)[0].uid >= 2


def test_a_partly_written_uidlist_line_is_cut_off_even_when_the_rewrite_fails(inbox, monkeypatch):
    """The disk fills in the middle of the uidlist line, and again for the rewrite that takes
    it back: the file ends as it was, never in half a record."""
    uidlist_before = (inbox.path / "dovecot-uidlist").read_bytes()
    real = diskio.write_all
    calls = 0

    def half_then_full(fd: int, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the message file
            real(fd, data)
            return
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(diskio, "write_all", half_then_full)
    with pytest.raises(StorageFull):
        inbox.deliver(sample_message("doomed"))
    monkeypatch.undo()
    assert calls == 3  # the message, the line, the rewrite
    assert (inbox.path / "dovecot-uidlist").read_bytes() == uidlist_before
    assert not (inbox.path / "dovecot-uidlist.tmp").exists()
    assert [m.uid for m in inbox.messages()] == [1]
    assert inbox.deliver(sample_message("next")).uid == 2


def test_expunge_and_select_still_work_when_the_disk_is_full(inbox, failing):
    uid = inbox.deliver(sample_message("to go")).uid
    failing.arm(1)  # the uidlist rewrite after the unlink
    removed = inbox.expunge([uid])
    assert [info.uid for info in removed] == [uid]
    assert [m.uid for m in inbox.messages()] == [1]
    failing.disarm()

    def no_space(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pathlib.Path.write_text", no_space)
        assert inbox.claim_recent(inbox.uidnext - 1) >= 1  # \Recent marker not written: fine
    assert leftovers(inbox.path) == []
