"""A raw command/response helper over imaplib for extension tests (ESEARCH, SORT, LIST-STATUS)."""

from __future__ import annotations

import imaplib
import re

_LITERAL = re.compile(rb"~?\{(\d+)\}\r\n\Z")  # literal8 too (RFC 3516)


def read_response_line(client: imaplib.IMAP4) -> bytes:
    """One response line with any literals in it read inline (without the final CRLF)."""
    line = client.readline()
    if not line:
        raise ConnectionError("server closed the connection")
    while match := _LITERAL.search(line):
        line += client.read(int(match.group(1)))
        line += client.readline()
    return line.rstrip(b"\r\n")


def exchange(client: imaplib.IMAP4, command: bytes | str) -> tuple[list[bytes], bytes]:
    """Send one tagged command as is; its untagged lines and its tagged line."""
    if isinstance(command, str):
        command = command.encode()
    tag = client._new_tag()  # type: ignore[attr-defined]
    client.send(tag + b" " + command + b"\r\n")
    untagged = []
    while True:
        line = read_response_line(client)
        if line.startswith(tag + b" "):
            return untagged, line[len(tag) + 1 :]
        untagged.append(line)
