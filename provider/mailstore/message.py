"""Parsed-message cache: ENVELOPE, BODYSTRUCTURE and section byte ranges, parsed once per file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from email.utils import parsedate_tz
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

# Bump whenever parsing or the JSON layout changes: entries of another version are reparsed.
FORMAT_VERSION = 1
CACHE_FILE_NAME = "provider.cache.sqlite"
# Dovecot stops at similar limits (message_max_nested_mime_parts, max_total_mime_parts), so a
# hostile message cannot make the structure, the cache entry or the recursion grow without bound.
MAX_NESTING = 100
MAX_PARTS = 10_000
MAX_ADDRESSES = 10_000  # per envelope field: a hostile To: must not bloat every cache hit
BUSY_TIMEOUT_SECONDS = 10.0
# Parsed messages (and their header blocks) kept decoded in this process's memory, so a FETCH
# ENVELOPE or a SEARCH FROM over a folder neither asks SQLite nor decodes zlib + JSON again.
# Message files are immutable and their base names unique, so an entry is never stale.
MEMORY_ENTRIES = 20_000  # about 4 KB each: ~80 MB per process at most
MEMORY_HEADER_BYTES = 16 * 1024 * 1024
# Per-folder cache databases kept open in this process (shared by its sessions and threads):
# opening one costs a connect, three PRAGMAs and, at close, a checkpoint that deletes the WAL.
SHARED_CACHES = 64

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"


@dataclass(frozen=True)
class Address:
    """One address of an envelope field (RFC 3501 §7.4.2 ENVELOPE, address structure).

    Strings are the raw header text: RFC 2047 encoded words stay encoded and quoted strings are
    unquoted. Group syntax (RFC 5322 §3.4) becomes a start marker (mailbox = group name, host =
    None), the members, then an end marker (mailbox = None, host = None). A member without a
    local part or a domain gets "MISSING_MAILBOX" / "MISSING_DOMAIN" (as Dovecot does), so a
    None host only ever means a group marker.
    """

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass(frozen=True)
class Envelope:
    """RFC 3501 §7.4.2 ENVELOPE. Sender and Reply-To default to From when absent or empty.

    date, subject, in_reply_to and message_id are the unfolded raw header values (None when the
    field is absent, "" when present but empty); the first occurrence of a field is used.
    """

    date: str | None
    subject: str | None
    from_: list[Address]
    sender: list[Address]
    reply_to: list[Address]
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    in_reply_to: str | None
    message_id: str | None


@dataclass(frozen=True, kw_only=True)
class BodyPart:
    """A node of BODYSTRUCTURE (RFC 3501 §7.4.2) with its byte ranges in the message file.

    type, subtype, parameter names, the disposition type and encoding are lower-case. params keep
    header order, first occurrence wins; RFC 2231 continuations (name*0, name*1…) are joined, and a
    charset-encoded value stays encoded under the starred name ("filename*",
    "utf-8''na%C3%AFve.txt"), as Dovecot sends it, so BODYSTRUCTURE stays 7-bit. A text/* part
    without a charset gets ("charset", "us-ascii") appended, as Dovecot does.

    Invariants: a multipart part always has at least one child (a body without any opening
    delimiter becomes one text/plain child spanning the whole body, with an empty MIME header);
    message_envelope and message_body are set exactly for message/rfc822 and message/global; lines
    (the number of LF octets in the body, as Dovecot counts) is set only for text/* and those two.
    header_start..header_end is the MIME header (the message header for the top level and for
    message_body) including its blank line; body_start..body_end is what BODY[n] returns.
    """

    type: str
    subtype: str
    params: list[tuple[str, str]] = field(default_factory=list)
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    size: int
    lines: int | None = None
    md5: str | None = None
    disposition: tuple[str, list[tuple[str, str]]] | None = None
    language: list[str] | None = None
    location: str | None = None
    parts: list[BodyPart] = field(default_factory=list)
    message_envelope: Envelope | None = None
    message_body: BodyPart | None = None
    header_start: int
    header_end: int
    body_start: int
    body_end: int


@dataclass(frozen=True)
class ParsedMessage:
    """Everything FETCH and SEARCH need from a message file without parsing it again."""

    size: int
    header_size: int
    envelope: Envelope
    body: BodyPart
    headers: list[tuple[str, int, int]]
    date_header: float | None

    def sent_day(self) -> date | None:
        """The Date: field's calendar day as written, ignoring time and zone (SEARCH SENTON…).

        RFC 3501 §6.4.4 compares SENTBEFORE/SENTON/SENTSINCE "disregarding time and timezone",
        which a UTC timestamp cannot answer, so it is derived from the envelope's raw date.
        """
        moment = _parse_date(self.envelope.date)
        return None if moment is None else moment.date()

    def addresses(self, name: str) -> list[Address]:
        """The envelope's addresses of one field: "from", "sender", "reply-to", "to"…"""
        return _envelope_addresses(self.envelope, name)


def _envelope_addresses(envelope: Envelope, name: str) -> list[Address]:
    attribute = {"from": "from_", "reply-to": "reply_to"}.get(name, name)
    return getattr(envelope, attribute)  # type: ignore[no-any-return]


class MessageHeader:
    """A message's header block and what SEARCH asks of it, without the body: the fields as
    ParsedMessage.headers gives them and, only when a key needs them, the envelope's values.

    A SEARCH on FROM or SUBJECT over a folder no process has parsed yet reads a few KB per
    message instead of the whole file, and neither parses MIME nor writes the cache.
    """

    __slots__ = ("_envelope", "_fields", "block", "headers")

    def __init__(
        self,
        block: bytes,
        headers: list[tuple[str, int, int]] | None = None,
        envelope: Envelope | None = None,
    ) -> None:
        self.block = block
        self.headers = _split_fields(block, 0, len(block)) if headers is None else headers
        self._envelope = envelope
        self._fields: dict[str, list[Address]] | None = None  # addresses parsed one by one

    @property
    def header_size(self) -> int:
        return len(self.block)

    @property
    def envelope(self) -> Envelope:
        if self._envelope is None:
            self._envelope = _envelope(_first_values(self.block, self.headers))
        return self._envelope

    def sent_day(self) -> date | None:
        """As ParsedMessage.sent_day."""
        moment = _parse_date(self.envelope.date)
        return None if moment is None else moment.date()

    def addresses(self, name: str) -> list[Address]:
        """As ParsedMessage.addresses, parsing only that field (To and Cc may be long) unless
        the envelope is at hand. Sender and Reply-To default to From as in the envelope."""
        if self._envelope is not None or name in ("sender", "reply-to"):
            return _envelope_addresses(self.envelope, name)
        if self._fields is None:
            self._fields = {}
        found = self._fields.get(name)
        if found is None:
            found = self._fields[name] = next(
                (
                    parse_addresses(_field_value(self.block, start, end))
                    for field_name, start, end in self.headers
                    if field_name == name
                ),
                [],
            )
        return found


def header_block_end(data: bytes) -> int | None:
    """Where a message's header block ends in `data` (after its blank line, as parse_message
    finds it), or None when `data` holds no blank line (read more, or it is all header)."""
    if data.startswith(b"\n"):
        return 1
    if data.startswith(b"\r\n"):
        return 2
    blank = _BLANK_LINE.search(data)
    return None if blank is None else blank.end()


def read_header_block(path: Path, first_read: int = 8192) -> bytes:
    """The header block of the message file at path, reading no more of it than needed."""
    with open(path, "rb") as file:
        data = file.read(first_read)
        while True:
            end = header_block_end(data)
            if end is not None:
                return data[:end]
            more = file.read(max(first_read, len(data)))
            if not more:
                return data
            data += more


# --- header fields -------------------------------------------------------------------------

_BLANK_LINE = re.compile(rb"\n\r?\n")
_CONTENT_FIELDS = frozenset(
    {
        "content-type",
        "content-transfer-encoding",
        "content-id",
        "content-description",
        "content-md5",
        "content-disposition",
        "content-language",
        "content-location",
    }
)
_ENVELOPE_FIELDS = frozenset(
    {
        "date",
        "subject",
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "in-reply-to",
        "message-id",
    }
)


def _split_fields(data: bytes, start: int, end: int) -> list[tuple[str, int, int]]:
    """Header fields of the block data[start:end] as (lower-case name, start, end) — RFC 5322 §2.2.

    A field runs to the end of its last continuation line, line break included. Like Dovecot, a
    line without a colon is a field named by the whole line, and only an empty line (or the end
    of the block) ends the header.
    """
    fields: list[tuple[str, int, int]] = []
    position = start
    while position < end:
        newline = data.find(b"\n", position, end)
        line_end = end if newline < 0 else newline + 1
        if line_end - position <= 2 and data[position:line_end] in (b"\n", b"\r\n"):
            break
        if data[position] in b" \t" and fields:
            name, field_start, _ = fields[-1]
            fields[-1] = (name, field_start, line_end)
        else:
            colon = data.find(b":", position, line_end)
            name_end = line_end if colon < 0 else colon
            name = data[position:name_end].strip(b" \t\r\n").decode("latin-1").lower()
            fields.append((name, position, line_end))
        position = line_end
    return fields


def _text(raw: bytes) -> str:
    """Header bytes as text: UTF-8 (RFC 6532), invalid octets replaced by U+FFFD."""
    return raw.decode("utf-8", "replace")


def _field_value(data: bytes, start: int, end: int) -> str:
    """The unfolded value of one field (RFC 5322 §2.2.3): line breaks removed, ends stripped."""
    colon = data.find(b":", start, end)
    if colon < 0:
        return ""
    raw = data[colon + 1 : end].replace(b"\r", b"").replace(b"\n", b"")
    return _text(raw.strip(b" \t"))


def _first_values(data: bytes, fields: list[tuple[str, int, int]]) -> dict[str, str]:
    """Values of the first occurrence of each Content-* and envelope field."""
    values: dict[str, str] = {}
    for name, start, end in fields:
        if (name in _CONTENT_FIELDS or name in _ENVELOPE_FIELDS) and name not in values:
            values[name] = _field_value(data, start, end)
    return values


# --- MIME header values (RFC 2045 §5.1, RFC 2183, RFC 2231) ---------------------------------

_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
_WHITESPACE = frozenset(" \t\r\n")
# RFC 2231 attribute-char: what may stay unescaped in an extended value.
_ATTRIBUTE_SAFE = "!#$&+-.^_`|~"
_SECTION_NAME = re.compile(r"(.+?)\*([0-9]{1,4})(\*?)")


class _Cursor:
    """A position in a structured header value, for the small RFC 2045 grammars."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def at_end(self) -> bool:
        return self.position >= len(self.text)

    def peek(self) -> str:
        return self.text[self.position] if self.position < len(self.text) else ""

    def skip_cfws(self) -> None:
        """Skip white space and (nested) comments."""
        text = self.text
        while self.position < len(text):
            char = text[self.position]
            if char in _WHITESPACE:
                self.position += 1
            elif char == "(":
                self.position = _read_comment(text, self.position)[1]
            else:
                return

    def token(self) -> str:
        """An RFC 2045 token (lenient: octets above 0x7F are accepted)."""
        text = self.text
        start = self.position
        while self.position < len(text):
            char = text[self.position]
            if char in _TSPECIALS or char <= " " or char == "\x7f":
                break
            self.position += 1
        return text[start : self.position]

    def skip_to(self, char: str) -> None:
        found = self.text.find(char, self.position)
        self.position = len(self.text) if found < 0 else found

    def parameter_value(self) -> str:
        """A token or quoted-string; an unquoted value with spaces runs to the next ';'."""
        if self.peek() == '"':
            value, self.position = _read_quoted(self.text, self.position)
            return value
        start = self.position
        self.token()
        token_end = self.position
        self.skip_cfws()
        if self.at_end() or self.peek() == ";":
            return self.text[start:token_end]
        self.skip_to(";")
        return self.text[start : self.position].strip()


_QUOTED_RUN = re.compile(r'[^"\\]+')
_COMMENT_RUN = re.compile(r"[^()\\]+")


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """The content of the quoted-string at text[start] == '"', unescaped, and the end position."""
    out: list[str] = []
    position = start + 1
    while position < len(text):
        run = _QUOTED_RUN.match(text, position)
        if run is not None:
            out.append(run.group())
            position = run.end()
        elif text[position] == '"':
            return "".join(out), position + 1
        else:  # a quoted-pair
            out.append(text[position + 1 : position + 2])
            position += 2
    return "".join(out), len(text)


def _read_comment(text: str, start: int) -> tuple[str, int]:
    """The content of the (nested) comment at text[start] == '(' and the end position."""
    out: list[str] = []
    depth = 0
    position = start
    while position < len(text):
        run = _COMMENT_RUN.match(text, position)
        if run is not None:
            out.append(run.group())
            position = run.end()
            continue
        char = text[position]
        if char == "\\":
            out.append(text[position + 1 : position + 2])
            position += 2
            continue
        depth += 1 if char == "(" else -1
        if depth == 0:
            return "".join(out), position + 1
        if char == ")" or depth > 1:
            out.append(char)
        position += 1
    return "".join(out), len(text)


def _parameters(cursor: _Cursor) -> list[tuple[str, str]]:
    """The '; name=value' list after a media type or disposition type, RFC 2231 joined."""
    found: list[tuple[str, str]] = []
    while True:
        cursor.skip_cfws()
        if cursor.at_end():
            break
        if cursor.peek() != ";":
            cursor.skip_to(";")
            continue
        cursor.position += 1
        cursor.skip_cfws()
        name = cursor.token()
        cursor.skip_cfws()
        if not name or cursor.peek() != "=":
            continue
        cursor.position += 1
        cursor.skip_cfws()
        found.append((name.lower(), cursor.parameter_value()))
    return _join_rfc2231(found)


def _join_rfc2231(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join RFC 2231 §3 continuations; keep §4 charset-encoded values encoded under 'name*'.

    A plain segment mixed into an encoded sequence is percent-encoded so the joined value stays
    one valid extended value. The first occurrence of a name wins.
    """
    slots: list[tuple[str, str] | str] = []
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    for name, value in found:
        match = _SECTION_NAME.fullmatch(name)
        if match is None:
            slots.append((name, value))
            continue
        base = match.group(1)
        if base not in sections:
            sections[base] = {}
            slots.append(base)
        sections[base].setdefault(int(match.group(2)), (value, match.group(3) == "*"))
    joined: list[tuple[str, str]] = []
    seen: set[str] = set()
    for slot in slots:
        if isinstance(slot, tuple):
            name, value = slot
        else:
            segments = [sections[slot][number] for number in sorted(sections[slot])]
            if any(extended for _, extended in segments):
                pieces = [
                    value if extended else quote(value, safe=_ATTRIBUTE_SAFE)
                    for value, extended in segments
                ]
                prefix = "" if segments[0][1] else "''"
                name, value = slot + "*", prefix + "".join(pieces)
            else:
                name, value = slot, "".join(value for value, _ in segments)
        if name not in seen:
            seen.add(name)
            joined.append((name, value))
    return joined


def _content_type(value: str | None) -> tuple[str, str, list[tuple[str, str]]] | None:
    """RFC 2045 §5.1 Content-Type, or None when absent or syntactically invalid."""
    if value is None:
        return None
    cursor = _Cursor(value)
    cursor.skip_cfws()
    media_type = cursor.token()
    cursor.skip_cfws()
    if not media_type or cursor.peek() != "/":
        return None
    cursor.position += 1
    cursor.skip_cfws()
    subtype = cursor.token()
    if not subtype:
        return None
    return media_type.lower(), subtype.lower(), _parameters(cursor)


def _disposition(value: str | None) -> tuple[str, list[tuple[str, str]]] | None:
    """RFC 2183 Content-Disposition, or None when absent or without a disposition type."""
    if value is None:
        return None
    cursor = _Cursor(value)
    cursor.skip_cfws()
    kind = cursor.token()
    if not kind:
        return None
    return kind.lower(), _parameters(cursor)


def _first_token(value: str | None) -> str:
    if value is None:
        return ""
    cursor = _Cursor(value)
    cursor.skip_cfws()
    return cursor.token().lower()


def _languages(value: str | None) -> list[str] | None:
    """RFC 3282 Content-Language: a comma-separated list of tags, None when empty."""
    if value is None:
        return None
    cursor = _Cursor(value)
    tags: list[str] = []
    while not cursor.at_end():
        cursor.skip_cfws()
        tag = cursor.token()
        if tag:
            tags.append(tag)
        elif not cursor.at_end():
            cursor.position += 1
    return tags or None


# --- addresses (RFC 5322 §3.4, obsolete forms of §4.4) ---------------------------------------

_ADDRESS_SPECIALS = frozenset('()<>[]:;@,"')
_ADDRESS_ATOM = re.compile(r'[^()<>\[\]:;@,"\s]+')


class _Token(NamedTuple):
    kind: str  # "atom" (dots included), "quoted", "literal", "comment", or a special character
    text: str


def _address_tokens(text: str) -> Iterator[_Token]:
    position = 0
    while position < len(text):
        char = text[position]
        if char in _WHITESPACE:
            position += 1
        elif char == '"':
            value, position = _read_quoted(text, position)
            yield _Token("quoted", value)
        elif char == "(":
            value, position = _read_comment(text, position)
            yield _Token("comment", value)
        elif char == "[":
            end = text.find("]", position)
            end = len(text) if end < 0 else end + 1
            yield _Token("literal", text[position:end])
            position = end
        elif char in _ADDRESS_SPECIALS:
            yield _Token(char, char)
            position += 1
        else:
            atom = _ADDRESS_ATOM.match(text, position)
            end = position + 1 if atom is None else atom.end()  # other white space: one atom
            yield _Token("atom", text[position:end])
            position = end


class _AddressParser:
    """Recursive descent over address tokens, recovering at ',' like Dovecot's message-address.c."""

    def __init__(self, text: str) -> None:
        # Tokens are read as needed, so MAX_ADDRESSES also bounds the work on a huge field.
        self.source = _address_tokens(text)
        self.tokens: list[_Token] = []
        self.index = 0

    def available(self) -> bool:
        while self.index >= len(self.tokens):
            token = next(self.source, None)
            if token is None:
                return False
            self.tokens.append(token)
        return True

    def peek(self) -> str:
        """The kind of the next token that is not a comment ("" at the end)."""
        tokens = self.tokens
        while True:
            if self.index >= len(tokens) and not self.available():
                return ""
            kind = tokens[self.index].kind
            if kind != "comment":
                return kind
            self.index += 1

    def take(self) -> _Token:
        self.peek()
        token = self.tokens[self.index]
        self.index += 1
        return token

    def skip_until(self, stops: tuple[str, ...]) -> None:
        while self.peek() and self.peek() not in stops:
            self.index += 1

    def address_list(self) -> list[Address]:
        found: list[Address] = []
        while self.peek() and len(found) < MAX_ADDRESSES:
            if self.peek() == ",":
                self.index += 1
                continue
            start = self.index
            self.address(found)
            if self.index == start:
                self.index += 1
            self.skip_until((",",))
        return found

    def address(self, found: list[Address]) -> None:
        start = self.index
        words = self.phrase()
        if words and self.peek() == ":":
            self.index += 1
            found.append(Address(None, None, " ".join(words), None))
            while self.peek() and self.peek() != ";" and len(found) < MAX_ADDRESSES:
                if self.peek() == ",":
                    self.index += 1
                    continue
                member_start = self.index
                self.mailbox(found)
                if self.index == member_start:
                    self.index += 1
                self.skip_until((",", ";"))
            if self.peek() == ";":
                self.index += 1
            found.append(Address(None, None, None, None))
            return
        self.index = start
        self.mailbox(found)

    def mailbox(self, found: list[Address]) -> None:
        start = self.index
        words = self.phrase()
        if self.peek() == "<":
            self.index += 1
            route, local, domain = self.angle_address()
            name = " ".join(words) or None
            found.append(Address(name, route, local or MISSING_MAILBOX, domain or MISSING_DOMAIN))
            return
        self.index = start
        local = self.dotted("quoted")
        domain = None
        if self.peek() == "@":
            self.index += 1
            domain = self.domain()
        if self.index == start:
            return
        self.peek()
        comments = [t.text for t in self.tokens[start : self.index] if t.kind == "comment"]
        name = comments[-1] if comments and comments[-1] else None
        found.append(Address(name, None, local or MISSING_MAILBOX, domain or MISSING_DOMAIN))

    def phrase(self) -> list[str]:
        words: list[str] = []
        while self.peek() in ("atom", "quoted"):
            words.append(self.take().text)
        return words

    def dotted(self, other_kind: str) -> str | None:
        """word *("." word): a local part (other_kind "quoted") or a domain ("literal")."""
        if self.peek() not in ("atom", other_kind):
            return None
        pieces = [self.take().text]
        while self.peek() in ("atom", other_kind):
            following = self.tokens[self.index].text
            if not (pieces[-1].endswith(".") or following.startswith(".")):
                break
            pieces.append(self.take().text)
        return "".join(pieces)

    def domain(self) -> str | None:
        return self.dotted("literal")

    def angle_address(self) -> tuple[str | None, str | None, str | None]:
        """After '<': [obs-route ':'] local-part ['@' domain] '>'."""
        route = None
        if self.peek() == "@":
            hops: list[str] = []
            while self.peek() in ("@", ","):
                if self.take().kind == "@":
                    hops.append("@" + (self.domain() or ""))
            route = ",".join(hops)
            if self.peek() == ":":
                self.index += 1
        local = self.dotted("quoted")
        domain = None
        if self.peek() == "@":
            self.index += 1
            domain = self.domain()
        self.skip_until((">", ","))
        if self.peek() == ">":
            self.index += 1
        return route, local, domain


def parse_addresses(value: str | None) -> list[Address]:
    """An RFC 5322 address-list header value as ENVELOPE address structures (best effort)."""
    if value is None:
        return []
    return _AddressParser(value).address_list()


# --- dates -----------------------------------------------------------------------------------


def _parse_date(value: str | None) -> datetime | None:
    """An RFC 5322 §3.3 date-time in its own zone (no zone: UTC), None if unparseable."""
    if not value:
        return None
    try:
        parts = parsedate_tz(value)
        if parts is None:
            return None
        year, month, day, hour, minute, second = parts[:6]
        zone = timezone(timedelta(seconds=parts[9] or 0))
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=zone)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _timestamp(value: str | None) -> float | None:
    moment = _parse_date(value)
    if moment is None:
        return None
    try:
        return moment.timestamp()
    except (ValueError, OverflowError):
        return None


# --- MIME structure (RFC 2045, RFC 2046 §5) --------------------------------------------------


class _Boundary(NamedTuple):
    """A boundary delimiter line that ends the entity being parsed."""

    line_start: int
    level: int  # index in the boundary stack of the multipart the line belongs to
    close: bool  # "--boundary--"
    next_line: int


class _Entity(NamedTuple):
    part: BodyPart
    values: dict[str, str]
    fields: list[tuple[str, int, int]]
    ended_by: _Boundary | None  # None: the entity runs to the end of the data


def _end_before(data: bytes, line_start: int, lower: int) -> int:
    """Where content ends before a boundary line: the line break before it belongs to the
    delimiter (RFC 2046 §5.1.1), unless that break is before `lower`."""
    if line_start > lower and data[line_start - 1] == 0x0A:
        if line_start - 1 > lower and data[line_start - 2] == 0x0D:
            return line_start - 2
        return line_start - 1
    return line_start


_DEFAULT_TEXT: tuple[str, str, list[tuple[str, str]]] = ("text", "plain", [("charset", "us-ascii")])


def _empty_envelope() -> Envelope:
    return Envelope(None, None, [], [], [], [], [], [], None, None)


def _is_message(media_type: str, subtype: str) -> bool:
    return media_type == "message" and subtype in ("rfc822", "global")


class _StructureParser:
    """One pass over a message: headers, boundaries and nested messages, with byte offsets.

    Boundary lines are matched like Dovecot (and RFC 2046 §5.1.1's note to implementors): a line
    starting with "--" + boundary of any enclosing multipart, the longest (then innermost) match
    winning, so a missing close delimiter is ended by an outer boundary. Every search is bounded by
    the part being parsed, so the work is linear in the size times the (limited) nesting depth.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parts_left = MAX_PARTS
        self.matchers: dict[tuple[bytes, ...], tuple[re.Pattern[bytes], dict[bytes, int]]] = {}

    def find_boundary(self, start: int, stack: list[bytes], limit: int) -> _Boundary | None:
        """The first boundary line of stack in the lines from start to limit.

        start is a line start after the message header, so data[start - 1] is its line break.
        One compiled search per stack keeps a hostile message (deep nesting, a million "--"
        lines) at C speed: lines that match no boundary never reach Python.
        """
        if not stack or self.parts_left <= 0:
            return None
        key = tuple(stack)
        if key not in self.matchers:
            longest_first = sorted(set(stack), key=len, reverse=True)
            alternatives = b"|".join(re.escape(boundary) for boundary in longest_first)
            # Longest match first; for a boundary repeated in nested parts, the innermost level.
            levels = {boundary: level for level, boundary in enumerate(stack)}
            self.matchers[key] = (re.compile(b"\n--(" + alternatives + b")"), levels)
        pattern, levels = self.matchers[key]
        data = self.data
        match = pattern.search(data, max(start - 1, 0), limit)
        if match is None:
            return None
        after = match.end()
        newline = data.find(b"\n", after)
        return _Boundary(
            line_start=match.start() + 1,
            level=levels[match.group(1)],
            close=data.startswith(b"--", after),
            next_line=len(data) if newline < 0 else newline + 1,
        )

    def header_end(self, start: int, stack: list[bytes]) -> tuple[int, _Boundary | None]:
        """Where the header block at start ends (after its blank line), or the boundary cutting
        it short. The blank-line search stops at the next boundary, so it stays linear."""
        data = self.data
        if data.startswith(b"\n", start):
            return start + 1, None
        if data.startswith(b"\r\n", start):
            return start + 2, None
        ended_by = self.find_boundary(start, stack, len(data))
        blank = _BLANK_LINE.search(
            data, start, len(data) if ended_by is None else ended_by.line_start
        )
        if blank is not None:
            return blank.end(), None
        if ended_by is None:
            return len(data), None
        return _end_before(data, ended_by.line_start, start), ended_by

    def content_end(self, ended_by: _Boundary | None, lower: int) -> int:
        """Where content starting at lower ends: before ended_by's line break, or at the end."""
        if ended_by is None:
            return len(self.data)
        return _end_before(self.data, ended_by.line_start, lower)

    def filler(self, start: int, end: int) -> BodyPart:
        """A text/plain part without a MIME header over data[start:end]."""
        media_type, subtype, params = _DEFAULT_TEXT
        return BodyPart(
            type=media_type,
            subtype=subtype,
            params=list(params),
            size=end - start,
            lines=self.data.count(b"\n", start, end),
            header_start=start,
            header_end=start,
            body_start=start,
            body_end=end,
        )

    def entity(self, start: int, stack: list[bytes], in_digest: bool, depth: int) -> _Entity:
        """Parse the entity (message or MIME part) at start, up to a boundary of stack or the
        end of the data."""
        data = self.data
        self.parts_left -= 1
        header_end, ended_by = self.header_end(start, stack)
        fields = _split_fields(data, start, header_end)
        values = _first_values(data, fields)
        media = _content_type(values.get("content-type"))
        if media is None:
            # RFC 2045 §5.2 and RFC 2046 §5.1.5 defaults, also for an invalid Content-Type.
            media = ("message", "rfc822", []) if in_digest else _DEFAULT_TEXT
        media_type, subtype, params = media
        boundary = next((value for name, value in params if name == "boundary"), "")
        if depth >= MAX_NESTING and (media_type == "multipart" or _is_message(media_type, subtype)):
            media_type, subtype, params = _DEFAULT_TEXT
        if media_type == "text" and all(name != "charset" for name, _ in params):
            # RFC 2046 §4.1.2's default, spelled out as Dovecot does for every text/* part.
            params = [*params, ("charset", "us-ascii")]
        body_start = header_end
        parts: list[BodyPart] = []
        inner: BodyPart | None = None
        envelope: Envelope | None = None
        if ended_by is not None:
            # A boundary line cut the header short: there is no body at all.
            body_end = body_start
            if media_type == "multipart":
                parts = [self.filler(body_start, body_end)]
            elif _is_message(media_type, subtype):
                inner, envelope = self.filler(body_start, body_end), _empty_envelope()
        elif media_type == "multipart":
            parts, body_end, ended_by = self.multipart(
                body_start, stack, boundary.encode(), subtype == "digest", depth
            )
        elif _is_message(media_type, subtype):
            nested = self.entity(body_start, stack, False, depth + 1)
            inner, ended_by = nested.part, nested.ended_by
            envelope = _envelope(nested.values)
            body_end = inner.body_end
        else:
            ended_by = self.find_boundary(body_start, stack, len(data))
            body_end = self.content_end(ended_by, body_start)
        counts_lines = media_type == "text" or _is_message(media_type, subtype)
        part = BodyPart(
            type=media_type,
            subtype=subtype,
            params=list(params),
            id=values.get("content-id") or None,
            description=values.get("content-description") or None,
            encoding=_first_token(values.get("content-transfer-encoding")) or "7bit",
            size=body_end - body_start,
            lines=data.count(b"\n", body_start, body_end) if counts_lines else None,
            md5=values.get("content-md5") or None,
            disposition=_disposition(values.get("content-disposition")),
            language=_languages(values.get("content-language")),
            location=values.get("content-location") or None,
            parts=parts,
            message_envelope=envelope,
            message_body=inner,
            header_start=start,
            header_end=header_end,
            body_start=body_start,
            body_end=body_end,
        )
        return _Entity(part, values, fields, ended_by)

    def multipart(
        self, body_start: int, stack: list[bytes], boundary: bytes, digest: bool, depth: int
    ) -> tuple[list[BodyPart], int, _Boundary | None]:
        """Children of a multipart body (RFC 2046 §5.1.1), its end, and what ended it."""
        data = self.data
        own_level = len(stack)
        # An empty boundary would match every "--" line; RFC 2046 requires 1 to 70 characters.
        inner_stack = [*stack, boundary] if boundary else stack
        ended_by = self.find_boundary(body_start, inner_stack, len(data))
        if ended_by is None or ended_by.level != own_level or ended_by.close:
            # No opening delimiter (or no boundary parameter): one text part spans the body.
            if ended_by is not None and ended_by.level == own_level:
                ended_by = self.find_boundary(ended_by.next_line, stack, len(data))
            body_end = self.content_end(ended_by, body_start)
            return [self.filler(body_start, body_end)], body_end, ended_by
        parts: list[BodyPart] = []
        while ended_by is not None and ended_by.level == own_level and not ended_by.close:
            child = self.entity(ended_by.next_line, inner_stack, digest, depth + 1)
            parts.append(child.part)
            ended_by = child.ended_by
        if ended_by is not None and ended_by.level == own_level:
            # The close delimiter: the epilogue runs to an enclosing boundary or the end.
            ended_by = self.find_boundary(ended_by.next_line, stack, len(data))
        # The line break before an enclosing boundary may already be the last delimiter line's
        # own ("--inner\r\n--outer--"): the multipart never ends before its last child.
        return parts, self.content_end(ended_by, parts[-1].body_end), ended_by


def _envelope(values: dict[str, str]) -> Envelope:
    """RFC 3501 §7.4.2 ENVELOPE from a message header's first field values."""
    from_ = parse_addresses(values.get("from"))
    return Envelope(
        date=values.get("date"),
        subject=values.get("subject"),
        from_=from_,
        sender=parse_addresses(values.get("sender")) or list(from_),
        reply_to=parse_addresses(values.get("reply-to")) or list(from_),
        to=parse_addresses(values.get("to")),
        cc=parse_addresses(values.get("cc")),
        bcc=parse_addresses(values.get("bcc")),
        in_reply_to=values.get("in-reply-to"),
        message_id=values.get("message-id"),
    )


def parse_message(data: bytes) -> ParsedMessage:
    """Parse a message (RFC 5322 + MIME) once: envelope, body structure and byte ranges.

    Never raises on malformed mail; like Dovecot it makes the best of it. Offsets are into data
    exactly as given: CRLF and bare-LF line ends are both understood, and nothing is converted,
    so a bare-LF file is described (and its sections sliced) as the bare-LF bytes it holds.
    """
    root = _StructureParser(data).entity(0, [], False, 0)
    envelope = _envelope(root.values)
    return ParsedMessage(
        size=len(data),
        header_size=root.part.header_end,
        envelope=envelope,
        body=root.part,
        headers=root.fields,
        date_header=_timestamp(envelope.date),
    )


# --- BODY[section] (RFC 3501 §6.4.5) --------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A parsed section-spec: part numbers, then "", HEADER, HEADER.FIELDS[.NOT], TEXT or MIME."""

    part: tuple[int, ...]
    text: str
    fields: tuple[str, ...] = ()


_PART_NUMBERS = re.compile(r"[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,8})*")
_FIELD_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s()"]+)')


def parse_section(section: str) -> Section:
    """Parse an RFC 3501 §6.4.5 section-spec ("1.2.HEADER.FIELDS (To Cc)"); ValueError if bad."""
    numbers = _PART_NUMBERS.match(section)
    part = tuple(int(n) for n in numbers.group().split(".")) if numbers else ()
    rest = section[numbers.end() :] if numbers else section
    if part and rest:
        if not rest.startswith(".") or len(rest) == 1:
            raise ValueError(f"bad section: {section!r}")
        rest = rest[1:]
    upper = rest.upper()
    if upper in ("", "HEADER", "TEXT") or (upper == "MIME" and part):
        return Section(part, upper)
    for keyword in ("HEADER.FIELDS.NOT ", "HEADER.FIELDS "):
        if upper.startswith(keyword):
            names = _field_names(rest[len(keyword) :].strip())
            if names:
                return Section(part, keyword.strip(), names)
            break
    raise ValueError(f"bad section: {section!r}")


def _field_names(listed: str) -> tuple[str, ...]:
    """The lower-cased names of a header-list "(name name …)"; () if it is not one."""
    if len(listed) < 2 or listed[0] != "(" or listed[-1] != ")":
        return ()
    inside = listed[1:-1]
    names: list[str] = []
    position = 0
    for match in _FIELD_NAME.finditer(inside):
        if inside[position : match.start()].strip() or (names and match.start() == position):
            return ()
        quoted, atom = match.groups()
        names.append(re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else atom)
        position = match.end()
    if inside[position:].strip():
        return ()
    return tuple(name.lower() for name in names)


def find_part(body: BodyPart, numbers: tuple[int, ...]) -> BodyPart | None:
    """The part a section's part numbers name (RFC 3501 §6.4.5), None if there is none.

    As in Dovecot's imap_msgpart_find: a non-multipart part is its own part 1, and numbers
    continue inside a message/rfc822 part's encapsulated message.
    """
    part = body
    for position, number in enumerate(numbers):
        more = position < len(numbers) - 1
        if part.parts:
            if number > len(part.parts):
                return None
            part = part.parts[number - 1]
        elif number != 1 or (more and part.message_body is None):
            return None
        if more and part.message_body is not None:
            part = part.message_body
    return part


def section_bytes(data: bytes, parsed: ParsedMessage, section: str) -> bytes:
    """The octets of BODY[section] (RFC 3501 §6.4.5), before any <partial> is applied.

    A part that does not exist gives b"" (as Dovecot does); HEADER, HEADER.FIELDS and TEXT after a
    part number need a message/rfc822 part, else b"". A malformed section raises ValueError.
    HEADER.FIELDS keeps the header's blank line (unless the header had none) even when no field
    matches; field names match case-insensitively.
    """
    spec = parse_section(section)
    if not spec.part:
        if spec.text == "":
            return data
        message = parsed.body
        fields = parsed.headers
    else:
        found = find_part(parsed.body, spec.part)
        if found is None:
            return b""
        if spec.text == "":
            return data[found.body_start : found.body_end]
        if spec.text == "MIME":
            return data[found.header_start : found.header_end]
        if found.message_body is None:
            return b""
        message = found.message_body
        fields = _split_fields(data, message.header_start, message.header_end)
    if spec.text == "TEXT":
        return data[message.body_start : message.body_end]
    if spec.text == "HEADER":
        return data[message.header_start : message.header_end]
    wanted = frozenset(spec.fields)
    exclude = spec.text == "HEADER.FIELDS.NOT"
    picked = [data[start:end] for name, start, end in fields if (name in wanted) != exclude]
    blank_start = fields[-1][2] if fields else message.header_start
    picked.append(data[blank_start : message.header_end])
    return b"".join(picked)


# --- JSON ------------------------------------------------------------------------------------


def _address_json(addresses: list[Address]) -> list[list[str | None]]:
    return [[a.name, a.adl, a.mailbox, a.host] for a in addresses]


def _envelope_json(envelope: Envelope) -> dict[str, Any]:
    encoded: dict[str, Any] = {
        "from": _address_json(envelope.from_),
        "sender": _address_json(envelope.sender),
        "reply_to": _address_json(envelope.reply_to),
        "to": _address_json(envelope.to),
        "cc": _address_json(envelope.cc),
        "bcc": _address_json(envelope.bcc),
    }
    for key in ("date", "subject", "in_reply_to", "message_id"):
        value = getattr(envelope, key)
        if value is not None:
            encoded[key] = value
    return encoded


def _part_json(part: BodyPart) -> dict[str, Any]:
    encoded: dict[str, Any] = {
        "type": part.type,
        "subtype": part.subtype,
        "encoding": part.encoding,
        "size": part.size,
        "range": [part.header_start, part.header_end, part.body_start, part.body_end],
    }
    if part.params:
        encoded["params"] = [list(pair) for pair in part.params]
    for key in ("id", "description", "lines", "md5", "location", "language"):
        value = getattr(part, key)
        if value is not None:
            encoded[key] = value
    if part.disposition is not None:
        kind, params = part.disposition
        encoded["disposition"] = [kind, [list(pair) for pair in params]]
    if part.parts:
        encoded["parts"] = [_part_json(child) for child in part.parts]
    if part.message_envelope is not None:
        encoded["envelope"] = _envelope_json(part.message_envelope)
    if part.message_body is not None:
        encoded["body"] = _part_json(part.message_body)
    return encoded


def to_json(parsed: ParsedMessage) -> dict[str, Any]:
    """A JSON-serialisable dict of parsed; from_json() gives back an equal ParsedMessage."""
    return {
        "v": FORMAT_VERSION,
        "size": parsed.size,
        "header_size": parsed.header_size,
        "envelope": _envelope_json(parsed.envelope),
        "body": _part_json(parsed.body),
        "headers": [list(entry) for entry in parsed.headers],
        "date_header": parsed.date_header,
    }


_T = TypeVar("_T")


def _typed(value: Any, kind: type[_T]) -> _T:
    # bool is an int subclass; a stored bool where an int belongs means the entry is corrupt.
    if type(value) is not kind:
        raise ValueError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(value: Any, kind: type[_T]) -> _T | None:
    return None if value is None else _typed(value, kind)


def _list(value: Any, item: Callable[[Any], _T]) -> list[_T]:
    return [item(element) for element in _typed(value, list)]


def _pair(value: Any) -> tuple[str, str]:
    name, text = _typed(value, list)
    return _typed(name, str), _typed(text, str)


def _address_from(value: Any) -> Address:
    name, adl, mailbox, host = _typed(value, list)
    return Address(
        _optional(name, str), _optional(adl, str), _optional(mailbox, str), _optional(host, str)
    )


def _envelope_from(value: Any) -> Envelope:
    encoded = _typed(value, dict)
    return Envelope(
        date=_optional(encoded.get("date"), str),
        subject=_optional(encoded.get("subject"), str),
        from_=_list(encoded["from"], _address_from),
        sender=_list(encoded["sender"], _address_from),
        reply_to=_list(encoded["reply_to"], _address_from),
        to=_list(encoded["to"], _address_from),
        cc=_list(encoded["cc"], _address_from),
        bcc=_list(encoded["bcc"], _address_from),
        in_reply_to=_optional(encoded.get("in_reply_to"), str),
        message_id=_optional(encoded.get("message_id"), str),
    )


def _part_from(value: Any, size: int) -> BodyPart:
    encoded = _typed(value, dict)
    header_start, header_end, body_start, body_end = _list(encoded["range"], _int)
    if not 0 <= header_start <= header_end <= body_start <= body_end <= size:
        raise ValueError("byte range out of order")
    disposition = None
    if encoded.get("disposition") is not None:
        kind, params = _typed(encoded["disposition"], list)
        disposition = (_typed(kind, str), _list(params, _pair))
    language = encoded.get("language")
    envelope = encoded.get("envelope")
    inner = encoded.get("body")
    return BodyPart(
        type=_typed(encoded["type"], str),
        subtype=_typed(encoded["subtype"], str),
        params=_list(encoded.get("params", []), _pair),
        id=_optional(encoded.get("id"), str),
        description=_optional(encoded.get("description"), str),
        encoding=_typed(encoded["encoding"], str),
        size=_int(encoded["size"]),
        lines=_optional(encoded.get("lines"), int),
        md5=_optional(encoded.get("md5"), str),
        disposition=disposition,
        language=None if language is None else _list(language, _str),
        location=_optional(encoded.get("location"), str),
        parts=[_part_from(child, size) for child in _typed(encoded.get("parts", []), list)],
        message_envelope=None if envelope is None else _envelope_from(envelope),
        message_body=None if inner is None else _part_from(inner, size),
        header_start=header_start,
        header_end=header_end,
        body_start=body_start,
        body_end=body_end,
    )


def _int(value: Any) -> int:
    return _typed(value, int)


def _str(value: Any) -> str:
    return _typed(value, str)


def _header_entry(value: Any) -> tuple[str, int, int]:
    name, start, end = _typed(value, list)
    return _typed(name, str), _int(start), _int(end)


def from_json(encoded: dict[str, Any]) -> ParsedMessage:
    """The ParsedMessage to_json() encoded; ValueError (or KeyError/TypeError) if it is not one."""
    if _typed(encoded, dict).get("v") != FORMAT_VERSION:
        raise ValueError("parsed-message format version mismatch")
    size = _int(encoded["size"])
    date_header = encoded.get("date_header")
    return ParsedMessage(
        size=size,
        header_size=_int(encoded["header_size"]),
        envelope=_envelope_from(encoded["envelope"]),
        body=_part_from(encoded["body"], size),
        headers=_list(encoded["headers"], _header_entry),
        date_header=_optional(date_header, float),
    )


# --- the per-folder cache --------------------------------------------------------------------

_SIZE_IN_NAME = re.compile(r",S=([0-9]{1,18})")
# sqlite3 error codes (the primary code is the low byte of the extended one).
_SQLITE_ERROR, _SQLITE_CORRUPT, _SQLITE_NOTADB = 1, 11, 26


def _encode_entry(parsed: ParsedMessage) -> bytes:
    # zlib's Adler-32 makes a damaged entry fail to decode instead of being trusted.
    text = json.dumps(to_json(parsed), separators=(",", ":"))
    return zlib.compress(text.encode("ascii"), 1)


def _decode_entry(blob: object) -> ParsedMessage:
    if not isinstance(blob, bytes):
        raise ValueError("cache entry is not a blob")
    return from_json(json.loads(zlib.decompress(blob)))


def _read_renamed(path: Path, basename: str) -> bytes:
    """The message a caller knew at `path` before a flag change (another session's STORE)
    renamed it: the same basename with other flags, in cur/ (or still in new/)."""
    folder = path.parent.parent
    for _attempt in range(3):
        for subdir in ("cur", "new"):
            try:
                with os.scandir(folder / subdir) as entries:
                    names = [e.name for e in entries if e.name.split(":", 1)[0] == basename]
            except FileNotFoundError:
                continue
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    return (folder / subdir / name).read_bytes()
    raise FileNotFoundError(f"message {basename} is no longer in {folder}")


class _Memory:
    """The process's LRU of ParsedMessage and header blocks, keyed by (folder, basename)."""

    def __init__(self, entries: int, header_bytes: int) -> None:
        self.entries = entries
        self.header_limit = header_bytes
        self.lock = threading.Lock()
        self.parsed: OrderedDict[tuple[str, str], ParsedMessage] = OrderedDict()
        self.headers: OrderedDict[tuple[str, str], MessageHeader] = OrderedDict()
        self.header_bytes = 0
        self.previews: OrderedDict[tuple[str, str], str] = OrderedDict()

    def get(self, key: tuple[str, str]) -> ParsedMessage | None:
        with self.lock:
            parsed = self.parsed.get(key)
            if parsed is not None:
                self.parsed.move_to_end(key)
            return parsed

    def put(self, key: tuple[str, str], parsed: ParsedMessage) -> None:
        with self.lock:
            self.parsed[key] = parsed
            self.parsed.move_to_end(key)
            while len(self.parsed) > self.entries:
                self.parsed.popitem(last=False)

    def header(self, key: tuple[str, str]) -> MessageHeader | None:
        with self.lock:
            header = self.headers.get(key)
            if header is not None:
                self.headers.move_to_end(key)
            return header

    def put_header(self, key: tuple[str, str], header: MessageHeader) -> None:
        with self.lock:
            old = self.headers.pop(key, None)
            if old is not None:
                self.header_bytes -= len(old.block)
            self.headers[key] = header
            self.header_bytes += len(header.block)
            while self.header_bytes > self.header_limit and self.headers:
                self.header_bytes -= len(self.headers.popitem(last=False)[1].block)

    def preview(self, key: tuple[str, str]) -> str | None:
        with self.lock:
            text = self.previews.get(key)
            if text is not None:
                self.previews.move_to_end(key)
            return text

    def put_preview(self, key: tuple[str, str], text: str) -> None:
        with self.lock:
            self.previews[key] = text
            self.previews.move_to_end(key)
            while len(self.previews) > self.entries:
                self.previews.popitem(last=False)

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        with self.lock:
            for key in keys:
                self.parsed.pop(key, None)
                self.previews.pop(key, None)
                header = self.headers.pop(key, None)
                if header is not None:
                    self.header_bytes -= len(header.block)

    def clear(self) -> None:
        with self.lock:
            self.parsed.clear()
            self.headers.clear()
            self.previews.clear()
            self.header_bytes = 0


_memory = _Memory(MEMORY_ENTRIES, MEMORY_HEADER_BYTES)
_shared: OrderedDict[str, MessageCache] = OrderedDict()
_shared_lock = threading.Lock()
_shared_pid = os.getpid()


def shared_cache(folder_path: Path) -> MessageCache:
    """This process's open MessageCache of a folder, for any session and thread (its own lock
    serialises them). Not to be closed by the caller: the least recently used one is closed
    once SHARED_CACHES are open. A forked child starts with none of its parent's."""
    global _shared_pid
    key = str(folder_path)
    with _shared_lock:
        if _shared_pid != os.getpid():
            # SQLite connections must not cross a fork: forget them (the parent closes its own).
            _shared.clear()
            _shared_pid = os.getpid()
        cache = _shared.get(key)
        if cache is not None:
            _shared.move_to_end(key)
            return cache
        cache = _shared[key] = MessageCache(folder_path, remember=True)
        evicted = _shared.popitem(last=False)[1] if len(_shared) > SHARED_CACHES else None
    if evicted is not None:
        evicted.close()
    return cache


def close_shared_caches() -> None:
    """Close every shared cache (tests; a process that is about to stop)."""
    with _shared_lock:
        caches = list(_shared.values())
        _shared.clear()
    for cache in caches:
        cache.close()
    _memory.clear()


class MessageCache:
    """Per-folder cache of ParsedMessage, keyed by file basename (the part before ':2,').

    Stored in folder_path / "provider.cache.sqlite" (a name Dovecot never uses), created on first
    use. SQLite in WAL mode with a busy timeout lets several processes and threads share it. The
    file is only a cache (RELIABILITY D4): deleted, it is created again; unreadable or corrupt (a
    garbage file, a truncated one, a damaged entry), it is discarded and rebuilt; busy past the
    timeout, the message is parsed without it. Entries carry FORMAT_VERSION, so a new format
    simply reparses. Message files are immutable, so a hit never reads the file; only the
    ",S=" size in the name, when present, is checked against the entry.
    """

    def __init__(self, folder_path: Path, *, remember: bool = False) -> None:
        """`remember`: keep what is read in this process's memory too (shared_cache)."""
        self.folder = str(folder_path)
        self.memory = _memory if remember else None
        self.path = Path(folder_path) / CACHE_FILE_NAME
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

    def get(self, basename: str, path: Path) -> ParsedMessage:
        """The parsed message: from this process's memory, else from the cache file, else
        parsed from path and stored in both.

        Raises OSError only when the message file itself cannot be read on a miss.
        """
        key = (self.folder, basename)
        memory = self.memory
        if memory is not None:
            remembered = memory.get(key)
            if remembered is not None:
                return remembered
        cached = self._use(lambda connection: self._load(connection, basename), create=True)
        if cached is not None:
            if memory is not None:
                memory.put(key, cached)
            return cached
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            data = _read_renamed(Path(path), basename)
        parsed = parse_message(data)
        blob = _encode_entry(parsed)
        self._use(
            lambda connection: connection.execute(
                "INSERT OR REPLACE INTO parsed (basename, data) VALUES (?, ?)", (basename, blob)
            ),
            create=True,
        )
        if memory is not None:
            memory.put(key, parsed)
        return parsed

    def header(self, basename: str, path: Path) -> MessageHeader:
        """The message's header block and its fields: what a SEARCH on header fields needs.

        From this process's memory, else read from the head of the file (using the parsed
        message's fields and envelope when this process has them). Never parses the body nor
        touches the cache file. Raises OSError when the file cannot be read.
        """
        key = (self.folder, basename)
        memory = self.memory
        if memory is not None:
            known = memory.header(key)
            if known is not None:
                return known
        parsed = memory.get(key) if memory is not None else None
        try:
            if parsed is not None:
                with open(path, "rb") as file:
                    block = file.read(parsed.header_size)
            else:
                block = read_header_block(Path(path))
        except FileNotFoundError:
            data = _read_renamed(Path(path), basename)
            end = parsed.header_size if parsed is not None else header_block_end(data)
            block = data if end is None else data[:end]
        if parsed is not None:
            if len(block) < parsed.header_size:
                raise OSError(f"message file {path} is shorter than its cache entry")
            header = MessageHeader(block, parsed.headers, parsed.envelope)
        else:
            header = MessageHeader(block)
        if memory is not None:
            memory.put_header(key, header)
        return header

    def preview(self, basename: str) -> str | None:
        """The message's PREVIEW text (RFC 8970) if it was made before, else None."""
        key = (self.folder, basename)
        if self.memory is not None:
            remembered = self.memory.preview(key)
            if remembered is not None:
                return remembered
        row = self._use(
            lambda connection: connection.execute(
                "SELECT text FROM preview WHERE basename = ?", (basename,)
            ).fetchone(),
            create=False,
        )
        if row is None or not isinstance(row[0], str):
            return None
        if self.memory is not None:
            self.memory.put_preview(key, row[0])
        return row[0]

    def put_preview(self, basename: str, text: str) -> None:
        """Keep a message's PREVIEW text (made once, on the first FETCH PREVIEW that needs it:
        message files never change, so neither does their preview)."""
        if self.memory is not None:
            self.memory.put_preview((self.folder, basename), text)
        self._use(
            lambda connection: connection.execute(
                "INSERT OR REPLACE INTO preview (basename, text) VALUES (?, ?)", (basename, text)
            ),
            create=True,
        )

    def forget(self, basenames: Iterable[str]) -> None:
        """Drop the entries of expunged messages (nothing to do if there is no cache file)."""
        keys = [(basename,) for basename in basenames]
        if keys:
            if self.memory is not None:
                self.memory.forget((self.folder, key[0]) for key in keys)
            self._use(lambda connection: self._delete(connection, keys), create=False)

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> MessageCache:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @staticmethod
    def _load(connection: sqlite3.Connection, basename: str) -> ParsedMessage | None:
        row = connection.execute(
            "SELECT data FROM parsed WHERE basename = ?", (basename,)
        ).fetchone()
        if row is None:
            return None
        try:
            parsed = _decode_entry(row[0])
        except (ValueError, KeyError, TypeError, zlib.error):
            return None  # damaged or from another format version: reparse and overwrite
        size_in_name = _SIZE_IN_NAME.search(basename)
        if size_in_name is not None and int(size_in_name.group(1)) != parsed.size:
            return None
        return parsed

    @staticmethod
    def _delete(connection: sqlite3.Connection, keys: list[tuple[str]]) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany("DELETE FROM parsed WHERE basename = ?", keys)
            connection.executemany("DELETE FROM preview WHERE basename = ?", keys)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _use(self, operation: Callable[[sqlite3.Connection], _T], create: bool) -> _T | None:
        """Run operation on the cache database; None when the cache cannot be used right now."""
        with self._lock:
            for _attempt in range(2):
                try:
                    connection = self._connect(create)
                    if connection is None:
                        return None
                    return operation(connection)
                except sqlite3.Error as error:
                    code = getattr(error, "sqlite_errorcode", None) or 0
                    corrupt = (code & 0xFF) in (_SQLITE_ERROR, _SQLITE_CORRUPT, _SQLITE_NOTADB)
                    identity = self._identity
                    self._disconnect()
                    if not corrupt:
                        return None  # busy past the timeout, read-only, disk full…: skip it
                    self._discard(identity)
                except OSError:
                    self._disconnect()
                    return None
            return None

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            status = None
        if self._connection is not None:
            if status is not None and (status.st_dev, status.st_ino) == self._identity:
                return self._connection
            # Deleted or replaced under us: follow the file on disk. An open connection pins its
            # inode, so a file created since cannot have the same (device, inode) pair.
            self._disconnect()
        if status is None and not create:
            return None
        connection = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_SECONDS,
            isolation_level=None,
            check_same_thread=False,
        )
        self._connection = connection
        status = os.stat(self.path)
        self._identity = (status.st_dev, status.st_ino)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS parsed (basename TEXT PRIMARY KEY, data BLOB NOT NULL)"
        )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS preview (basename TEXT PRIMARY KEY, text TEXT NOT NULL)"
        )
        return connection

    def _disconnect(self) -> None:
        connection, self._connection, self._identity = self._connection, None, None
        if connection is not None:
            connection.close()

    def _discard(self, identity: tuple[int, int] | None) -> None:
        """Remove a corrupt cache file — unless another process already replaced it."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return
        if identity is not None and (status.st_dev, status.st_ino) != identity:
            return
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
