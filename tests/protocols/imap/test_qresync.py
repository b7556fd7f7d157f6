"""QRESYNC (RFC 7162 §3.2) on real sockets: a cached client resyncs with VANISHED (EARLIER)."""

from __future__ import annotations

import imaplib
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing

import pytest
from imapclient import IMAPClient

from provider.mailstore.maildir import MODSEQ_NAME, forget_cached_state
from provider.protocols.server import ProtocolRunner
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.imap.test_condstore import highest, run
from tests.protocols.imap.test_session import MESSAGE, logged_in

ADDRESS = "alice@example.test"
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH = re.compile(rb"^\* (\d+) FETCH \((.*)\)$")


def uidvalidity(lines: list[bytes]) -> int:
    [value] = [int(m.group(1)) for line in lines if (m := _UIDVALIDITY.search(line))]
    return value


def fetched(lines: list[bytes]) -> dict[int, bytes]:
    """UID → the FETCH response's items, from the untagged FETCH lines that carry a UID."""
    found = {}
    for line in lines:
        if (match := _FETCH.match(line)) and (uid := re.search(rb"UID (\d+)", match.group(2))):
            found[int(uid.group(1))] = match.group(2)
    return found


def vanished(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line.startswith(b"* VANISHED")]


@pytest.fixture
def server(app) -> Iterator[Callable[[], dict[str, tuple[str, int]]]]:
    """The IMAP listeners; calling the fixture restarts them as a fresh process would
    (nothing of the folders kept in memory)."""
    runners = [ProtocolRunner(app, ["imap"])]
    bound = [{b.name: (b.host, b.port) for b in runners[0].start()}]

    def restart() -> dict[str, tuple[str, int]]:
        runners[-1].stop()
        forget_cached_state()
        runners.append(ProtocolRunner(app, ["imap"]))
        bound.append({b.name: (b.host, b.port) for b in runners[-1].start()})
        return bound[-1]

    restart.bound = bound  # type: ignore[attr-defined]
    try:
        yield restart
    finally:
        runners[-1].stop()


@pytest.fixture
def imap_now(server) -> Callable[[], dict[str, tuple[str, int]]]:
    return lambda: server.bound[-1]


_OPEN: list[imaplib.IMAP4] = []


@pytest.fixture(autouse=True)
def _logged_out() -> Iterator[None]:
    """Every client a test opened is logged out and closed, whatever the test did."""
    yield
    while _OPEN:
        client = _OPEN.pop()
        if client.state == "LOGOUT":
            continue
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            client.shutdown()


def session_of(imap) -> imaplib.IMAP4:
    client = logged_in(imap)
    _OPEN.append(client)
    return client


@pytest.fixture
def folder(session, server):
    make_mailbox(session)
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    for _ in range(6):
        inbox.deliver(MESSAGE)
    return inbox


def enabled(imap) -> imaplib.IMAP4:
    client = session_of(imap)
    assert run(client, "ENABLE QRESYNC") == (b"OK ENABLE completed", [b"* ENABLED QRESYNC"])
    return client


def cache_of(imap) -> tuple[int, int, list[int]]:
    """What a disconnected client keeps: UIDVALIDITY, HIGHESTMODSEQ and the UIDs it holds."""
    client = enabled(imap)
    status, lines = run(client, "SELECT INBOX")
    assert status.startswith(b"OK [READ-WRITE]")
    valid, modseq = uidvalidity(lines), highest(lines)
    _, lines = run(client, "UID FETCH 1:* (FLAGS)")
    uids = sorted(fetched(lines))
    client.logout()
    return valid, modseq, uids


