"""FETCH items of IMAP extensions: BINARY (RFC 3516), SAVEDATE (RFC 8514), PREVIEW (RFC 8970)."""

from __future__ import annotations

from typing import BinaryIO

from provider.mailstore import MessageInfo
from provider.mailstore.content import (
    PREVIEW_SOURCE_OCTETS,
    decode_transfer_encoding,
    first_text_part,
    preview_text,
)
from provider.mailstore.maildir import save_date
from provider.mailstore.message import ParsedMessage, find_part
from provider.protocols.imap.fetch import format_internal_date, partial_of, to_crlf
from provider.protocols.imap.parser import encode_string


def binary_literal(data: bytes) -> bytes:
    """A literal for decoded content: literal8 (`~{n}`, RFC 3516 §4.2) when it holds NUL,
    which a plain literal may not; else `{n}`, which every client reads."""
    marker = b"~{%d}\r\n" if b"\0" in data else b"{%d}\r\n"
    return marker % len(data) + data


def _read(file: BinaryIO, start: int, end: int) -> bytes:
    file.seek(start)
    return file.read(max(0, end - start))


def binary_content(file: BinaryIO, size: int, parsed: ParsedMessage | None, section: str) -> bytes:
    """BINARY[section] before any partial (RFC 3516 §4.2): the part's content with its
    content-transfer-encoding undone; the whole message for an empty section (see below);
    b"" for a part
    that does not exist (as BODY[section] gives). Identity encodings get CRLF line ends, as
    BODY does, except "binary", whose octets are given exactly as stored.
    UnknownTransferEncoding for an encoding that cannot be decoded."""
    if not section:
        whole = _read(file, 0, size)
        # A message holding NUL is binary content (appended as a literal8): its line ends are
        # data, given back exactly; any other gets CRLF line ends as BODY[] gives them.
        return whole if b"\0" in whole else to_crlf(whole)
    assert parsed is not None
    numbers = tuple(int(n) for n in section.split("."))
    part = find_part(parsed.body, numbers)
    if part is None:
        return b""
    raw = _read(file, part.body_start, part.body_end)
    encoding = part.encoding.lower()
    if encoding == "binary":
        return raw
    if encoding in ("7bit", "8bit", ""):
        return to_crlf(raw)
    return decode_transfer_encoding(raw, encoding)


def binary_item(label: str, content: bytes, partial: tuple[int, int] | None) -> bytes:
    return label.encode() + b" " + binary_literal(partial_of(content, partial))


def save_date_item(info: MessageInfo) -> bytes:
    """SAVEDATE "date-time" in UTC, or NIL when the file name carries no save time."""
    moment = save_date(info.basename)
    if moment is None:
        return b"SAVEDATE NIL"
    return f'SAVEDATE "{format_internal_date(moment)}"'.encode()


def compute_preview(file: BinaryIO, parsed: ParsedMessage) -> str:
    """The preview of a message (RFC 8970 §3): its first text part's start, made plain."""
    part = first_text_part(parsed.body)
    if part is None:
        return ""
    end = min(part.body_end, part.body_start + PREVIEW_SOURCE_OCTETS)
    return preview_text(part, _read(file, part.body_start, end))


def preview_item(text: str | None) -> bytes:
    """PREVIEW "text", or PREVIEW NIL when LAZY found none made yet (RFC 8970 §3.1)."""
    return b"PREVIEW NIL" if text is None else b"PREVIEW " + encode_string(text)
