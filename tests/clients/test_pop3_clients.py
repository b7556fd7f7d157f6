"""External POP3 clients (fetchmail, getmail6) against this project's POP3 server.

"Leave a copy on the server" must never download a message twice: each client runs three times
with a new delivery in between (and a server restart), and every message must arrive exactly
once. getmail6 also runs in delete mode: the messages leave the server and their quota is
given back. The clients are the Debian packages fetchmail and getmail6; a missing binary skips,
unless PROVIDER_REQUIRE_CLIENTS=1 (CI), then it fails. Plaintext POP3 on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from provider.extensions import db
from provider.mailstore import forget_cached_state
from provider.models import Mailbox
from provider.protocols.server import ProtocolRunner
from provider.services import delivery
from provider.services.storage import mail_store
from tests.clients.test_sync_clients import required
from tests.conftest import make_mailbox

ADDRESS = "alice@example.test"
PASSWORD = "pop3-clients-secret"
CLIENT_TIMEOUT = 120.0


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(POP3_PORT=0, POP3S_PORT=0, LOGIN_FAILURE_DELAY_SECONDS=0)
    return app_config


class Server:
    """The POP3 listeners, restartable (stop, forget cached state as a new process, start)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.runner: ProtocolRunner | None = None
        self.port = 0

    def start(self) -> None:
        self.runner = ProtocolRunner(self.app, ["pop3"])
        self.port = {b.name: b.port for b in self.runner.start()}["pop3"]

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            self.runner = None

    def restart(self) -> None:
        """On the same port: clients key what they have seen by server and port."""
        self.stop()
        forget_cached_state()
        self.app.config["POP3_PORT"] = self.port
        self.start()


@pytest.fixture
def server(app: Flask, session: Session) -> Iterator[Server]:
    make_mailbox(session, ADDRESS, password=PASSWORD, protocols="imap,pop3")
    running = Server(app)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def message(number: int) -> bytes:
    body = "".join(f"line {n} of message {number}\r\n" for n in range(5 + number))
    return (
        f"From: Sender <sender@example.net>\r\nTo: {ADDRESS}\r\nSubject: message {number}\r\n"
        f"Message-ID: <{number}@pop3.test>\r\n\r\n.leading dot\r\n{body}"
    ).encode()


def deliver(session: Session, number: int) -> None:
    delivery.store_message(
        session, mail_store(), delivery.resolve(session, ADDRESS), message(number)
    )


def message_ids(directory: Path) -> list[str]:
    """Message-IDs of every file under `directory` (duplicates kept, to be counted)."""
    parser = BytesHeaderParser()
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            found.append(str(parser.parsebytes(path.read_bytes())["Message-ID"]))
    return sorted(found)


def run(command: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> str:
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode in ok, f"{command[0]} exited {result.returncode}:\n{output}"
    return output


# --- fetchmail ------------------------------------------------------------------------------------


def fetchmail(work: Path, port: int) -> str:
    """One fetchmail run in keep mode with UIDL tracking; each message into its own file."""
    inbox = work / "received"
    inbox.mkdir(exist_ok=True)
    rc = work / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\n"
        f"poll 127.0.0.1 service {port} protocol pop3 uidl auth password\n"
        f'  user "{ADDRESS}" there with password "{PASSWORD}" is "local" here\n'
        "  keep sslproto ''\n"
        f'  mda "cat > $(mktemp {inbox}/msg.XXXXXX)"\n'
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(work), "FETCHMAILHOME": str(work)}
    command = ["fetchmail", "--nodetach", "--nosyslog", "-f", str(rc), "-i", str(work / "ids")]
    # As root its default pid file is /var/run/fetchmail.pid, shared with any other run.
    command += ["--pidfile", str(work / "fetchmail.pid")]
    # 0: messages were retrieved; 1: there was no new mail.
    return run(command, env, ok=(0, 1))


def test_fetchmail_keep_mode_downloads_each_message_exactly_once(
    server: Server, session: Session, tmp_path: Path
) -> None:
    if shutil.which("fetchmail") is None:
        required("fetchmail is not installed (apt-get install fetchmail)")
    for number in range(3):
        deliver(session, number)
    fetchmail(tmp_path, server.port)
    assert message_ids(tmp_path / "received") == [f"<{n}@pop3.test>" for n in range(3)]

    deliver(session, 3)
    server.restart()
    fetchmail(tmp_path, server.port)
    deliver(session, 4)
    (mail_store().path_for(ADDRESS) / "dovecot-uidlist").unlink()  # UIDs renumbered
    server.restart()
    fetchmail(tmp_path, server.port)
    assert message_ids(tmp_path / "received") == [f"<{n}@pop3.test>" for n in range(5)]
    # Keep mode: everything is still on the server, byte for byte.
    folder = mail_store().open(ADDRESS).folder("INBOX")
    assert sorted(folder.read(info.uid) for info in folder.messages()) == sorted(
        message(n) for n in range(5)
    )
    received = sorted(p.read_bytes() for p in (tmp_path / "received").iterdir())
    # fetchmail adds its Received header; the message itself arrives unchanged (dot-stuffing
    # undone, CRLF → LF for the local MDA).
    for number in range(5):
        original = message(number).replace(b"\r\n", b"\n")
        assert any(data.endswith(original) for data in received), number