def change_elsewhere(imap, expunge: list[int], flag: int) -> None:
    """Another client (IMAPClient) deletes some messages and flags one."""
    host, port = imap["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as other:
        other.login(ADDRESS, MAILBOX_PASSWORD)
        other.select_folder("INBOX")
        other.add_flags(expunge, [b"\\Deleted"])
        other.uid_expunge(expunge)
        other.add_flags([flag], [b"\\Flagged"])


def test_capability_and_enable(folder, imap_now):
    client = session_of(imap_now())
    _, [line] = run(client, "CAPABILITY")
    assert b" QRESYNC " in line and b" CONDSTORE " in line
    assert run(client, "ENABLE QRESYNC CONDSTORE") == (
        b"OK ENABLE completed",
        [b"* ENABLED QRESYNC"],
    )
    assert run(client, "ENABLE QRESYNC") == (b"OK ENABLE completed", [b"* ENABLED"])
    # QRESYNC implies CONDSTORE: SELECT reports HIGHESTMODSEQ without asking.
    status, lines = run(client, "EXAMINE INBOX")
    assert highest(lines) > 0 and status.startswith(b"OK [READ-ONLY]")


def test_a_cached_client_gets_exactly_the_vanished_uids_and_the_changed_flags(folder, imap_now):
    valid, modseq, uids = cache_of(imap_now())
    assert uids == [1, 2, 3, 4, 5, 6]
    change_elsewhere(imap_now(), expunge=[2, 5], flag=4)
    client = enabled(imap_now())
    status, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1:6))")
    assert status.startswith(b"OK [READ-WRITE]")
    assert b"* 4 EXISTS" in lines
    assert vanished(lines) == [b"* VANISHED (EARLIER) 2,5"]
    changes = fetched(lines)
    assert list(changes) == [4]
    assert changes[4].startswith(b"FLAGS (\\Flagged) UID 4 MODSEQ (")
    new_highest = highest(lines)
    assert new_highest > modseq
    # VANISHED (EARLIER) comes after HIGHESTMODSEQ and before the FETCH responses.
    order = [i for i, line in enumerate(lines) if b"HIGHESTMODSEQ" in line or b"VANISHED" in line]
    assert order == sorted(order) and b"FETCH" in lines[-1]
    # Without known UIDs the server assumes 1:UIDNEXT-1: the same answer.
    status, lines = run(client, f"EXAMINE INBOX (QRESYNC ({valid} {modseq}))")
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert vanished(lines) == [b"* VANISHED (EARLIER) 2,5"] and list(fetched(lines)) == [4]
    # Up to date: nothing to say.
    status, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {new_highest} 1:6))")
    assert vanished(lines) == [] and fetched(lines) == {}
    client.logout()


def test_resync_after_the_server_restarted(folder, server, imap_now):
    valid, modseq, _ = cache_of(imap_now())
    change_elsewhere(imap_now(), expunge=[1, 6], flag=3)
    imap = server()  # a restart between: the history was kept on disk
    client = enabled(imap)
    _, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1:6))")
    assert vanished(lines) == [b"* VANISHED (EARLIER) 1,6"]
    assert list(fetched(lines)) == [3]
    client.logout()


def test_uidvalidity_mismatch_reports_nothing(folder, imap_now):
    valid, modseq, _ = cache_of(imap_now())
    change_elsewhere(imap_now(), expunge=[2], flag=4)
    client = enabled(imap_now())
    status, lines = run(client, f"SELECT INBOX (QRESYNC ({valid + 1} {modseq} 1:6))")
    assert status.startswith(b"OK [READ-WRITE]")
    assert vanished(lines) == [] and fetched(lines) == {}
    assert uidvalidity(lines) == valid and b"* 5 EXISTS" in lines


def test_known_uids_narrow_the_answer(folder, imap_now):
    valid, modseq, _ = cache_of(imap_now())
    change_elsewhere(imap_now(), expunge=[2, 5], flag=4)
    client = enabled(imap_now())
    _, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 3:5))")
    assert vanished(lines) == [b"* VANISHED (EARLIER) 5"]
    assert list(fetched(lines)) == [4]
    _, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1,6))")
    assert vanished(lines) == [] and fetched(lines) == {}


def forget_history(folder) -> None:
    forget_cached_state()
    for suffix in ("", "-wal", "-shm"):
        path = folder.path / f"{MODSEQ_NAME}{suffix}"
        path.unlink(missing_ok=True)


