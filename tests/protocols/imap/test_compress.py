"""COMPRESS=DEFLATE (RFC 4978) on real sockets: a whole session deflated both ways, over plain
TCP and TLS, and what a broken or hostile deflate stream gets."""

from __future__ import annotations

import imaplib
import os
import socket
import ssl
import zlib

import pytest

from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox, wait_until
from tests.protocols.imap.test_session import connect, logged_in

BIG = b"From: a@b.test\r\nTo: alice@example.test\r\nSubject: big\r\n\r\n" + b"".join(
    b"line %d of a long message, compressible text\r\n" % n for n in range(12000)
)


imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))


class DeflateIMAP4(imaplib.IMAP4):
    """imaplib with COMPRESS DEFLATE (imaplib has none): after the tagged OK, what is sent
    is deflated and what is read inflated, as Thunderbird and K-9 do."""

    compressing = False

    def compress(self) -> tuple[str, list[bytes]]:
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK":
            self.compressing = True
            self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._inflate = zlib.decompressobj(-15)
            self._inbuf = b""
        return typ, data

    def deflated(self, data: bytes) -> bytes:
        return self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.deflated(data) if self.compressing else data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise imaplib.IMAP4.abort("socket closed")
        self._inbuf += self._inflate.decompress(chunk)

    def read(self, size: int) -> bytes:
        if not self.compressing:
            return super().read(size)
        while len(self._inbuf) < size:
            self._fill()
        data, self._inbuf = self._inbuf[:size], self._inbuf[size:]
        return data

    def readline(self) -> bytes:
        if not self.compressing:
            return super().readline()
        while b"\n" not in self._inbuf:
            self._fill()
        line, _, self._inbuf = self._inbuf.partition(b"\n")
        return line + b"\n"


class DeflateIMAP4_SSL(DeflateIMAP4, imaplib.IMAP4_SSL):  # imaplib's naming
    pass


def compressed_session(imap) -> DeflateIMAP4:
    client = DeflateIMAP4(*imap["imap"], timeout=10)
    client.login("alice@example.test", MAILBOX_PASSWORD)
    assert b"COMPRESS=DEFLATE" in client.capability()[1][0].split()
    assert client.compress() == ("OK", [b"DEFLATE active"])
    return client


def test_capability_only_after_login(session, imap):
    make_mailbox(session)
    client = connect(imap)
    assert "COMPRESS=DEFLATE" not in client.capabilities
    client.send(b"a COMPRESS DEFLATE\r\n")
    assert client.readline().startswith(b"a BAD")
    client.logout()


def test_a_whole_session_deflated(session, imap):
    make_mailbox(session)
    client = compressed_session(imap)
    assert client.append("INBOX", "(\\Flagged)", None, BIG)[0] == "OK"  # a synchronizing literal
    assert client.select("INBOX") == ("OK", [b"1"])
    typ, data = client.fetch("1", "(FLAGS BODY.PEEK[])")  # > 256 KiB: streamed from the file
    assert typ == "OK" and data[0][1] == BIG and b"\\Flagged" in data[0][0]
    assert client.search(None, "SUBJECT", "big") == ("OK", [b"1"])
    assert client.store("1", "+FLAGS", "(\\Seen)")[0] == "OK"
    typ, data = client.uid("SEARCH", "RETURN", "(COUNT)", "SEEN")
    assert typ == "OK"
    client.logout()


def test_idle_over_deflate_sees_a_delivery_at_once(session, imap):
    make_mailbox(session)
    client = compressed_session(imap)
    client.select("INBOX")
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    mail_store().open("alice@example.test").folder("INBOX").deliver(BIG[:200])
    assert client.readline() == b"* 1 EXISTS\r\n"  # flushed: no waiting for more output
    client.send(b"DONE\r\n")
    while not (line := client.readline()).startswith(tag):
        pass
    assert line.startswith(tag + b" OK")
    client.logout()


def test_deflate_inside_tls(session, imap):
    make_mailbox(session)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = DeflateIMAP4_SSL(*imap["imaps"], ssl_context=context, timeout=10)
    client.login("alice@example.test", MAILBOX_PASSWORD)
    assert client.compress()[0] == "OK"
    assert client.append("INBOX", None, None, BIG)[0] == "OK"
    client.select("INBOX")
    assert client.fetch("1", "(BODY.PEEK[])")[1][0][1] == BIG
    client.logout()


