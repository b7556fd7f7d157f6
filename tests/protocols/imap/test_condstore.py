"""CONDSTORE (RFC 7162 §3.1) on real sockets: MODSEQ, HIGHESTMODSEQ, (UN)CHANGEDSINCE."""

from __future__ import annotations

import imaplib
import os
import re

import pytest

from provider.mailstore.maildir import MODSEQ_NAME, forget_cached_state
from provider.protocols.imap.parser import Atom, parse_command
from provider.services.storage import mail_store
from tests.cli.test_entrypoint import environment, serving
from tests.cli.test_entrypoint import run as provider_command
from tests.cli.test_two_servers import PASSWORD, port_of
from tests.conftest import make_mailbox
from tests.protocols.imap.test_session import MESSAGE, logged_in

__all__ = ["environment"]  # the fixture of tests/cli, for the two-process test
ADDRESS = "alice@example.test"
_MODSEQ = re.compile(rb"MODSEQ \((\d+)\)")
_HIGHEST = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]|HIGHESTMODSEQ (\d+)\)")


def run(client: imaplib.IMAP4, command: str) -> tuple[bytes, list[bytes]]:
    """Send one command; its whole tagged line (without the tag) and its untagged lines."""
    tag = client._new_tag()
    client.send(tag + b" " + command.encode() + b"\r\n")
    lines = []
    while True:
        line = client.readline().rstrip(b"\r\n")
        if line.startswith(tag + b" "):
            return line[len(tag) + 1 :], lines
        lines.append(line)


def highest(lines: list[bytes]) -> int:
    [value] = [int(m.group(1) or m.group(2)) for line in lines if (m := _HIGHEST.search(line))]
    return value


def modseqs(lines: list[bytes]) -> dict[int, int]:
    """Sequence number → MODSEQ, from untagged FETCH lines."""
    found = {}
    for line in lines:
        match = _MODSEQ.search(line)
        if line.startswith(b"* ") and b" FETCH " in line and match:
            found[int(line.split(b" ")[1])] = int(match.group(1))
    return found


@pytest.fixture
def client(session, imap):
    make_mailbox(session)
    folder = mail_store().open(ADDRESS).folder("INBOX")
    for _ in range(3):
        folder.deliver(MESSAGE)
    client = logged_in(imap)
    yield client
    client.logout()


def selected(client: imaplib.IMAP4, command: str = "SELECT INBOX (CONDSTORE)") -> int:
    status, lines = run(client, command)
    assert status.startswith(b"OK")
    return highest(lines)


def test_capability_and_enable(client):
    assert "CONDSTORE" in client.capabilities or b"CONDSTORE" in run(client, "CAPABILITY")[1][0]
    assert run(client, "ENABLE CONDSTORE") == (b"OK ENABLE completed", [b"* ENABLED CONDSTORE"])
    assert run(client, "ENABLE CONDSTORE") == (b"OK ENABLE completed", [b"* ENABLED"])
    # Enabled: every SELECT and EXAMINE reports HIGHESTMODSEQ, and FETCH FLAGS carries MODSEQ.
    value = selected(client, "EXAMINE INBOX")
    _, lines = run(client, "FETCH 1 (FLAGS)")
    assert lines == [b"* 1 FETCH (FLAGS (\\Recent) MODSEQ (%d))" % modseqs(lines)[1]]
    assert 0 < modseqs(lines)[1] <= value


def test_select_without_condstore_has_no_modseq_until_an_enabling_command(client):
    status, lines = run(client, "SELECT INBOX")
    assert not any(b"HIGHESTMODSEQ" in line for line in lines)
    _, lines = run(client, "FETCH 1:* (FLAGS)")
    assert not any(b"MODSEQ" in line for line in lines)
    # RFC 7162 §3.1: the first enabling command with a mailbox selected reports HIGHESTMODSEQ.
    status, lines = run(client, "FETCH 1:* (MODSEQ)")
    assert status == b"OK FETCH completed"
    value = highest(lines)
    assert sorted(modseqs(lines)) == [1, 2, 3]
    assert max(modseqs(lines).values()) <= value
    assert lines[1:] == [b"* %d FETCH (MODSEQ (%d))" % (n, m) for n, m in modseqs(lines).items()]


