"""LIST, LSUB and LIST-EXTENDED (RFC 3501 §6.3.8 and §6.3.9, RFC 5258) over a real socket."""

from __future__ import annotations

import imaplib

import pytest

from tests.conftest import make_mailbox
from tests.protocols.imap.test_session import logged_in


def run(client: imaplib.IMAP4, command: str) -> tuple[bytes, list[bytes]]:
    """Send one command; its tagged status word and its untagged lines (CRLF stripped)."""
    tag = client._new_tag()
    client.send(tag + b" " + command.encode() + b"\r\n")
    lines = []
    while True:
        line = client.readline().rstrip(b"\r\n")
        if line.startswith(tag + b" "):
            return line.split(b" ")[1], lines
        lines.append(line)


@pytest.fixture
def client(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    # The first SUBSCRIBE fixes the list (until then every folder counts as subscribed).
    assert client.subscribe("INBOX")[0] == "OK"
    for name in ("box/test1", "box/test2/test1", "box/test3", "box/test6", "box/test8/test8"):
        assert client.create(name)[0] == "OK"
    client.create("box/test8/test9")
    for name in ("box/test1", "box/test2/test1", "box/test6", "box/test8/test8", "box/test8/test9"):
        assert client.subscribe(name)[0] == "OK"
    assert client.delete("box/test6")[0] == "OK"
    yield client
    client.logout()


@pytest.mark.parametrize(
    "command",
    [
        'LIST (FOOBAR) "" %',
        'LIST (RECURSIVEMATCH) "" %',
        'LIST (RECURSIVEMATCH REMOTE) "" ""',
        'LIST "" % RETURN (FOOBAR)',
        'LIST "" % EXTRA',
    ],
)
def test_unknown_or_incomplete_list_options_are_bad(client, command):
    assert run(client, command)[0] == b"BAD"


def test_list_subscribed_keeps_a_deleted_mailbox_as_nonexistent(client):
    status, lines = run(client, 'LIST (SUBSCRIBED) "" box/*')
    assert status == b"OK"
    assert b'* LIST (\\NonExistent \\Subscribed) "/" box/test6' in lines
    assert any(line.endswith(b'"/" box/test1') and b"\\Subscribed" in line for line in lines)
    assert not any(line.endswith(b"box/test3") for line in lines)  # not subscribed
    # A plain LIST does not show the deleted one.
    assert not any(line.endswith(b"box/test6") for line in run(client, 'LIST "" box/*')[1])


def test_recursivematch_reports_subscribed_children_the_pattern_misses(client):
    _, lines = run(client, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" box/test2 RETURN (CHILDREN)')
    assert lines == [b'* LIST (\\HasChildren) "/" box/test2 ("CHILDINFO" ("SUBSCRIBED"))']
    # When the child matches too, it answers for itself.
    _, lines = run(client, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" (box/test2 box/test2/test1)')
    assert [line.rsplit(b" ", 1)[-1] for line in lines] == [b"box/test2/test1"]
    _, lines = run(client, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" *test8')
    assert any(b"CHILDINFO" in line and b"box/test8 " in line for line in lines)
    assert any(line.endswith(b"box/test8/test8") and b"\\Subscribed" in line for line in lines)


def test_lsub_percent_returns_the_unsubscribed_parent_as_noselect(client):
    status, lines = run(client, 'LSUB "" box/%')
    assert status == b"OK"
    assert b'* LSUB () "/" box/test1' in lines
    assert b'* LSUB (\\Noselect) "/" box/test2' in lines
    assert not any(line.endswith(b"box/test2/test1") for line in lines)
    _, lines = run(client, 'LSUB "" *test1')
    assert sorted(lines) == [b'* LSUB () "/" box/test1', b'* LSUB () "/" box/test2/test1']