def test_compress_twice_or_unknown_mechanism_is_bad(session, imap):
    make_mailbox(session)
    client = logged_in(imap)
    for command in (
        b"COMPRESS",
        b"COMPRESS GZIP",
        b"COMPRESS DEFLATE DEFLATE",
        b"COMPRESS (DEFLATE)",
    ):
        client.send(b"x " + command + b"\r\n")
        assert client.readline().startswith(b"x BAD"), command
    client.logout()
    client = compressed_session(imap)
    assert client._simple_command("NOOP")[0] == "OK"
    tag = client._new_tag()
    client.send(tag + b" COMPRESS DEFLATE\r\n")
    assert client.readline().startswith(tag + b" BAD")
    client.logout()


def test_commands_sent_right_after_compress_are_inflated(session, imap):
    """A client that does not wait for the OK: what follows COMPRESS in the same packet is
    already deflate (RFC 4978 §3) and must be read as such."""
    make_mailbox(session)
    sock = socket.create_connection(imap["imap"], timeout=10)
    reader = sock.makefile("rb", buffering=0)
    reader.readline()
    sock.sendall(f'a LOGIN alice@example.test "{MAILBOX_PASSWORD}"\r\n'.encode())
    assert reader.readline().startswith(b"a OK")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    packet = deflate.compress(b"c NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH)
    sock.sendall(b"b COMPRESS DEFLATE\r\n" + packet)
    assert reader.readline() == b"b OK DEFLATE active\r\n"
    inflate = zlib.decompressobj(-15)
    got = b""
    while b"c OK" not in got:
        got += inflate.decompress(sock.recv(4096))
    assert got.startswith(b"c OK NOOP")
    sock.close()


def test_garbage_instead_of_deflate_ends_only_that_session(session, imap):
    make_mailbox(session)
    sock = socket.create_connection(imap["imap"], timeout=10)
    reader = sock.makefile("rb", buffering=0)
    reader.readline()
    sock.sendall(
        f'a LOGIN alice@example.test "{MAILBOX_PASSWORD}"\r\nb COMPRESS DEFLATE\r\n'.encode()
    )
    assert reader.readline().startswith(b"a OK")
    assert reader.readline().startswith(b"b OK")
    sock.sendall(os.urandom(64) + b"\xff" * 64)
    assert wait_until(lambda: reader.read(4096) == b"", timeout=10)
    sock.close()
    other = compressed_session(imap)
    assert other._simple_command("NOOP")[0] == "OK"
    other.logout()


@pytest.mark.parametrize("megabytes", [40])
def test_deflate_bomb_is_read_a_chunk_at_a_time(session, imap, megabytes):
    """40 MB of one octet without a line end deflates to ~40 KB: the server inflates it a
    chunk at a time as it skips the overlong line (BAD), and the session goes on."""
    make_mailbox(session)
    client = compressed_session(imap)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"A" * (megabytes << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(payload) < 100_000
    client._deflate = bomb  # continue the same stream
    client.sock.sendall(payload)
    client.send(b"\r\nz NOOP\r\n")
    assert client.readline().startswith(b"* BAD Line too long")
    line = client.readline()
    while line.startswith(b"*"):
        line = client.readline()
    assert line.startswith(b"z OK")
    client.logout()


class FakeTransport:
    """Records what the deflate layer asks of the connection."""

    def __init__(self) -> None:
        self.written = b""
        self.reading = True
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = True


class FakeWriter:
    def __init__(self, transport: FakeTransport) -> None:
        self._transport = transport

    @property
    def transport(self) -> object:
        return self._transport


def test_inflation_stops_while_the_reader_is_full():
    """The reader holds at most about twice its limit plus one chunk of inflated octets at a
    time, however well the input compresses; the rest waits compressed until it is read."""
    import asyncio

    from provider.protocols.imap.compress import CHUNK, DeflateTransport

    async def run() -> tuple[int, int, bool, bool]:
        reader = asyncio.StreamReader(limit=65536)
        inner = FakeTransport()
        reader.set_transport(inner)  # type: ignore[arg-type]
        layer = DeflateTransport(inner, reader, FakeWriter(inner))  # type: ignore[arg-type]
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = bomb.compress(b"A" * (20 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
        reader.feed_data(payload)  # as the protocol would, on data_received
        held = len(reader._buffer)  # type: ignore[attr-defined]
        paused = not inner.reading
        total = 0
        while total < 20 << 20:
            total += len(await reader.read(1 << 20))
        layer.write(b"* OK hello\r\n")
        answer = zlib.decompressobj(-15).decompress(inner.written)
        return held, total, paused, answer == b"* OK hello\r\n"

    held, total, paused, written = asyncio.run(run())
    assert held <= 2 * 65536 + CHUNK and paused
    assert total == 20 << 20 and written
