"""An expunge is seen at once by every Folder object of the process, old and new."""

from __future__ import annotations

import pytest

from provider.mailstore import MailStore


@pytest.mark.parametrize("flag_first", [False, True], ids=["in-new", "in-cur"])
def test_expunged_messages_do_not_come_back(tmp_path, flag_first):
    store = MailStore(tmp_path)
    folder = store.create("a@b.test").folder("INBOX")
    for number in range(3):
        folder.deliver(f"Subject: {number}\r\n\r\nx\r\n".encode())
    if flag_first:
        folder.set_flags(2, ["\\Seen"])
    assert [info.uid for info in folder.expunge([2])] == [2]
    assert [info.uid for info in folder.messages()] == [1, 3]
    reopened = MailStore(tmp_path).open("a@b.test").folder("INBOX")
    assert [info.uid for info in reopened.messages()] == [1, 3]
    assert folder.expunge([2]) == []
