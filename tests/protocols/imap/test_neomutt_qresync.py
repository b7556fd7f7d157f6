"""NeoMutt (the Debian package, in tmux) with `imap_qresync` and a header cache: after another
session expunged and flagged messages, it reopens the folder with SELECT (QRESYNC ...), is told
VANISHED (EARLIER), and shows the right messages. A missing neomutt or tmux skips, unless
PROVIDER_REQUIRE_CLIENTS=1."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox, wait_until
from tests.protocols.imap.test_neomutt import binaries
from tests.protocols.imap.test_session import logged_in


def message(n: int) -> bytes:
    return (
        f"From: Sender <sender@example.test>\r\nTo: alice@example.test\r\n"
        f"Subject: Resync message {n}\r\nDate: Mon, 01 Jan 2024 10:0{n}:00 +0000\r\n"
        f"Message-ID: <resync{n}@example.test>\r\n\r\nBody {n}.\r\n"
    ).encode()


@contextmanager
def neomutt_running(imap, home: Path, name: str) -> Iterator[Callable[[], str]]:
    neomutt, tmux = binaries()
    host, port = imap["imap"]
    rc = home / "neomuttrc"
    rc.write_text(
        "\n".join(
            [
                f'set folder="imap://alice@example.test@{host}:{port}/"',
                'set spoolfile="=INBOX"',
                f'set imap_pass="{MAILBOX_PASSWORD}"',
                "set ssl_starttls=no",
                "set ssl_force_tls=no",
                "set imap_qresync=yes",
                "set imap_condstore=yes",
                f'set header_cache="{home / "hcache"}"',
                "set sort=date",
                "set imap_idle=no",
                "set mark_old=no",
                "set status_format='-%f [Msgs:%m]-'",
                "",
            ]
        ),
        "utf-8",
    )
    log = home / f"{name}.log"
    env = {**os.environ, "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    session = f"neomutt-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            tmux,
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "160",
            "-y",
            "40",
            f"{neomutt} -n -F {rc} -d 5 -l {log}",
        ],
        check=True,
        env=env,
    )

    def screen() -> str:
        result = subprocess.run(
            [tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True, env=env
        )
        return result.stdout

    try:
        yield screen
        subprocess.run([tmux, "send-keys", "-t", session, "q"], check=True, env=env)
        wait_until(
            lambda: (
                subprocess.run(
                    [tmux, "has-session", "-t", session], capture_output=True, env=env
                ).returncode
                != 0
            ),
            timeout=10,
        )
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True, env=env)


def traffic(home: Path, name: str) -> str:
    return "".join(p.read_text("utf-8", "replace") for p in home.glob(f"{name}.log*"))


def change_elsewhere(imap, expunge: str | None, flag: str) -> None:
    other = logged_in(imap)
    other.select("INBOX")
    if expunge is not None:
        other.uid("STORE", expunge, "+FLAGS", "(\\Deleted)")
        other.expunge()
    other.uid("STORE", flag, "+FLAGS", "(\\Flagged)")
    other.logout()


def flagged(shown: str, subject: str) -> bool:
    [line] = [row for row in shown.splitlines() if subject in row]
    return "!" in line.split("Resync")[0]  # the index's flag column


def test_neomutt_resyncs_with_qresync_after_another_session_expunged(session, imap, tmp_path):
    """NeoMutt 20220429 resyncs with SELECT (CONDSTORE), then UID FETCH 1:n (FLAGS)
    (CHANGEDSINCE m VANISHED), from its header cache."""
    binaries()
    make_mailbox(session)
    folder = mail_store().open("alice@example.test").folder("INBOX")
    for n in range(1, 6):
        folder.deliver(message(n))

    with neomutt_running(imap, tmp_path, "first") as screen:
        assert wait_until(lambda: "[Msgs:5]" in screen(), timeout=20), screen()
    first = traffic(tmp_path, "first")
    assert "ENABLE QRESYNC" in first and "* ENABLED QRESYNC" in first, first[-3000:]

    # A flag changed elsewhere: resynced from the header cache alone.
    change_elsewhere(imap, expunge=None, flag="1")
    with neomutt_running(imap, tmp_path, "second") as screen:
        assert wait_until(lambda: "[Msgs:5]" in screen(), timeout=20), screen()
        assert wait_until(lambda: flagged(screen(), "Resync message 1"), timeout=10), screen()
    second = traffic(tmp_path, "second")
    assert re.search(r"UID FETCH 1:5 \(FLAGS\) \(CHANGEDSINCE \d+ VANISHED\)", second)
    assert "QRESYNC failed" not in second
    assert "BODY.PEEK[HEADER.FIELDS" not in second  # no header fetched again

    # Messages expunged elsewhere: told exactly which (VANISHED (EARLIER)), NeoMutt shows the
    # right messages. (NeoMutt 20220429 keeps its cached message numbers through VANISHED
    # (EARLIER), so its own consistency check then fails and it reloads the flags; see
    # DESIGN-NOTES "IMAP QRESYNC".)
    change_elsewhere(imap, expunge="2,4", flag="3")
    with neomutt_running(imap, tmp_path, "third") as screen:
        assert wait_until(lambda: "[Msgs:3]" in screen(), timeout=20), screen()
        shown = screen()
        assert all(f"Resync message {n}" in shown for n in (1, 3, 5)), shown
        assert "Resync message 2" not in shown and "Resync message 4" not in shown
        assert flagged(shown, "Resync message 3"), shown
    third = traffic(tmp_path, "third")
    assert re.search(r"UID FETCH 1:5 \(FLAGS\) \(CHANGEDSINCE \d+ VANISHED\)", third)
    assert "< * VANISHED (EARLIER) 2,4\n" in third, third[-3000:]
