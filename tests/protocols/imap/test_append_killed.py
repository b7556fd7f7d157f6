"""kill -9 of the IMAP server half-way through an APPEND: the quota reservation is journaled, so
the start-up settle gives the bytes back (issue 11, item 11) instead of the nightly recount."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import func, select

from provider.models import QuotaReservation
from provider.services import quota
from provider.services.storage import mail_store
from tests.conftest import make_mailbox
from tests.protocols.imap.test_commands import PLAIN, used_bytes

ADDRESS = "alice@example.test"


def _imap_server_stalling_mid_append(config: dict[str, Any], channel: Connection) -> None:
    """Child process: the real IMAP listener on port 0; the first message file written stops
    half-way (forever), so the parent can SIGKILL the server there."""
    from provider import create_app
    from provider.mailstore import diskio
    from provider.protocols.server import ProtocolRunner

    real_write = diskio.write_all

    def half_then_stall(fd: int, data: bytes) -> None:
        if b"doomed" not in data:
            real_write(fd, data)
            return
        real_write(fd, data[: len(data) // 2])
        channel.send("stalled")
        threading.Event().wait()

    diskio.write_all = half_then_stall
    app = create_app(config)
    runner = ProtocolRunner(app, ["imap"])
    ports = {bound.name: bound.port for bound in runner.start()}
    channel.send(ports["imap"])
    threading.Event().wait()


def disk_bytes() -> int:
    inbox = mail_store().open(ADDRESS).folder("INBOX")
    return sum(info.size for info in inbox.messages())


def test_append_killed_mid_write_is_settled_at_start(app, app_config, session):
    mailbox = make_mailbox(session, ADDRESS)
    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_imap_server_stalling_mid_append, args=({**app_config, "IMAP_PORT": 0}, child_end)
    )
    child.start()
    message = b"Subject: doomed\r\n\r\n" + b"x" * 5000 + b"\r\n"
    try:
        assert parent_end.poll(60), "the child IMAP server did not start"
        port = parent_end.recv()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"* OK")
            sock.sendall(b"l AUTHENTICATE PLAIN " + PLAIN + b"\r\n")
            assert reader.readline().startswith(b"l OK")
            sock.sendall(b"a APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
            assert parent_end.poll(60) and parent_end.recv() == "stalled"
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)
            assert reader.readline() == b""  # the connection died with the server
            reader.close()
    finally:
        if child.is_alive():
            child.kill()
            child.join(30)
    assert child.exitcode == -signal.SIGKILL

    # The reservation outlived its process: the mailbox counts bytes it does not hold.
    assert disk_bytes() == 0
    assert used_bytes(session, mailbox) == len(message)
    assert quota.settle_interrupted(app) == 1
    assert used_bytes(session, mailbox) == 0
    assert session.scalar(select(func.count()).select_from(QuotaReservation)) == 0
