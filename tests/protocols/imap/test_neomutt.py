"""NeoMutt (the Debian package) driven through tmux against the server: it enables
UTF8=ACCEPT, opens a folder with a non-ASCII name, deletes a message and syncs (STORE, EXPUNGE).
A missing neomutt or tmux skips, unless PROVIDER_REQUIRE_CLIENTS=1."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox, wait_until
from tests.protocols.imap.test_session import logged_in

FOLDER = "Gesendete Grüße"


def message(subject: str) -> bytes:
    return (
        f"From: Jürgen <juergen@example.test>\r\nTo: alice@example.test\r\n"
        f"Subject: {subject}\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHallo.\r\n"
    ).encode()


def binaries() -> tuple[str, str]:
    found = shutil.which("neomutt"), shutil.which("tmux")
    if None in found:
        if os.environ.get("PROVIDER_REQUIRE_CLIENTS") == "1":
            pytest.fail("neomutt or tmux is missing, and PROVIDER_REQUIRE_CLIENTS=1")
        pytest.skip("neomutt or tmux is not installed")
    return found  # type: ignore[return-value]


def test_neomutt_deletes_in_a_utf8_folder(session, imap, tmp_path: Path):
    neomutt, tmux = binaries()
    make_mailbox(session)
    client = logged_in(imap)
    client.enable("UTF8=ACCEPT")
    assert client.create(f'"{FOLDER}"')[0] == "OK"
    for subject in ("Erste Nachricht", "Zweite Nachricht"):
        assert client.append(f'"{FOLDER}"', None, None, message(subject))[0] == "OK"
    client.logout()
    host, port = imap["imap"]
    log = tmp_path / "neomutt.log"
    rc = tmp_path / "neomuttrc"
    rc.write_text(
        "\n".join(
            [
                f'set folder="imap://alice@example.test@{host}:{port}/"',
                f'set spoolfile="={FOLDER}"',
                f'set imap_pass="{MAILBOX_PASSWORD}"',
                "set ssl_starttls=no",
                "set ssl_force_tls=no",
                "set delete=yes",
                "set quit=yes",
                "set sort=date",
                "set charset=utf-8",
                "set imap_idle=no",
                "",
            ]
        ),
        "utf-8",
    )
    name = f"neomutt-{uuid.uuid4().hex[:8]}"
    command = f"{neomutt} -n -F {rc} -d 5 -l {log}"
    env = {**os.environ, "HOME": str(tmp_path), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    subprocess.run(
        [tmux, "new-session", "-d", "-s", name, "-x", "160", "-y", "40", command],
        check=True,
        env=env,
    )

    def screen() -> str:
        result = subprocess.run(
            [tmux, "capture-pane", "-p", "-t", name], capture_output=True, text=True, env=env
        )
        return result.stdout

    try:
        assert wait_until(lambda: "Zweite Nachricht" in screen(), timeout=20), screen()
        subprocess.run([tmux, "send-keys", "-t", name, "d"], check=True, env=env)
        subprocess.run([tmux, "send-keys", "-t", name, "$"], check=True, env=env)
        folder = mail_store().open("alice@example.test").folder(FOLDER)
        assert wait_until(lambda: len(folder.messages()) == 1, timeout=20), screen()
        subprocess.run([tmux, "send-keys", "-t", name, "q"], check=True, env=env)
    finally:
        subprocess.run([tmux, "kill-session", "-t", name], capture_output=True, env=env)
    left = folder.read(folder.messages()[0].uid)
    assert b"Zweite Nachricht" in left or b"Erste Nachricht" in left
    logs = "".join(p.read_text("utf-8", "replace") for p in tmp_path.glob("neomutt.log*"))
    assert "ENABLE UTF8=ACCEPT" in logs
    assert f'SELECT "{FOLDER}"' in logs
