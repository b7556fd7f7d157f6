"""A literal sent in one write and its closing CRLF in another (imaplib does this) is answered as
fast as both in one write: the server has the literal acknowledged at once, so the client's
Nagle rule does not hold the CRLF back for the kernel's delayed ACK (40 ms on Linux)."""

from __future__ import annotations

import socket
import statistics
import time
from typing import BinaryIO

from tests.conftest import MAILBOX_PASSWORD, make_mailbox

MESSAGE = b"From: a@example.test\r\nSubject: literal\r\n\r\n" + b"x" * 20_000 + b"\r\n"


def _until_tagged(stream: BinaryIO, tag: bytes) -> bytes:
    while True:
        line = stream.readline()
        assert line, "connection closed"
        if line.startswith(tag + b" "):
            return line


def _append(sock: socket.socket, stream: BinaryIO, tag: bytes, split: bool) -> float:
    started = time.perf_counter()
    sock.sendall(tag + b" APPEND INBOX {%d}\r\n" % len(MESSAGE))
    assert stream.readline().startswith(b"+")
    if split:
        sock.sendall(MESSAGE)
        sock.sendall(b"\r\n")
    else:
        sock.sendall(MESSAGE + b"\r\n")
    assert _until_tagged(stream, tag).startswith(tag + b" OK")
    return time.perf_counter() - started


def test_a_literal_and_its_crlf_in_two_writes_are_not_held_back(session, imap):
    make_mailbox(session)
    host, port = imap["imap"]
    with socket.create_connection((host, port)) as sock:
        # The client keeps Nagle's rule on, as imaplib and most clients do.
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b'a LOGIN alice@example.test "' + MAILBOX_PASSWORD.encode() + b'"\r\n')
        assert _until_tagged(stream, b"a").startswith(b"a OK")
        taken: dict[bool, list[float]] = {True: [], False: []}
        for number in range(12):  # interleaved: load on the machine weighs on both alike
            for split in (True, False):
                taken[split].append(_append(sock, stream, b"t%d%d" % (number, split), split))
    split_median = statistics.median(taken[True])
    whole_median = statistics.median(taken[False])
    # Held back, every split APPEND would wait out the delayed ACK: 40 ms or more each.
    assert split_median < whole_median + 0.030, (split_median, whole_median)
