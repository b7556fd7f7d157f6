"""Memory of the IMAP server process under stalled `FETCH 1:* BODY.PEEK[]` readers (issue 11).

The server runs in a process of its own (`serve`: the protocol runner with the IMAP listeners,
configured from PROVIDER_* settings as `provider serve` is); clients log in, send the FETCH on a
socket with a small receive buffer and never read. The figure is the growth of the server's
VmRSS (/proc/PID/status) from before the FETCH commands to its peak while they are stalled.

    .venv/bin/python bench/stalled_fetch.py [--megabytes 100] [--connections 5]

builds a throwaway instance (SQLite, one mailbox holding --megabytes of mail), measures, and
prints the figures. tests/protocols/imap/test_backpressure.py asserts a bound with the same code.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from provider.mailstore import Folder, IncomingMessage

ROOT = Path(__file__).resolve().parent.parent
CLIENT_RECEIVE_BUFFER = 64 * 1024
STALL_WINDOW = 3.0  # seconds of sampling once every reader has started receiving


def vm_rss(pid: int) -> int:
    """Resident set size of the process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1)) * 1024


def mail(number: int, size: int) -> bytes:
    """A message of about `size` octets that no layer can compress: base64 lines of random
    octets, as an attachment looks."""
    encoded = base64.b64encode(os.urandom(size * 3 // 4))
    body = b"".join(encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76))
    head = (
        f"From: bench@example.net\r\nTo: alice@example.test\r\nSubject: stalled fetch {number}\r\n"
        f"Message-ID: <stall-{number}@bench.test>\r\n\r\n"
    ).encode()
    return head + body


def fill(folder: Folder, megabytes: int) -> int:
    """Deliver about `megabytes` MB into `folder`: one message in ten of 2 MB (streamed
    literals), the others of 200 KB (built a batch at a time); the octets delivered."""
    target = megabytes * 1024 * 1024
    return fill_sized(folder, target, 200 * 1024, every_tenth=2 * 1024 * 1024)


def fill_sized(folder: Folder, total: int, size: int, every_tenth: int | None = None) -> int:
    """Deliver messages of about `size` octets (every tenth of `every_tenth`) until `total`
    octets are in `folder`; the octets delivered."""
    delivered = 0
    number = 0
    batch: list[IncomingMessage] = []
    while delivered < total:
        wanted = every_tenth if every_tenth is not None and number % 10 == 0 else size
        data = mail(number, wanted)
        batch.append(IncomingMessage(data))
        delivered += len(data)
        number += 1
        if len(batch) >= 20 or delivered >= total:
            folder.deliver_many(batch)
            batch = []
    return delivered


@dataclass
class Server:
    process: subprocess.Popen[str]
    host: str
    port: int


@contextlib.contextmanager
def serving(env: dict[str, str]) -> Iterator[Server]:
    """The IMAP listeners in a child process (this module's `serve`), until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.stalled_fetch", "serve"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        line = process.stdout.readline()
        match = re.match(r"IMAP (\S+) (\d+)", line)
        if match is None:
            raise RuntimeError(f"the IMAP server did not start: {line!r}")
        yield Server(process, match.group(1), int(match.group(2)))
    finally:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()  # `serve` stops on end of input
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def serve() -> None:
    """Run the IMAP listeners until standard input ends; print where they listen."""
    from provider import create_app
    from provider.protocols.server import ProtocolRunner

    app = create_app()
    runner = ProtocolRunner(app, ["imap"])
    bound = {b.name: b for b in runner.start()}
    print(f"IMAP {bound['imap'].host} {bound['imap'].port}", flush=True)
    sys.stdin.read()
    runner.stop()


class StalledReader:
    """A logged-in IMAP connection that sends FETCH 1:* BODY.PEEK[] and then never reads."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.sock = socket.socket()
        # A small window, so the kernel holds little on the client's side.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RECEIVE_BUFFER)
        self.sock.settimeout(30)
        self.sock.connect((host, port))
        self.file = self.sock.makefile("rb", buffering=0)
        self._line()
        self._command(f'a LOGIN "{user}" "{password}"')
        self._command("b SELECT INBOX")

    def _line(self) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            byte = self.file.read(1)
            if not byte:
                raise ConnectionError("server closed the connection")
            line += byte
        return line

    def _command(self, text: str) -> None:
        tag = text.split()[0].encode()
        self.sock.sendall(text.encode() + b"\r\n")
        while not (line := self._line()).startswith(tag + b" "):
            pass
        if not line.startswith(tag + b" OK"):
            raise RuntimeError(line.decode(errors="replace"))

    def stall(self) -> None:
        self.sock.sendall(b"c FETCH 1:* BODY.PEEK[]\r\n")

    def pending(self) -> int:
        """Octets received and not read."""
        buffer = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
        return int(struct.unpack("i", buffer)[0])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass(frozen=True)
class Measurement:
    baseline: int  # server VmRSS with the readers logged in, before the FETCH commands
    peak: int  # highest VmRSS sampled while they were stalled
    connections: int
    mailbox_bytes: int

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def measure(
    pid: int,
    host: str,
    port: int,
    user: str,
    password: str,
    *,
    connections: int = 5,
    mailbox_bytes: int = 0,
    window: float = STALL_WINDOW,
) -> Measurement:
    """Stall `connections` readers on the server process `pid`; its VmRSS growth."""
    readers = [StalledReader(host, port, user, password) for _ in range(connections)]
    try:
        baseline = vm_rss(pid)
        peak = baseline
        for reader in readers:
            reader.stall()
        # Wait (with a deadline) until the server has started answering every reader ...
        deadline = time.monotonic() + 60
        while not all(reader.pending() > 0 for reader in readers):
            if time.monotonic() > deadline:
                raise RuntimeError("the server never started answering the FETCH commands")
            peak = max(peak, vm_rss(pid))
            threading.Event().wait(0.02)
        # ... then sample for a window: a buffering server keeps growing, a streaming one
        # stops once the sockets are full.
        end = time.monotonic() + window
        while time.monotonic() < end:
            peak = max(peak, vm_rss(pid))
            threading.Event().wait(0.02)
        return Measurement(baseline, peak, connections, mailbox_bytes)
    finally:
        for reader in readers:
            reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--connections", type=int, default=5)
    arguments = parser.parse_args()

    from provider import create_app
    from provider.extensions import db
    from provider.services import provisioning
    from provider.services.audit import Actor
    from provider.services.storage import mail_store

    password = "stalled fetch bench passphrase"
    with tempfile.TemporaryDirectory(prefix="stalled-fetch-") as work:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVIDER_")}
        env.update(
            PROVIDER_INSTANCE_DIR=work,
            PROVIDER_DATA_DIR=f"{work}/data",
            PROVIDER_DATABASE_URL=f"sqlite:///{work}/bench.db",
            PROVIDER_IMAP_PORT="0",
            PROVIDER_IMAPS_PORT="0",
            PYTHONPATH=str(ROOT),
        )
        os.environ.update({k: v for k, v in env.items() if k.startswith("PROVIDER_")})
        app = create_app()
        with app.app_context():
            from flask_migrate import upgrade

            upgrade(directory=app.extensions["migrate"].directory)
            actor = Actor("bench", "127.0.0.1")
            provisioning.create_domain(db.session, "example.test", actor=actor)
            provisioning.create_mailbox(
                db.session,
                "alice@example.test",
                actor=actor,
                password=password,
                quota_gb=100,
                protocols="imap",
            )
            db.session.commit()
            started = time.monotonic()
            size = fill(
                mail_store().open("alice@example.test").folder("INBOX"), arguments.megabytes
            )
            print(f"mailbox: {size / 2**20:.0f} MB in {time.monotonic() - started:.1f} s")
        with serving(env) as server:
            result = measure(
                server.process.pid,
                server.host,
                server.port,
                "alice@example.test",
                password,
                connections=arguments.connections,
                mailbox_bytes=size,
            )
    print(
        f"{result.connections} stalled FETCH 1:* BODY.PEEK[] readers on a "
        f"{result.mailbox_bytes / 2**20:.0f} MB mailbox: server VmRSS "
        f"{result.baseline / 2**20:.1f} MB before, peak {result.peak / 2**20:.1f} MB, "
        f"growth {result.growth / 2**20:.1f} MB"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        main()
