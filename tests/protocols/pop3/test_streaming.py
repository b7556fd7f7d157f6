"""RETR and TOP of big messages stream from the file (issue 11 item 2): the same octets as the
in-memory forms, and a client that stops reading holds only a bounded amount of memory."""

from __future__ import annotations

import asyncio
import io
import socket
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from provider.protocols.pop3 import INLINE_READ, TopStream, WireStream, top_form, wire_form
from provider.services.mail_access import guards
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox, wait_until
from tests.protocols.pop3.conftest import ADDRESS

MB = 1024 * 1024
PIECES = st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n\r\n", b"..", b"\r\n."])


def drain(stream: WireStream | TopStream) -> bytes:
    out = b""
    while chunk := stream.next_chunk():
        out += chunk
    return out


@settings(max_examples=2000, deadline=None)
@given(st.lists(PIECES, max_size=40).map(b"".join), st.integers(1, 9), st.integers(0, 6))
def test_streamed_forms_equal_the_in_memory_ones(data, chunk, lines):
    assert drain(WireStream(io.BytesIO(data), chunk)) == wire_form(data)
    streamed = drain(TopStream(WireStream(io.BytesIO(data), chunk), lines))
    assert streamed == top_form(data, lines)


def test_top_keeps_an_empty_first_body_line():
    assert top_form(b"Subject: x\r\n\r\n\r\nsecond\r\n", 1) == b"Subject: x\r\n\r\n\r\n"
    assert top_form(b"Subject: x\r\n\r\n\r\nsecond\r\n", 2) == (b"Subject: x\r\n\r\n\r\nsecond\r\n")


def big_message() -> bytes:
    """About 2 MB, bare LFs, lines starting with dots, no final line end."""
    lines = [b"Subject: big", b"From: a@b.test", b""]
    lines += [b".dotted line %d" % n if n % 7 == 0 else b"line %d" % n for n in range(200_000)]
    return b"\n".join(lines)


def raw_login(pop3) -> tuple[socket.socket, io.BufferedReader]:
    sock = socket.create_connection(pop3.bound["pop3"], timeout=30)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(f"USER {ADDRESS}\r\nPASS {MAILBOX_PASSWORD}\r\n".encode())
    reader.readline()
    assert reader.readline().startswith(b"+OK Logged in")
    return sock, reader


def multiline(reader: io.BufferedReader) -> bytes:
    out = bytearray()  # grows in place: adding 200,000 lines to bytes copied ~200 GB
    while not out.endswith(b"\r\n.\r\n"):
        line = reader.readline()
        assert line, out[-200:]
        out += line
    return bytes(out)


def test_retr_and_top_of_a_big_message_are_exact(session, pop3):
    make_mailbox(session, protocols="pop3")
    data = big_message()
    assert len(data) > 4 * INLINE_READ
    mail_store().open(ADDRESS).folder("INBOX").deliver(data)
    sock, reader = raw_login(pop3)
    try:
        sock.sendall(b"RETR 1\r\n")
        answer = multiline(reader)
        first, _, rest = answer.partition(b"\r\n")
        assert first.startswith(b"+OK")
        assert rest == wire_form(data) + b".\r\n"
        for lines in (0, 1, 1000):
            sock.sendall(b"TOP 1 %d\r\n" % lines)
            answer = multiline(reader)
            assert answer.partition(b"\r\n")[2] == top_form(data, lines) + b".\r\n"
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"+OK")
    finally:
        reader.close()
        sock.close()


def test_a_client_that_never_reads_a_big_retr_holds_little_and_is_dropped(
    session, pop3, app, monkeypatch
):
    make_mailbox(session, protocols="pop3")
    body = b"x" * 998 + b"\r\n"
    mail_store().open(ADDRESS).folder("INBOX").deliver(b"Subject: big\r\n\r\n" + body * 30_000)
    app.config["POP3_AUTOLOGOUT_SECONDS"] = 1  # the output wait of a logged-in session
    counted = [0]
    original = asyncio.StreamWriter.write

    def counting(self, data):
        counted[0] += len(data)
        original(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", counting)
    sock, reader = raw_login(pop3)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"RETR 1\r\n")
        slots = guards(app).pop3_connections
        assert wait_until(lambda: not slots._counts, timeout=30)
        assert counted[0] < 10 * MB < 30 * len(body) * 1000
        # Dropped for real: the server closed its end (what it had queued is the kernel's to
        # discard), rather than keep it open until the client takes output it never reads.
        server_end = (pop3.bound["pop3"][1], sock.getsockname()[1])
        assert wait_until(lambda: server_end not in established_tcp_ends(), timeout=30)
    finally:
        reader.close()
        sock.close()


def established_tcp_ends() -> set[tuple[int, int]]:
    """(local port, remote port) of every TCP connection of this machine that is still
    ESTABLISHED (/proc/net/tcp state 01): a process holds it open."""
    ends = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01":
            local, remote = fields[1], fields[2]
            ends.add((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)))
    return ends