def test_lost_history_answers_with_every_missing_known_uid_narrowed_by_seq_match_data(
    folder, server
):
    valid, modseq, _ = cache_of(server.bound[-1])
    change_elsewhere(server.bound[-1], expunge=[2, 5], flag=4)
    forget_history(folder)
    imap = server()
    client = enabled(imap)
    # Every missing UID of the set (the superset RFC 7162 §3.2.6 requires), never a present
    # one, nor one never given out (UIDNEXT is 7), even for a set up to the largest UID.
    _, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1:4294967295))")
    assert vanished(lines) == [b"* VANISHED (EARLIER) 2,5"]
    _, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1:9))")
    assert vanished(lines) == [b"* VANISHED (EARLIER) 2,5"]
    # Every message has a new modseq (the file was rebuilt): all are reported as changed.
    assert list(fetched(lines)) == [1, 3, 4, 6]
    # seq-match-data: message 3 still has UID 4, so nothing up to 4 needs reporting.
    _, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1:9 (1,3 1,4)))")
    assert vanished(lines) == [b"* VANISHED (EARLIER) 5"]
    # A pair that no longer holds (message 2 is now UID 3) stops the matching there.
    _, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1:9 (1,2 1,2)))")
    assert vanished(lines) == [b"* VANISHED (EARLIER) 2,5"]
    _, lines = run(client, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 2,5" and list(fetched(lines)) == [1, 3, 4, 6]


def test_uid_fetch_vanished(folder, imap_now):
    client = enabled(imap_now())
    status, lines = run(client, "SELECT INBOX")
    modseq = highest(lines)
    other = session_of(imap_now())
    other.select("INBOX")
    other.store("1,3", "+FLAGS", "\\Deleted")
    other.expunge()
    other.store("2", "+FLAGS", "\\Seen")  # UID 4 now
    other.logout()
    run(client, "NOOP")
    status, lines = run(client, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert status == b"OK UID FETCH completed"
    assert lines[0] == b"* VANISHED (EARLIER) 1,3"
    assert list(fetched(lines)) == [4]
    # Only the UIDs of the set are reported; the VANISHED response comes first.
    _, lines = run(client, f"UID FETCH 2:3 (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines == [b"* VANISHED (EARLIER) 3"]
    # `*` reaches the largest UID ever given: an expunged last message is still reported.
    run(client, "UID STORE 6 +FLAGS.SILENT (\\Deleted)")
    run(client, "EXPUNGE")
    _, lines = run(client, f"UID FETCH 5:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 6"


@pytest.mark.parametrize(
    "command",
    [
        "SELECT INBOX (QRESYNC (1 1))",  # QRESYNC was not enabled
        "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",
    ],
)
def test_qresync_before_enable_is_bad(folder, imap_now, command):
    client = session_of(imap_now())
    assert run(client, "SELECT INBOX")[0].startswith(b"OK")
    assert run(client, command)[0].startswith(b"BAD")


@pytest.mark.parametrize(
    "parameter",
    [
        "(QRESYNC (0 5))",
        "(QRESYNC (1 0))",
        f"(QRESYNC (1 {2**63}))",
        f"(QRESYNC (1 {2**64}))",
        "(QRESYNC (1 5 1:*))",
        "(QRESYNC (1 5 3:1:4))",
        "(QRESYNC (1 5 1:9 (1:3 1:2)))",
        "(QRESYNC (1 5 1:9 (1:4294967295 1:4294967295)))",
        "(QRESYNC (1 5 1:9 (((((1)))))))",
        "(QRESYNC (1 5 \x01))",
        "(QRESYNC (1\x00 5))",
        "(QRESYNC (1 5 1\x00:3))",
    ],
)
def test_bad_qresync_parameters_are_bad_and_leave_no_mailbox_selected(folder, imap_now, parameter):
    client = enabled(imap_now())
    assert run(client, "SELECT INBOX")[0].startswith(b"OK")
    assert run(client, f"SELECT INBOX {parameter}")[0].startswith(b"BAD")
    # The session lives on; RFC 7162 §3.2.5 leaves the mailbox unselected only after a
    # syntax check passed, and a BAD changes no state.
    assert run(client, "NOOP")[0] == b"OK NOOP completed"


@pytest.mark.parametrize(
    "command",
    [
        "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",  # VANISHED is for UID FETCH only
        "UID FETCH 1:* (FLAGS) (VANISHED)",  # needs CHANGEDSINCE
        "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED VANISHED)",
        f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {2**63} VANISHED)",
        "UID FETCH 1:*:3 (FLAGS) (CHANGEDSINCE 1 VANISHED)",
    ],
)
def test_bad_vanished_modifiers(folder, imap_now, command):
    client = enabled(imap_now())
    assert run(client, "SELECT INBOX")[0].startswith(b"OK")
    assert run(client, command)[0].startswith(b"BAD")


def test_expunge_uid_expunge_and_move_answer_vanished_with_the_new_highest_modseq(
    folder, session, imap_now
):
    client = enabled(imap_now())
    _, lines = run(client, "SELECT INBOX")
    before = highest(lines)
    run(client, "STORE 2:3 +FLAGS.SILENT (\\Deleted)")
    status, lines = run(client, "EXPUNGE")
    assert lines == [b"* VANISHED 2:3"]
    after = int(re.match(rb"OK \[HIGHESTMODSEQ (\d+)\] EXPUNGE completed", status).group(1))
    assert after > before
    run(client, "UID STORE 6 +FLAGS.SILENT (\\Deleted)")
    status, lines = run(client, "UID EXPUNGE 5:6")
    assert lines == [b"* VANISHED 6"] and status.startswith(b"OK [HIGHESTMODSEQ ")
    status, lines = run(client, "UID MOVE 4 Trash")
    assert lines[-1] == b"* VANISHED 4" and status.startswith(b"OK [HIGHESTMODSEQ ")
    assert not any(b"EXPUNGE" in line for line in lines)
    # An EXPUNGE that removed nothing says nothing and carries no code.
    assert run(client, "EXPUNGE") == (b"OK EXPUNGE completed", [])
    # CLOSE reports nothing (RFC 7162 §3.2.8), and needs no [CLOSED].
    run(client, "STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert run(client, "CLOSE") == (b"OK CLOSE completed", [])
    _, lines = run(client, "SELECT INBOX")
    assert b"* 1 EXISTS" in lines and b"* OK [CLOSED] Previous mailbox closed" not in lines


def test_move_with_condstore_only_answers_expunge_and_the_new_highest_modseq(folder, imap_now):
    """RFC 6851 §4.4: a MOVE that moved something sends HIGHESTMODSEQ; without QRESYNC the
    expunges stay EXPUNGE responses."""
    client = session_of(imap_now())
    _, lines = run(client, "SELECT INBOX (CONDSTORE)")
    before = highest(lines)
    status, lines = run(client, "MOVE 2 Trash")
    assert lines[-1] == b"* 2 EXPUNGE"
    assert int(re.match(rb"OK \[HIGHESTMODSEQ (\d+)\] MOVE completed", status).group(1)) > before
    status, lines = run(client, "EXPUNGE")
    assert status == b"OK EXPUNGE completed"


def test_closed_whenever_select_replaces_a_selected_mailbox(folder, imap_now):
    """RFC 7162 §3.2.11: also for a CONDSTORE server whose client enabled nothing."""
    client = session_of(imap_now())
    _, lines = run(client, "SELECT INBOX")
    assert not any(b"[CLOSED]" in line for line in lines)
    _, lines = run(client, "EXAMINE Trash")
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert run(client, "UNSELECT") == (b"OK UNSELECT completed", [])
    _, lines = run(client, "SELECT INBOX")
    assert not any(b"[CLOSED]" in line for line in lines)
    # A failed SELECT closes the old mailbox too.
    status, lines = run(client, "SELECT Nowhere")
    assert status.startswith(b"NO") and lines == [b"* OK [CLOSED] Previous mailbox closed"]
    assert run(client, "NOOP") == (b"OK NOOP completed", [])
    assert run(client, "FETCH 1 (FLAGS)")[0].startswith(b"BAD")


def test_other_sessions_changes_come_as_vanished_and_fetch_with_uid_on_noop(folder, imap_now):
    client = enabled(imap_now())
    run(client, "SELECT INBOX")
    other = session_of(imap_now())
    other.select("INBOX")
    other.store("5", "+FLAGS", "\\Deleted")
    other.expunge()
    other.store("1", "+FLAGS", "\\Answered")
    status, lines = run(client, "NOOP")
    assert lines[0] == b"* VANISHED 5"
    assert lines[1].startswith(b"* 1 FETCH (FLAGS (\\Answered \\Recent) UID 1 MODSEQ (")
    assert status.startswith(b"OK [HIGHESTMODSEQ ")
    other.logout()


def test_expunges_held_back_during_fetch_are_covered_by_a_lower_highest_modseq(folder, imap_now):
    """RFC 7162 §3.2 and the example of §6: a VANISHED that must wait (FETCH may not send
    it) comes with a HIGHESTMODSEQ from before it, so a client that drops the connection
    then still asks for it."""
    client = enabled(imap_now())
    _, lines = run(client, "SELECT INBOX")
    told = highest(lines)
    other = session_of(imap_now())
    other.select("INBOX")
    other.store("2", "+FLAGS", "\\Deleted")
    other.expunge()
    other.store("3", "+FLAGS", "\\Flagged")  # UID 4, after the expunge
    status, lines = run(client, "FETCH 1 (FLAGS)")
    assert status == b"OK FETCH completed"
    assert not vanished(lines)
    flagged = fetched(lines)[4]
    assert int(re.search(rb"MODSEQ \((\d+)\)", flagged).group(1)) > told
    assert lines[-1] == b"* OK [HIGHESTMODSEQ %d] Expunges not yet reported" % told
    status, lines = run(client, "NOOP")
    assert lines == [b"* VANISHED 2"] and status.startswith(b"OK [HIGHESTMODSEQ ")
    other.logout()


def test_vanished_in_idle_across_two_sessions(folder, imap_now):
    host, port = imap_now()["imap"]
    with IMAPClient(host, port=port, ssl=False, timeout=10) as idler:
        idler.login(ADDRESS, MAILBOX_PASSWORD)
        assert idler.enable("QRESYNC") == [b"QRESYNC"]
        idler.select_folder("INBOX")
        idler.idle()
        other = session_of(imap_now())
        other.select("INBOX")
        other.store("3:4", "+FLAGS", "\\Deleted")
        other.expunge()
        responses = []
        for _ in range(20):
            responses += idler.idle_check(timeout=5)
            if (b"VANISHED", b"3:4") in responses:
                break
        text, _ = idler.idle_done()
        other.logout()
    # The other session's \Deleted came first (FETCH with UID and MODSEQ), then the expunge
    # as one VANISHED of UIDs, never as `n EXPUNGE`.
    assert (b"VANISHED", b"3:4") in responses, responses
    fetched_in_idle = [r for r in responses if len(r) > 2 and r[1] == b"FETCH"]
    assert all(b"UID" in r[2] and b"MODSEQ" in r[2] for r in fetched_in_idle), responses
    assert not any(b"EXPUNGE" in r for r in responses), responses
    assert text.startswith(b"[HIGHESTMODSEQ ")


def test_history_bound_is_honoured_over_the_wire(folder, imap_now, monkeypatch):
    from provider.mailstore import maildir as maildir_module

    monkeypatch.setattr(maildir_module, "MAX_EXPUNGED_REMEMBERED", 1)
    valid, modseq, _ = cache_of(imap_now())
    change_elsewhere(imap_now(), expunge=[1], flag=3)
    folder.modseqs()  # a CONDSTORE session looking in between numbers each expunge
    change_elsewhere(imap_now(), expunge=[2], flag=3)
    folder.modseqs()
    with closing(sqlite3.connect(folder.path / MODSEQ_NAME)) as connection, connection:
        assert connection.execute("SELECT count(*) FROM expunged").fetchone()[0] == 1
    client = enabled(imap_now())
    _, lines = run(client, f"SELECT INBOX (QRESYNC ({valid} {modseq} 1:6))")
    # UID 1's expunge was forgotten: every missing known UID is reported, still exact here.
    assert vanished(lines) == [b"* VANISHED (EARLIER) 1:2"]
