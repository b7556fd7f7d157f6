"""WITHIN (RFC 5032) and SAVEDATE (RFC 8514) on real sockets."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime, timedelta

from imapclient import IMAPClient

from provider.mailstore.maildir import save_date, unique_basename
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.exchange import exchange
from tests.protocols.imap.test_session import logged_in


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def imap_date_time(moment: datetime) -> str:
    return moment.strftime('"%d-%b-%Y %H:%M:%S +0000"')


def imap_date(moment: datetime) -> str:
    return moment.strftime("%d-%b-%Y")


def append_aged(client, ages: list[timedelta]) -> None:
    now = datetime.now(UTC)
    for number, age in enumerate(ages, 1):
        message = b"Subject: %d\r\n\r\nx\r\n" % number
        command = f"APPEND INBOX {imap_date_time(now - age)} ".encode() + literal(message)
        assert exchange(client, command)[1].startswith(b"OK")


def search(client, keys: str) -> list[int]:
    [line], done = exchange(client, f"SEARCH {keys}")
    assert done.startswith(b"OK"), done
    return [int(n) for n in line.split()[2:]]


def test_within_older_and_younger_by_internal_date(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    assert b"WITHIN" in client.capability()[1][0].split()
    append_aged(client, [timedelta(days=10), timedelta(hours=2), timedelta(0)])
    client.select("INBOX")
    assert search(client, "YOUNGER 3600") == [3]
    assert search(client, "YOUNGER 86400") == [2, 3]
    assert search(client, "OLDER 86400") == [1]
    assert search(client, "OLDER 60") == [1, 2]
    assert search(client, "OLDER 60 YOUNGER 864000") == [2]  # 10 days ago sits on the edge
    assert search(client, "OLDER 4294967295") == []
    assert search(client, "YOUNGER 4294967295") == [1, 2, 3]
    [esearch], _ = exchange(client, "UID SEARCH RETURN (COUNT) OLDER 3600")
    bad = [
        exchange(client, f"SEARCH {keys}")[1].split(b" ")[0]
        for keys in (
            "OLDER",
            "OLDER 0",
            "YOUNGER -5",
            "YOUNGER 4294967296",
            "OLDER 1e3",
            "SAVEDON 32-Jan-2020",
            "SAVEDBEFORE",
            "SAVEDSINCE (1-Jan-2020)",
        )
    ]
    client.logout()
    assert esearch.endswith(b"COUNT 2")
    assert bad == [b"BAD"] * 8


def test_save_date_is_when_the_file_was_written_in_this_folder(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    assert b"SAVEDATE" in client.capability()[1][0].split()
    append_aged(client, [timedelta(days=400)])
    client.select("INBOX")
    before_copy = time.time()
    assert exchange(client, "COPY 1 Archive")[1].startswith(b"OK")
    [line], _ = exchange(client, "FETCH 1 (INTERNALDATE SAVEDATE)")
    today = datetime.now(UTC)
    saved_on = search(client, f"SAVEDON {imap_date(today)}")
    saved_before = search(client, f"SAVEDBEFORE {imap_date(today)}")
    saved_since = search(client, f"SAVEDSINCE {imap_date(today - timedelta(days=1))}")
    before_by_internal = search(client, f"BEFORE {imap_date(today - timedelta(days=300))}")
    supported = search(client, "SAVEDATESUPPORTED")
    client.select("Archive")
    [copied], _ = exchange(client, "FETCH 1 (INTERNALDATE SAVEDATE)")
    client.logout()
    saved = re.search(rb'SAVEDATE "([^"]+)"', line).group(1).decode()
    moment = datetime.strptime(saved, "%d-%b-%Y %H:%M:%S %z")
    assert saved.endswith("+0000") and abs(moment.timestamp() - time.time()) < 120
    assert saved_on == [1] and saved_before == [] and saved_since == [1] and supported == [1]
    assert before_by_internal == [1]  # the internal date is 400 days old
    # The copy keeps the internal date and has a save date of its own, from the COPY.
    internal = re.search(rb'INTERNALDATE "([^"]+)"', line).group(1)
    assert re.search(rb'INTERNALDATE "([^"]+)"', copied).group(1) == internal
    copy_saved = re.search(rb'SAVEDATE "([^"]+)"', copied).group(1).decode()
    copy_moment = datetime.strptime(copy_saved, "%d-%b-%Y %H:%M:%S %z").timestamp()
    assert copy_moment >= int(before_copy)


def test_foreign_file_name_has_no_save_date_and_searches_by_internal_date(session, imap):
    make_mailbox(session)
    folder = mail_store().open("alice@example.test").folder("INBOX")
    path = folder.path / "cur" / "imported-by-hand:2,S"
    path.write_bytes(b"Subject: old\r\n\r\nold\r\n")
    old = datetime(2020, 5, 17, 12, 0, tzinfo=UTC)
    os.utime(path, (old.timestamp(), old.timestamp()))
    client = logged_in(imap)
    client.select("INBOX")
    [line], _ = exchange(client, "FETCH 1 SAVEDATE")
    assert search(client, "SAVEDON 17-May-2020") == [1]
    assert search(client, "SAVEDSINCE 18-May-2020") == []
    client.logout()
    assert line.endswith(b"SAVEDATE NIL)")


def test_save_date_of_file_names(session):
    assert save_date("1700000000.M123456P1Q2.host") == 1700000000.123456
    assert abs(save_date(unique_basename()) - time.time()) < 5
    assert save_date("1700000000.host,S=5") == 1700000000
    for foreign in ("imported", "0.M1P1.host", "99999999999999999999.M1.host", ""):
        assert save_date(foreign) is None


def test_imapclient_fetches_savedate_and_searches_within(session, imap):
    make_mailbox(session)
    host, port = imap["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as client:
        client.login("alice@example.test", MAILBOX_PASSWORD)
        client.append("INBOX", b"Subject: a\r\n\r\nx\r\n", msg_time=datetime(2001, 1, 1))
        client.append("INBOX", b"Subject: b\r\n\r\ny\r\n")
        client.select_folder("INBOX")
        assert client.search(["YOUNGER", 600]) == [2]
        assert client.search(["OLDER", 600]) == [1]
        fetched = client.fetch([1, 2], ["SAVEDATE"])
        assert all(fetched[uid][b"SAVEDATE"] for uid in (1, 2))
