"""STLS (issue 11 item 15): the first command sent over TLS is never lost, and plaintext
pipelined after STLS never runs as if it came over TLS (RELIABILITY P4)."""

from __future__ import annotations

import socket

from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.pop3.conftest import ADDRESS
from tests.protocols.tls_client import EagerTlsClient


def test_first_command_arriving_with_the_handshake_is_answered(session, pop3):
    make_mailbox(session, ADDRESS, protocols="pop3")
    for _ in range(20):
        with socket.create_connection(pop3.bound["pop3"], timeout=10) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"+OK")
            sock.sendall(b"STLS\r\n")
            assert reader.readline().startswith(b"+OK")
            client = EagerTlsClient(sock)
            client.handshake(f"USER {ADDRESS}\r\n".encode())
            assert client.readline().startswith(b"+OK")
            client.send(f"PASS {MAILBOX_PASSWORD}\r\n".encode())
            assert client.readline().startswith(b"+OK Logged in")
            client.send(b"QUIT\r\n")
            assert client.readline().startswith(b"+OK")


def test_plaintext_pipelined_after_stls_never_runs(session, pop3):
    make_mailbox(session, ADDRESS, protocols="pop3")
    with socket.create_connection(pop3.bound["pop3"], timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"STLS\r\nCAPA\r\n")
        assert reader.readline().startswith(b"+OK")
        client = EagerTlsClient(sock)
        client.handshake(f"USER {ADDRESS}\r\n".encode())
        # CAPA came in plaintext: the first answer over TLS is USER's.
        assert client.readline() == b"+OK Send your password\r\n"
