"""Soak (issue 11, "Done when"): 2,000 idle IMAP connections to a real `provider serve` leave
/healthz, the admin login and a new IMAP login answering. Once, 1,100 such connections were
enough to kill the web thread for good (waitress uses select(), limited to 1,024 descriptors)."""

from __future__ import annotations

import resource
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_supervisor import (
    admin_session,
    environment,
    health,
    imap_login,
    mail_environment,
    supervised,
)

__all__ = ["environment", "mail_environment"]  # fixtures
IDLE_CONNECTIONS = 2000


@pytest.fixture
def open_file_limit() -> Iterator[None]:
    """This test process holds every idle connection itself: raise its own limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_CONNECTIONS + 500
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the open-file hard limit ({hard}) is below {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_2000_idle_imap_connections_leave_the_web_and_imap_answering(
    mail_environment, open_file_limit
):
    with supervised(mail_environment, "web,imap,scheduler") as served:
        port = served.port("imap")
        [mail_pid] = served.pids("mail")
        idle: list[socket.socket] = []
        try:
            for _ in range(IDLE_CONNECTIONS):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=60))
            # Every one was accepted and greeted: the server holds them all open.
            for sock in idle:
                assert sock.recv(100).startswith(b"* OK")
            assert len(list(Path(f"/proc/{mail_pid}/fd").iterdir())) > IDLE_CONNECTIONS

            status, lines = health(served)
            assert status == 200 and lines[0] == "ok", lines
            with urllib.request.urlopen(served.url("/admin/login"), timeout=10) as response:
                assert response.status == 200
            admin_session(served)  # GET the form, then POST a login that succeeds
            client = imap_login(port)
            client.logout()
        finally:
            for sock in idle:
                sock.close()
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0
