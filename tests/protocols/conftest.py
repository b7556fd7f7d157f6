"""Fixtures for protocol tests: the real listeners on port 0 and small raw-protocol clients."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask

from provider.protocols.server import ProtocolRunner


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        LMTP_PORT=0,
        SMTP_PORT=0,
        HOSTNAME="mx.provider.test",
        # Tiny quotas, so quota limits can be reached with small messages.
        QUOTA_MIN_GB=0.000001,
        MAX_MESSAGE_MB=1,
    )
    return app_config


@dataclass(frozen=True)
class Listeners:
    lmtp: tuple[str, int]
    smtp: tuple[str, int]


@pytest.fixture
def listeners(app: Flask) -> Iterator[Listeners]:
    runner = ProtocolRunner(app, ["lmtp", "smtp"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield Listeners(lmtp=bound["lmtp"], smtp=bound["smtp"])
    finally:
        runner.stop()


class RawClient:
    """A line-level SMTP/LMTP client for what smtplib cannot do (per-recipient LMTP replies,
    bare line endings, pipelined injection)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: its code and its last line's text."""
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            text = line.decode().rstrip("\r\n")
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]), text[4:]

    def start_tls(self, server_hostname: str = "localhost") -> None:
        """Wrap the connection in TLS (after the server said 220 to STARTTLS)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.file = self.sock.makefile("rb")

    def reply_lines(self) -> list[str]:
        """Every line of one multi-line reply."""
        lines = []
        while True:
            raw = self.file.readline()
            if not raw:
                raise ConnectionError("server closed the connection")
            lines.append(raw.decode().rstrip("\r\n"))
            if len(lines[-1]) < 4 or lines[-1][3] != "-":
                return lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
