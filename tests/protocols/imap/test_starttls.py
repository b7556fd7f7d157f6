"""STARTTLS (issue 11 item 15): the first command sent over TLS is never lost, and plaintext
pipelined after STARTTLS never runs as if it came over TLS (RELIABILITY P4)."""

from __future__ import annotations

import socket

from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.tls_client import EagerTlsClient


def test_first_command_arriving_with_the_handshake_is_answered(session, imap):
    make_mailbox(session)
    for _ in range(20):
        with socket.create_connection(imap["imap"], timeout=10) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"* OK")
            sock.sendall(b"a STARTTLS\r\n")
            assert reader.readline().startswith(b"a OK")
            client = EagerTlsClient(sock)
            client.handshake(f'b LOGIN alice@example.test "{MAILBOX_PASSWORD}"\r\n'.encode())
            assert client.readline().startswith(b"b OK")
            client.send(b"c LOGOUT\r\n")
            assert client.readline().startswith(b"* BYE")


def test_plaintext_sent_after_starttls_in_a_later_segment_never_runs(session, imap):
    make_mailbox(session)
    with socket.create_connection(imap["imap"], timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"a STARTTLS\r\n")
        assert reader.readline().startswith(b"a OK")
        # Plaintext where the handshake should start: it must fail the handshake, not run.
        sock.sendall(b"b CAPABILITY\r\n")
        assert b"CAPABILITY" not in reader.read()
