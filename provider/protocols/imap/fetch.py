"""FETCH (RFC 3501 §6.4.5, §7.4.2): attribute parsing and ENVELOPE/BODYSTRUCTURE encoding."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import BinaryIO

from provider.mailstore.message import (
    Address,
    BodyPart,
    Envelope,
    ParsedMessage,
    find_part,
    parse_section,
)
from provider.protocols.imap.parser import (
    Atom,
    ProtocolError,
    Value,
    encode_list,
    encode_nstring,
    encode_string,
)

MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
SIMPLE = frozenset(
    {
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "UID",
        "ENVELOPE",
        "BODYSTRUCTURE",
        "BODY",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "MODSEQ",
        "SAVEDATE",
        "PREVIEW",
    }
)
_SECTION_ITEM = re.compile(r"(BODY(?:\.PEEK)?)\[([^\]]*)\](?:<([0-9]+)\.([0-9]+)>)?\Z", re.I)
# RFC 3516 §4: BINARY[section-binary]<partial>, BINARY.SIZE[section-binary]; the section is
# part numbers only (no HEADER, TEXT or MIME: those have no content-transfer-encoding).
_BINARY_ITEM = re.compile(
    r"(BINARY(?:\.PEEK|\.SIZE)?)\[([0-9.]*)\](?:<([0-9]+)\.([0-9]+)>)?\Z", re.I
)
_BINARY_PART = re.compile(r"[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,8})*")
_WIDTH = re.compile(r",W=([0-9]+)")
MAX_NUMBER = 2**32 - 1  # RFC 3501 §9 `number`: an unsigned 32-bit integer
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class FetchItem:
    """One fetch-att: a simple name, BODY[section]<partial> (peek: no implicit \\Seen),
    BINARY[part]<partial> or BINARY.SIZE[part] (RFC 3516; `section` is then the part numbers),
    or PREVIEW (`lazy`: RFC 8970's LAZY modifier)."""

    name: str
    section: str | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False
    lazy: bool = False

    @property
    def label(self) -> str:
        """The name the response uses (BODY.PEEK is answered as BODY, partial by its start)."""
        if self.section is None:
            return self.name
        if self.name == "BINARY.SIZE":
            return f"BINARY.SIZE[{self.section}]"
        start = f"<{self.partial[0]}>" if self.partial else ""
        return f"{self.name}[{self.section}]{start}"

    @property
    def sets_seen(self) -> bool:
        if self.name == "BINARY.SIZE":
            return False
        return (self.section is not None and not self.peek) or self.name in (
            "RFC822",
            "RFC822.TEXT",
        )


def parse_fetch_items(value: Value) -> list[FetchItem]:
    """The fetch-att list of a FETCH command (RFC 3501 §9 `fetch`): a macro, one item, or a
    parenthesised list. ProtocolError if anything is not a fetch-att."""
    if isinstance(value, Atom) and value.upper() in MACROS:
        return [FetchItem(name) for name in MACROS[value.upper()]]
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ProtocolError("empty fetch list")
    parsed: list[FetchItem] = []
    position = 0
    while position < len(items):
        item = items[position]
        position += 1
        if not isinstance(item, Atom):
            raise ProtocolError("bad fetch item")
        upper = item.upper()
        if upper == "PREVIEW" and position < len(items) and isinstance(items[position], list):
            # RFC 8970 §3.1: PREVIEW (LAZY); the only modifier there is.
            modifiers = items[position]
            position += 1
            if [m.upper() if isinstance(m, Atom) else m for m in modifiers] != ["LAZY"]:
                raise ProtocolError("PREVIEW takes only the modifier LAZY")
            parsed.append(FetchItem("PREVIEW", lazy=True))
            continue
        if upper in SIMPLE:
            parsed.append(FetchItem(upper))
            continue
        binary = _BINARY_ITEM.match(item)
        if binary is not None:
            parsed.append(_binary_item(binary))
            continue
        match = _SECTION_ITEM.match(item)
        if match is None:
            raise ProtocolError(f"unknown fetch item {item!r}")
        peek = match.group(1).upper() == "BODY.PEEK"
        section = _canonical_section(match.group(2))
        parsed.append(FetchItem("BODY", section, _partial(match), peek))
    return parsed


def is_lone_preview_lazy(args: list[Value]) -> bool:
    """FETCH seq PREVIEW (LAZY): the one fetch-att form whose modifier list stands where
    FETCH's own modifiers (CHANGEDSINCE) would (RFC 8970 §3.1)."""
    return (
        len(args) == 3
        and isinstance(args[1], Atom)
        and args[1].upper() == "PREVIEW"
        and isinstance(args[2], list)
        and len(args[2]) == 1
        and isinstance(args[2][0], Atom)
        and args[2][0].upper() == "LAZY"
    )


def lone_preview_lazy(args: list[Value]) -> Value:
    """The fetch-att argument of FETCH, with PREVIEW (LAZY) joined back into one list."""
    return [args[1], args[2]] if is_lone_preview_lazy(args) else args[1]


def _partial(match: re.Match[str]) -> tuple[int, int] | None:
    """The <start.count> of a section item, checked (RFC 3501 §9: count non-zero, 32 bits)."""
    if match.group(3) is None:
        return None
    start, count = int(match.group(3)), int(match.group(4))
    if count == 0:
        raise ProtocolError("partial count must be positive")
    if start > MAX_NUMBER or count > MAX_NUMBER:
        raise ProtocolError("partial range out of range (RFC 3501 number: 32 bits)")
    return start, count


def _binary_item(match: re.Match[str]) -> FetchItem:
    """BINARY[.PEEK][part]<partial> or BINARY.SIZE[part] (RFC 3516 §6 grammar)."""
    name = match.group(1).upper()
    section = match.group(2)
    if section and not _BINARY_PART.fullmatch(section):
        raise ProtocolError(f"bad binary section {section!r}")
    partial = _partial(match)
    if name == "BINARY.SIZE":
        if partial is not None:
            raise ProtocolError("BINARY.SIZE takes no partial")
        return FetchItem("BINARY.SIZE", section)
    return FetchItem("BINARY", section, partial, peek=name == "BINARY.PEEK")


def _canonical_section(section: str) -> str:
    try:
        spec = parse_section(section)
    except ValueError:
        raise ProtocolError(f"bad section {section!r}") from None
    numbers = ".".join(str(n) for n in spec.part)
    text = spec.text
    if spec.fields:
        text += " (" + " ".join(f.upper() for f in spec.fields) + ")"
    return ".".join(p for p in (numbers, text) if p)


def rfc822_size(basename: str, data: bytes | None) -> int | None:
    """The CRLF size (W= in the file name, else counted from the data when it is given)."""
    match = _WIDTH.search(basename)
    if match:
        return int(match.group(1))
    if data is None:
        return None
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_crlf(data: bytes) -> bytes:
    """Bare LF → CRLF (files written by other software may hold bare LFs; IMAP needs CRLF)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    # CRLF → LF → CRLF turns every bare LF into CRLF and leaves the rest (bare CRs too) as is.
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def partial_of(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    start, count = partial
    return data[start : start + count]


def format_internal_date(timestamp: float, zone_minutes: int = 0) -> str:
    """RFC 3501 date-time in the zone it was given in (UTC for deliveries):
    `17-Jul-1996 02:44:25 -0700`."""
    moment = time.gmtime(timestamp + zone_minutes * 60)
    sign, minutes = ("-" if zone_minutes < 0 else "+"), abs(zone_minutes)
    return (
        f"{moment.tm_mday:02d}-{_MONTHS[moment.tm_mon - 1]}-{moment.tm_year:04d} "
        f"{moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


def _addresses(addresses: list[Address]) -> bytes:
    if not addresses:
        return b"NIL"
    return encode_list(
        encode_list(
            [
                encode_nstring(a.name),
                encode_nstring(a.adl),
                encode_nstring(a.mailbox),
                encode_nstring(a.host),
            ]
        )
        for a in addresses
    )


def envelope_bytes(envelope: Envelope) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE."""
    return encode_list(
        [
            encode_nstring(envelope.date),
            encode_nstring(envelope.subject),
            _addresses(envelope.from_),
            _addresses(envelope.sender),
            _addresses(envelope.reply_to),
            _addresses(envelope.to),
            _addresses(envelope.cc),
            _addresses(envelope.bcc),
            encode_nstring(envelope.in_reply_to),
            encode_nstring(envelope.message_id),
        ]
    )


def _params(params: list[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return encode_list(encode_string(x) for pair in params for x in pair)


def _disposition(part: BodyPart) -> bytes:
    if part.disposition is None:
        return b"NIL"
    kind, params = part.disposition
    return encode_list([encode_string(kind), _params(params)])


def _language(part: BodyPart) -> bytes:
    if not part.language:
        return b"NIL"
    if len(part.language) == 1:
        return encode_string(part.language[0])
    return encode_list(encode_string(x) for x in part.language)


def body_structure(part: BodyPart, extensible: bool = True) -> bytes:
    """RFC 3501 §7.4.2 BODYSTRUCTURE (extensible) or BODY (without extension data)."""
    if part.parts:
        fields = [b"".join(body_structure(child, extensible) for child in part.parts)]
        fields.append(encode_string(part.subtype))
        if extensible:
            fields += [_params(part.params), _disposition(part), _language(part)]
            fields.append(encode_nstring(part.location))
        # Children are concatenated without spaces (RFC 3501 body-type-mpart).
        return b"(" + fields[0] + b" " + b" ".join(fields[1:]) + b")"
    fields = [
        encode_string(part.type),
        encode_string(part.subtype),
        _params(part.params),
        encode_nstring(part.id),
        encode_nstring(part.description),
        encode_string(part.encoding),
        str(part.size).encode(),
    ]
    if part.message_envelope is not None and part.message_body is not None:
        fields.append(envelope_bytes(part.message_envelope))
        fields.append(body_structure(part.message_body, extensible))
        fields.append(str(part.lines or 0).encode())
    elif part.type == "text":
        fields.append(str(part.lines or 0).encode())
    if extensible:
        fields += [encode_nstring(part.md5), _disposition(part), _language(part)]
        fields.append(encode_nstring(part.location))
    return encode_list(fields)


# --- literals streamed from the message file (issue 11 item 2: output as the client reads) ---

# Octets read from a message file per step; a step's output is at most twice this (bare LFs).
CHUNK = 64 * 1024


class CrlfStream:
    """Bare LF → CRLF over consecutive chunks of one range (as `to_crlf` does on the whole): a CR
    at the end of a chunk waits for the next one, which may start with its LF."""

    def __init__(self) -> None:
        self.carry = b""

    def convert(self, raw: bytes, final: bool) -> bytes:
        data = self.carry + raw if self.carry else raw
        self.carry = b""
        if not final and data.endswith(b"\r"):
            data, self.carry = data[:-1], b"\r"
        if data.count(b"\n") == data.count(b"\r\n"):
            return data
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_length(file: BinaryIO, start: int, end: int) -> int:
    """The size octets [start, end) of the file have once their line ends are CRLF, counted a
    chunk at a time."""
    file.seek(start)
    stream = CrlfStream()
    total = 0
    left = end - start
    while left > 0:
        raw = file.read(min(CHUNK, left))
        if not raw:
            break
        left -= len(raw)
        total += len(stream.convert(raw, final=left <= 0))
    return total + len(stream.carry)


class FileLiteral:
    """A FETCH literal sent from the message file in chunks rather than read whole: octets
    [start, end) of the file, line ends made CRLF, then the <partial> window of that.

    `size` (what goes in `{size}`) is known before the first chunk; `next_chunk()` (blocking:
    call it in a worker thread) gives the following chunk, b"" once `size` octets were given.
    The file is immutable (Maildir), so it is still complete if the message is expunged or
    renamed meanwhile; a file shorter than promised raises OSError (the caller must then drop
    the connection: a literal cannot be taken back).
    """

    def __init__(
        self,
        file: BinaryIO,
        start: int,
        end: int,
        partial: tuple[int, int] | None,
        *,
        crlf: bool,
    ) -> None:
        self.file = file
        self.crlf = crlf
        total = end - start if crlf else crlf_length(file, start, end)
        skip, size = 0, total
        if partial is not None:
            skip = min(partial[0], total)
            size = max(0, min(partial[1], total - partial[0]))
        if crlf:
            # Already CRLF: the window is a plain range of the file.
            start, skip = start + skip, 0
        self.position = start
        self.end = end
        self.skip = skip
        self.size = size
        self.left = size
        self.stream = CrlfStream()
        file.seek(start)

    def next_chunk(self) -> bytes:
        # Several literals of one message (BODY[1] BODY[2]) may share the file.
        self.file.seek(self.position)
        while self.left > 0:
            raw = self.file.read(min(CHUNK, self.end - self.position))
            if not raw:
                raise OSError(f"message file {self.file.name!r} is shorter than expected")
            self.position += len(raw)
            data = raw if self.crlf else self.stream.convert(raw, self.position >= self.end)
            if self.skip:
                dropped = min(self.skip, len(data))
                data, self.skip = data[dropped:], self.skip - dropped
            if data:
                data = data[: self.left]
                self.left -= len(data)
                return data
        return b""

    def close(self) -> None:
        self.file.close()


def section_span(parsed: ParsedMessage, section: str) -> tuple[int, int, bool]:
    """Where BODY[section] lies in the message file, for messages too big to read whole:
    (start, end, True) when it is octets [start, end) as they are (what `section_bytes`
    slices), or (0, end, False) when it is picked from the header fields, all of which lie
    before `end` (HEADER.FIELDS: `section_bytes` on the first `end` octets gives it)."""
    spec = parse_section(section)
    message: BodyPart | None = parsed.body
    if spec.part:
        found = find_part(parsed.body, spec.part)
        if found is None:
            return 0, 0, True
        if spec.text == "":
            return found.body_start, found.body_end, True
        if spec.text == "MIME":
            return found.header_start, found.header_end, True
        message = found.message_body
        if message is None:
            return 0, 0, True
    assert message is not None
    if spec.text in ("", "TEXT"):
        if spec.text == "" and not spec.part:
            return 0, parsed.size, True
        return message.body_start, message.body_end, True
    if spec.text == "HEADER":
        return message.header_start, message.header_end, True
    return 0, message.header_end, False
