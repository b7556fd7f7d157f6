"""IMAP4rev1 command parsing and response encoding (RFC 3501 §9), pure functions over bytes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union

MAX_SEQUENCE_NUMBER = 2**32 - 1
MAX_NESTING = 64
"""Deepest parenthesised list a command may hold. Nothing legitimate comes close (a SEARCH
program nests a few levels); without a bound a 64 KB line of "(" would exhaust the stack."""


class ProtocolError(Exception):
    """The client sent something the grammar does not allow (answered with BAD)."""


class Atom(str):
    """An atom (or a fetch-att such as `BODY[HEADER.FIELDS (To)]<0.10>`), as sent."""

    __slots__ = ()


class LiteralArg(bytes):
    """A string that came as a literal (`{n}`): APPEND tells a message from a quoted
    date-time this way."""

    __slots__ = ()
    binary = False


class Literal8(LiteralArg):
    """A literal8 (`~{n}`, RFC 4466 §4.3): its octets may include NUL."""

    __slots__ = ()
    binary = True


Value = Union[Atom, bytes, list["Value"]]  # noqa: UP007 (a recursive alias needs the string form)


@dataclass(frozen=True)
class Command:
    """One tagged command: tag, upper-cased name, and its arguments."""

    tag: str
    name: str
    args: list[Value]


_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
# Where an atom-like argument ends: wildcards (LIST), `*` (sequence sets), a leading backslash
# (flags) and `]` (an ASTRING-CHAR: mailbox names may hold it) are let through. `[` is an
# ordinary ATOM-CHAR too, except right after a fetch attribute that takes a section
# (`BODY.PEEK[HEADER.FIELDS (To)]`), where the section runs to its `]`.
_ARGUMENT_END = frozenset(b'(){ "') | frozenset(range(0x20)) | {0x7F}
_SECTION_ATTRIBUTES = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})
_TAG_FORBIDDEN = _ATOM_SPECIALS | {ord("+")}
_LITERAL_AT_END = re.compile(rb"\{([0-9]{1,20})(\+?)\}\r?\n\Z")
_SEQUENCE_SET = re.compile(
    r"(\*|[1-9][0-9]*)(:(\*|[1-9][0-9]*))?(,(\*|[1-9][0-9]*)(:(\*|[1-9][0-9]*))?)*"
)


def trailing_literal(line: bytes) -> tuple[int, bool] | None:
    """If a line ends with a literal announcement `{n}` or `{n+}` (RFC 3501 §4.3, RFC 7888),
    return (n, non-synchronizing); else None."""
    match = _LITERAL_AT_END.search(line)
    if match is None:
        return None
    return int(match.group(1)), bool(match.group(2))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def expect(self, char: bytes) -> None:
        if not self.data.startswith(char, self.pos):
            raise ProtocolError(f"expected {char.decode()!r} at octet {self.pos}")
        self.pos += len(char)

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def atom(self) -> Atom:
        """An atom (or an astring's atom form); a fetch section `[...]` after BODY, BODY.PEEK or
        BINARY[.PEEK|.SIZE], and the partial `<...>` after it, are kept inside it."""
        start = self.pos
        data = self.data
        while self.pos < len(data):
            char = data[self.pos]
            if char == ord("[") and data[start : self.pos].upper() in _SECTION_ATTRIBUTES:
                end = data.find(b"]", self.pos)
                if end < 0:
                    raise ProtocolError("unterminated [")
                self.pos = end + 1
                continue
            if char in _ARGUMENT_END:
                break
            self.pos += 1
        if self.pos == start:
            raise ProtocolError(f"unexpected octet at {start}")
        try:
            return Atom(data[start : self.pos].decode("ascii"))
        except UnicodeDecodeError:
            raise ProtocolError("8-bit characters in an atom") from None

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise ProtocolError("unterminated quoted string")
            char = data[self.pos]
            self.pos += 1
            if char == ord('"'):
                return bytes(out)
            if char == ord("\\"):
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise ProtocolError("bad escape in quoted string")
                char = data[self.pos]
                self.pos += 1
            elif char in b"\r\n":
                raise ProtocolError("CR or LF in a quoted string")
            out.append(char)

    def literal(self) -> bytes:
        binary = self.peek() == ord("~")
        if binary:
            self.pos += 1
        self.expect(b"{")
        end = self.data.find(b"}", self.pos)
        if end < 0:
            raise ProtocolError("unterminated literal size")
        size_text = self.data[self.pos : end].rstrip(b"+")
        if not size_text.isdigit():
            raise ProtocolError("bad literal size")
        self.pos = end + 1
        self.expect(b"\r\n")
        size = int(size_text)
        if self.pos + size > len(self.data):
            raise ProtocolError("literal shorter than announced")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return Literal8(value) if binary else LiteralArg(value)

    def value(self) -> Value:
        char = self.peek()
        if char == ord("("):
            if self.depth >= MAX_NESTING:
                raise ProtocolError(f"parenthesised lists nested more than {MAX_NESTING} deep")
            self.pos += 1
            self.depth += 1
            items: list[Value] = []
            while True:
                if self.peek() == ord(")"):
                    self.pos += 1
                    self.depth -= 1
                    return items
                if items:
                    self.expect(b" ")
                    if self.peek() == ord(")"):
                        raise ProtocolError("space before )")
                items.append(self.value())
        if char == ord('"'):
            return self.quoted()
        if char == ord("{") or (
            char == ord("~") and self.data[self.pos + 1 : self.pos + 2] == b"{"
        ):
            return self.literal()
        return self.atom()


def parse_command(data: bytes) -> Command:
    """Parse one complete command (RFC 3501 §9 `command`), literals inline, CRLF at the end."""
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    reader = _Reader(data)
    start = 0
    while reader.pos < len(data) and data[reader.pos] not in _TAG_FORBIDDEN:
        reader.pos += 1
    if reader.pos == start:
        raise ProtocolError("missing tag")
    tag = data[start : reader.pos].decode("ascii", "replace")
    if reader.at_end():
        raise _TaggedError(tag, "missing command")
    try:
        reader.expect(b" ")
        name = reader.atom().upper()
        args: list[Value] = []
        while not reader.at_end():
            reader.expect(b" ")
            args.append(reader.value())
    except ProtocolError as error:
        raise _TaggedError(tag, str(error)) from None
    return Command(tag, name, args)


class _TaggedError(ProtocolError):
    """A ProtocolError for which the tag is known, so BAD can be tagged."""

    def __init__(self, tag: str, message: str) -> None:
        super().__init__(message)
        self.tag = tag


TaggedError = _TaggedError


# --- sequence sets (RFC 3501 §9 sequence-set) ----------------------------------------------


def parse_sequence_set(text: str) -> list[tuple[int | None, int | None]]:
    """`1:3,5,7:*` → [(1, 3), (5, 5), (7, None)]; None stands for `*`. ProtocolError if bad."""
    if not _SEQUENCE_SET.fullmatch(text):
        raise ProtocolError(f"bad sequence set {text!r}")
    ranges: list[tuple[int | None, int | None]] = []
    for part in text.split(","):
        first, _, last = part.partition(":")
        low = None if first == "*" else int(first)
        high = low if not last else (None if last == "*" else int(last))
        for number in (low, high):
            if number is not None and number > MAX_SEQUENCE_NUMBER:
                raise ProtocolError("number out of range")
        ranges.append((low, high))
    return ranges


def is_sequence_set(text: str) -> bool:
    return bool(_SEQUENCE_SET.fullmatch(text))


def sequence_contains(
    ranges: list[tuple[int | None, int | None]], number: int, largest: int
) -> bool:
    """Whether `number` is in the set, `*` meaning `largest` (RFC 3501 §6.4.8: 4:* with 3
    messages means 3:4)."""
    for low, high in ranges:
        a = largest if low is None else low
        b = largest if high is None else high
        if min(a, b) <= number <= max(a, b):
            return True
    return False


def format_sequence_set(numbers: Iterable[int]) -> str:
    """[1, 2, 3, 5] → `1:3,5` (for COPYUID and APPENDUID)."""
    ordered = sorted(set(numbers))
    parts: list[str] = []
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        parts.append(str(ordered[index]) if end == index else f"{ordered[index]}:{ordered[end]}")
        index = end + 1
    return ",".join(parts)


# --- response encoding (RFC 3501 §9 string, astring, nstring) ------------------------------

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")


def encode_string(value: str | bytes) -> bytes:
    """A quoted string when it can be one, else a literal."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) < 1024 and _QUOTABLE.fullmatch(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def encode_nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else encode_string(value)


def encode_literal(value: bytes) -> bytes:
    return b"{%d}\r\n" % len(value) + value


def encode_list(items: Iterable[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


def encode_mailbox(name: str, *, utf8: bool = False) -> bytes:
    """A mailbox name as an astring in modified UTF-7 (RFC 3501 §5.1.3), or in UTF-8 once the
    client enabled UTF8=ACCEPT (RFC 6855 §3: a quoted string may then hold UTF-8)."""
    from provider.mailstore.names import encode_mutf7

    if utf8:
        raw = name.encode("utf-8")
        if raw and raw.isascii() and all(c not in _ATOM_SPECIALS for c in raw):
            return raw
        if b"\r" in raw or b"\n" in raw or b"\0" in raw or len(raw) >= 1024:
            return b"{%d}\r\n" % len(raw) + raw
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    encoded = encode_mutf7(name).encode("ascii")
    if encoded and all(c not in _ATOM_SPECIALS for c in encoded):
        return encoded
    return encode_string(encoded)


def as_text(value: Value) -> str:
    """An astring argument as text (UTF-8, surrogate escapes for the rest); ProtocolError for a
    parenthesised list."""
    if isinstance(value, list):
        raise ProtocolError("expected a string, got a list")
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)
