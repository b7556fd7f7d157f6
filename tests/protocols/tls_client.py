"""A TLS client over a plain socket that sends its first command in the handshake's last flight."""

from __future__ import annotations

import socket
import ssl


class EagerTlsClient:
    """TLS on a connected socket via ssl.MemoryBIO, so the test decides what goes in one segment.

    `handshake(first)` finishes the handshake and sends the client's Finished message together
    with `first` (already encrypted) in a single write, as fast clients (curl, mbsync) often do:
    the server then receives the first command in the same read as the end of the handshake.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.buffer = b""

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.incoming.write(data)

    def handshake(self, first: bytes) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self.tls.write(first)
        self._flush()  # the Finished message and `first` in one segment

    def readline(self) -> bytes:
        while b"\n" not in self.buffer:
            try:
                self.buffer += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()