@pytest.mark.parametrize(
    "command",
    ["SELECT INBOX (QRESYNC)", "SELECT INBOX (FOO)", "SELECT INBOX CONDSTORE", "ENABLE"],
)
def test_bad_select_parameters(client, command):
    assert run(client, command)[0].startswith(b"BAD")


def test_two_sessions_see_each_others_changes_with_modseq(client, imap):
    first_highest = selected(client)
    other = logged_in(imap)
    other_highest = selected(other)
    assert first_highest == other_highest
    assert run(other, "STORE 2 +FLAGS (\\Flagged)")[0].startswith(b"OK")
    _, lines = run(client, "NOOP")
    [line] = lines
    assert line.startswith(b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (")
    changed = modseqs(lines)[2]
    assert changed > first_highest
    _, lines = run(client, "STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
    assert lines == [b"* STATUS INBOX (HIGHESTMODSEQ %d MESSAGES 3)" % changed]
    # A foreign program's rename (Dovecot setting \Seen) is noticed and gets a new modseq.
    info = mail_store().open(ADDRESS).folder("INBOX").messages()[0]
    os.rename(info.path, info.path.parent.parent / "cur" / f"{info.basename}:2,S")
    _, lines = run(client, "NOOP")
    assert modseqs(lines)[1] > changed
    assert lines == [b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))" % modseqs(lines)[1]]
    # A delivery gets a higher modseq still.
    mail_store().open(ADDRESS).folder("INBOX").deliver(MESSAGE)
    _, lines = run(other, "NOOP")
    _, lines = run(other, "FETCH 4 (MODSEQ)")
    assert lines[-1] == b"* 4 FETCH (MODSEQ (%d))" % modseqs(lines)[4]
    assert modseqs(lines)[4] > changed
    other.logout()


def test_changedsince_returns_exactly_the_changed_messages(client):
    value = selected(client)
    assert run(client, "STORE 2 +FLAGS.SILENT (\\Answered)") == (b"OK STORE completed", [])
    status, lines = run(client, f"FETCH 1:* (FLAGS) (CHANGEDSINCE {value})")
    assert status == b"OK FETCH completed"
    [line] = lines
    assert line.startswith(b"* 2 FETCH (FLAGS (\\Answered \\Recent) MODSEQ (")
    status, lines = run(client, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {value})")
    expected = b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Recent) MODSEQ (%d))" % modseqs(lines)[2]
    assert lines == [expected]
    assert run(client, "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")[1][2].startswith(b"* 3 FETCH")
    assert run(client, f"FETCH 1:* (FLAGS) (CHANGEDSINCE {modseqs(lines)[2]})")[1] == []


def test_store_reports_the_new_modseq(client):
    value = selected(client)
    status, lines = run(client, "STORE 1:2 +FLAGS (\\Seen)")
    assert status == b"OK STORE completed"
    first, second = modseqs(lines)[1], modseqs(lines)[2]
    assert value < first < second
    assert lines[0] == b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))" % first
    # Setting a flag that is already set does not change the modseq (RFC 7162 §3.1).
    _, lines = run(client, "UID STORE 1 +FLAGS (\\Seen)")
    assert lines == [b"* 1 FETCH (FLAGS (\\Seen \\Recent) UID 1 MODSEQ (%d))" % first]
    # A FETCH that sets \Seen reports FLAGS and the new MODSEQ.
    _, lines = run(client, "FETCH 3 (BODY[HEADER.FIELDS (SUBJECT)])")
    whole = b"\n".join(lines)  # the literal splits the response over several lines
    assert whole.startswith(b"* 3 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {")
    third = int(_MODSEQ.findall(whole)[0])
    assert whole.endswith(b" FLAGS (\\Seen \\Recent) MODSEQ (%d))" % third)
    assert third > second