# --- getmail6 -------------------------------------------------------------------------------------


def getmail(work: Path, port: int, *, delete: bool) -> str:
    """One getmail6 run; each message into its own file through an external MDA (its Maildir
    and mbox destinations refuse to run as root, as CI containers do)."""
    inbox = work / "received"
    inbox.mkdir(exist_ok=True)
    (work / "getmailrc").write_text(
        "[retriever]\n"
        "type = SimplePOP3Retriever\n"
        "server = 127.0.0.1\n"
        f"port = {port}\n"
        f"username = {ADDRESS}\n"
        f"password = {PASSWORD}\n"
        "[destination]\n"
        "type = MDA_external\n"
        "path = /bin/sh\n"
        f"arguments = ('-c', 'cat > \"$(mktemp {inbox}/msg.XXXXXX)\"')\n"
        "allow_root_commands = true\n"
        "[options]\n"
        "verbose = 0\n"
        "read_all = false\n"
        f"delete = {'true' if delete else 'false'}\n"
    )
    env = {**os.environ, "HOME": str(work)}
    command = ["getmail", "--getmaildir", str(work), "--rcfile", "getmailrc"]
    return run(command, env)


def used_bytes(session: Session) -> int:
    session.expire_all()
    return session.scalar(db.select(Mailbox.used_bytes).where(Mailbox.address == ADDRESS))


def test_getmail_keep_mode_then_delete_mode(
    server: Server, session: Session, tmp_path: Path
) -> None:
    if shutil.which("getmail") is None:
        required("getmail6 is not installed (apt-get install getmail6)")
    for number in range(3):
        deliver(session, number)
    getmail(tmp_path, server.port, delete=False)
    deliver(session, 3)
    server.restart()
    getmail(tmp_path, server.port, delete=False)
    getmail(tmp_path, server.port, delete=False)
    assert message_ids(tmp_path / "received") == [f"<{n}@pop3.test>" for n in range(4)]
    assert len(mail_store().open(ADDRESS).folder("INBOX").messages()) == 4
    assert used_bytes(session) == sum(len(message(n)) for n in range(4))

    # Delete mode in a fresh client directory: everything is downloaded once and removed.
    fresh = tmp_path / "delete"
    fresh.mkdir()
    getmail(fresh, server.port, delete=True)
    assert message_ids(fresh / "received") == [f"<{n}@pop3.test>" for n in range(4)]
    assert mail_store().open(ADDRESS).folder("INBOX").messages() == []
    assert used_bytes(session) == 0


def test_fetchmail_checks_the_self_signed_certificate_for_127_0_0_1(
    app: Flask, server: Server, session: Session, tmp_path: Path
) -> None:
    """The generated certificate names 127.0.0.1 the way fetchmail checks it (as a DNS name):
    with `sslcertck` and the instance's certificate as the trusted one, POP3S works."""
    if shutil.which("fetchmail") is None:
        required("fetchmail is not installed (apt-get install fetchmail)")
    from provider.tls import certificate_paths

    deliver(session, 0)
    runner = ProtocolRunner(app, ["pop3"])
    ports = {b.name: b.port for b in runner.start()}
    try:
        cert, _key = certificate_paths(app.config)
        inbox = tmp_path / "received"
        inbox.mkdir()
        rc = tmp_path / "fetchmailrc"
        rc.write_text(
            f"poll 127.0.0.1 service {ports['pop3s']} protocol pop3 uidl auth password\n"
            f'  user "{ADDRESS}" there with password "{PASSWORD}" is "local" here\n'
            f"  keep ssl sslcertck sslcertfile {cert}\n"
            f'  mda "cat > $(mktemp {inbox}/msg.XXXXXX)"\n'
        )
        rc.chmod(0o600)
        env = {**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)}
        command = ["fetchmail", "--nodetach", "--nosyslog", "-f", str(rc), "-v"]
        command += ["--pidfile", str(tmp_path / "fetchmail.pid")]
        output = run(command, env, ok=(0,))
    finally:
        runner.stop()
    assert "mismatch" not in output
    assert message_ids(inbox) == ["<0@pop3.test>"]
