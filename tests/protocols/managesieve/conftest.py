"""ManageSieve fixtures: the listener on port 0, a mailbox, and a raw line-level client."""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from provider.protocols.server import ProtocolRunner
from tests.conftest import MAILBOX_PASSWORD, make_mailbox

ADDRESS = "alice@example.test"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(MANAGESIEVE_PORT=0, IMAP_PORT=0, IMAPS_PORT=0, LOGIN_FAILURE_DELAY_SECONDS=0)
    return app_config


@pytest.fixture
def mailbox(session: Session) -> Any:
    return make_mailbox(session, ADDRESS)


@pytest.fixture
def sieve_server(app: Flask) -> Iterator[tuple[str, int]]:
    runner = ProtocolRunner(app, ["managesieve"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound["managesieve"]
    finally:
        runner.stop()


def plain(user: str = ADDRESS, password: str = MAILBOX_PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Client:
    """A raw ManageSieve client: send bytes, read lines and whole responses."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.response()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        return line

    def response(self) -> list[bytes]:
        """Every line up to and including the OK/NO/BYE that ends a response (literals read
        whole and kept in the line that announced them)."""
        lines = []
        while True:
            line = self.line()
            if line.rstrip(b"\r\n").endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1 : line.rindex(b"}")])
                line += self.file.read(size) + self.line()
            lines.append(line)
            if line.startswith((b"OK", b"NO", b"BYE")):
                return lines

    def command(self, text: str | bytes) -> list[bytes]:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.response()

    def login(self, user: str = ADDRESS, password: str = MAILBOX_PASSWORD) -> None:
        last = self.command(f'AUTHENTICATE "PLAIN" "{plain(user, password)}"')[-1]
        assert last.startswith(b"OK"), last

    def start_tls(self) -> list[bytes]:
        assert self.command("STARTTLS")[-1].startswith(b"OK")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        return self.response()

    def closed(self) -> bool:
        """True when the server has closed the connection (EOF), reading what is left."""
        try:
            while self.file.readline():
                pass
        except (ConnectionError, TimeoutError):
            return False
        return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def put(name: str, source: bytes) -> bytes:
    return f'PUTSCRIPT "{name}" {{{len(source)}+}}\r\n'.encode() + source