def test_unchangedsince_conflict_gives_modified_and_stores_nothing_there(client, imap):
    value = selected(client)
    other = logged_in(imap)
    selected(other)
    run(other, "STORE 2 +FLAGS (\\Flagged)")
    status, lines = run(client, f"STORE 1:3 (UNCHANGEDSINCE {value}) +FLAGS.SILENT (\\Deleted)")
    assert status == b"OK [MODIFIED 2] Conditional STORE failed"
    # .SILENT still answers with MODSEQ (RFC 7162 §3.1.3); then the other session's change.
    assert lines[:2] == [b"* %d FETCH (MODSEQ (%d))" % (n, modseqs(lines)[n]) for n in (1, 3)]
    assert lines[2].startswith(b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (")
    flags = {i.uid: i.flags for i in mail_store().open(ADDRESS).folder("INBOX").messages()}
    assert flags == {1: {"\\Deleted"}, 2: {"\\Flagged"}, 3: {"\\Deleted"}}
    # UID STORE names UIDs; UNCHANGEDSINCE 0 fails for every message (RFC 7162 §3.1.3).
    status, lines = run(client, "UID STORE 1,3 (UNCHANGEDSINCE 0) -FLAGS (\\Deleted)")
    assert (status, lines) == (b"OK [MODIFIED 1,3] Conditional STORE failed", [])
    current = modseqs(run(client, "FETCH 2 (MODSEQ)")[1])[2]
    status, lines = run(client, f"UID STORE 2 (UNCHANGEDSINCE {current}) +FLAGS (\\Seen)")
    assert status == b"OK UID STORE completed"
    flags = b"FLAGS (\\Flagged \\Seen \\Recent)"
    expected = b"* 2 FETCH (%s UID 2 MODSEQ (%d))" % (flags, modseqs(lines)[2])
    assert lines == [expected]
    assert modseqs(lines)[2] > current
    other.logout()


def test_unchangedsince_enables_condstore_and_reports_highestmodseq(client):
    run(client, "SELECT INBOX")
    status, lines = run(client, "STORE 1 (UNCHANGEDSINCE 99999999999999999) +FLAGS (\\Seen)")
    assert status == b"OK STORE completed"
    assert lines[0].startswith(b"* OK [HIGHESTMODSEQ ")
    assert lines[1].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (")


def test_search_modseq(client):
    value = selected(client)
    run(client, "STORE 3 +FLAGS (\\Draft)")
    status, lines = run(client, f"SEARCH MODSEQ {value + 1}")
    assert status == b"OK SEARCH completed"
    changed = modseqs(run(client, "FETCH 3 (MODSEQ)")[1])[3]
    assert lines == [b"* SEARCH 3 (MODSEQ %d)" % changed]
    _, lines = run(client, 'UID SEARCH MODSEQ "/flags/\\\\draft" all 1')
    assert lines == [b"* SEARCH 1 2 3 (MODSEQ %d)" % changed]
    assert run(client, "SEARCH OR NOT MODSEQ 1 LARGER 50000")[1] == [b"* SEARCH"]
    assert run(client, f"SEARCH MODSEQ {value + 1} NOT DRAFT")[1] == [b"* SEARCH"]
    assert run(client, "SEARCH MODSEQ x")[0].startswith(b"BAD")
    assert run(client, 'SEARCH MODSEQ "/flags/\\\\draft" none 1')[0].startswith(b"BAD")


def test_search_modseq_enables_condstore(client):
    run(client, "SELECT INBOX")
    _, lines = run(client, "SEARCH MODSEQ 1")
    assert lines[0].startswith(b"* OK [HIGHESTMODSEQ ")
    assert re.fullmatch(rb"\* SEARCH 1 2 3 \(MODSEQ \d+\)", lines[1])


def test_modseqs_survive_a_restart_and_a_lost_file_never_lowers_them(client, imap):
    _, before = run(client, "STATUS INBOX (HIGHESTMODSEQ)")
    value = highest(before)
    selected(client)
    _, fetched = run(client, "FETCH 1:* (MODSEQ)")
    run(client, "UNSELECT")
    forget_cached_state()  # as a restarted server would start
    again = logged_in(imap)
    assert run(again, "STATUS INBOX (HIGHESTMODSEQ)")[1] == before
    selected(again)
    assert run(again, "FETCH 1:* (MODSEQ)")[1] == fetched
    run(again, "UNSELECT")
    forget_cached_state()
    folder = mail_store().open(ADDRESS).folder("INBOX")
    for suffix in ("", "-wal", "-shm"):
        path = folder.path / (MODSEQ_NAME + suffix)
        if path.exists():
            path.unlink()
    _, lines = run(again, "STATUS INBOX (HIGHESTMODSEQ)")
    assert highest(lines) > value
    assert selected(again) >= highest(lines)
    _, lines = run(again, "FETCH 1:* (MODSEQ)")
    assert min(modseqs(lines).values()) > value
    again.logout()


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (
            b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n",
            ["1:*", ["FLAGS"], ["CHANGEDSINCE", "12345"]],
        ),
        (
            b"a UID STORE 6,4,8 (UNCHANGEDSINCE 12121230045) +FLAGS.SILENT (\\Deleted)\r\n",
            ["STORE", "6,4,8", ["UNCHANGEDSINCE", "12121230045"], "+FLAGS.SILENT", ["\\Deleted"]],
        ),
        (b"a SELECT INBOX (CONDSTORE)\r\n", ["INBOX", ["CONDSTORE"]]),
        (
            b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338\r\n',
            ["MODSEQ", b"/flags/\\draft", "all", "620162338"],
        ),
    ],
)
def test_modifier_lists_parse_exactly(line, args):
    command = parse_command(line)
    assert command.args == args
    atoms = [a for a in command.args if isinstance(a, str)]
    assert all(isinstance(a, Atom) for a in atoms)


@pytest.mark.parametrize(
    "command",
    [
        "FETCH 1 (FLAGS) (CHANGEDSINCE)",
        "FETCH 1 (FLAGS) (CHANGEDSINCE x)",
        "FETCH 1 (FLAGS) (CHANGEDSINCE -1)",
        "FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775808)",
        "FETCH 1 (FLAGS) (CHANGEDSINCE 1 CHANGEDSINCE 2)",
        "FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)",
        "FETCH 1 (FLAGS) ()",
        "FETCH 1 (FLAGS) CHANGEDSINCE",
        "STORE 1 (UNCHANGEDSINCE) +FLAGS (\\Seen)",
        "STORE 1 (FOO 1) +FLAGS (\\Seen)",
        "STORE 1 UNCHANGEDSINCE +FLAGS (\\Seen)",
    ],
)
def test_bad_modifiers(client, command):
    selected(client)
    assert run(client, command)[0].startswith(b"BAD")


def test_two_server_processes_share_modseqs(environment):
    """Two `provider serve` on one data directory hand out and report the same values."""
    environment.update(PROVIDER_IMAP_PORT="0", PROVIDER_IMAPS_PORT="0")
    assert provider_command(environment, "init").returncode == 0
    assert provider_command(environment, "domain", "add", "example.test").returncode == 0
    created = provider_command(
        environment,
        *("mailbox", "add", "a@example.test", "--quota-gb", "8", "--protocols", "imap"),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    with (
        serving(environment, "imap") as (_, first_lines),
        serving(environment, "imap") as (_, second_lines),
    ):
        clients = []
        for lines in (first_lines, second_lines):
            client = imaplib.IMAP4("127.0.0.1", port_of(lines, "imap"), timeout=10)
            client.login("a@example.test", PASSWORD)
            clients.append(client)
        first, second = clients
        message = MESSAGE.decode().replace("\r\n", "\n")
        assert first.append("INBOX", "", "", message.encode())[0] == "OK"
        start = selected(first)
        assert selected(second) == start
        _, lines = run(first, "STORE 1 +FLAGS (\\Flagged)")
        changed = modseqs(lines)[1]
        assert changed > start
        _, lines = run(second, "NOOP")
        assert lines == [b"* 1 FETCH (FLAGS (\\Flagged) MODSEQ (%d))" % changed]
        for client in clients:
            assert highest(run(client, "STATUS INBOX (HIGHESTMODSEQ)")[1]) == changed
            client.logout()
