"""APPEND with CATENATE (RFC 4469): TEXT parts and IMAP URLs (RFC 5092) joined into one message."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from provider.mailstore import Folder, FolderNotFound, Maildir, MessageNotFound
from provider.mailstore.message import parse_message, parse_section, section_bytes, shared_cache
from provider.mailstore.names import decode_mutf7
from provider.protocols.imap.fetch import MAX_NUMBER, partial_of, to_crlf
from provider.protocols.imap.parser import Atom, LiteralArg, ProtocolError, Value, as_text

MAX_PARTS = 1000
"""Parts one CATENATE may join: a real draft has a handful; the bound keeps a hostile command
from making the server open thousands of messages for one APPEND."""
MAX_URL_LENGTH = 4096
_NUMBER = re.compile(r"[1-9][0-9]{0,9}")
# What a BADURL code may carry (RFC 4469 §6 url-resp-text): no `]`, no controls.
_NOT_IN_CODE = re.compile(r"[\x00-\x1f\x7f\]]")


@dataclass(frozen=True)
class TextPart:
    """`TEXT literal`: octets taken as they are."""

    data: bytes


@dataclass(frozen=True)
class UrlPart:
    """`URL "imap-url"`: a message, or a section of one, on this server."""

    url: str


CatenatePart = TextPart | UrlPart


class BadUrl(Exception):
    """A URL part that is not one this server can resolve for this user (NO [BADURL url])."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason

    def response(self) -> str:
        shown = _NOT_IN_CODE.sub("", self.url)[:MAX_URL_LENGTH]
        return f"NO [BADURL {shown}] {self.reason}"


class TooBig(Exception):
    """The joined message is larger than APPENDLIMIT (NO [TOOBIG])."""


@dataclass(frozen=True)
class ImapUrl:
    """The parts of an RFC 5092 message URL this server resolves."""

    mailbox: str
    uidvalidity: int | None
    uid: int
    section: str
    partial: tuple[int, int] | None


def parse_catenate(value: Value | None) -> list[CatenatePart]:
    """The parenthesised list after CATENATE (RFC 4469 §5): `TEXT literal` (or literal8) and
    `URL astring`, at least one. ProtocolError (BAD) for anything else."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("CATENATE takes a parenthesised list of TEXT and URL parts")
    if len(value) > 2 * MAX_PARTS:
        raise ProtocolError(f"CATENATE joins at most {MAX_PARTS} parts")
    if len(value) % 2:
        raise ProtocolError("each CATENATE part is TEXT literal or URL url")
    parts: list[CatenatePart] = []
    for kind, data in zip(value[::2], value[1::2], strict=True):
        name = kind.upper() if isinstance(kind, Atom) else None
        if name == "TEXT" and isinstance(data, LiteralArg):
            parts.append(TextPart(checked_literal(data)))
        elif name == "URL" and isinstance(data, bytes | Atom):
            parts.append(UrlPart(as_text(data)))
        else:
            raise ProtocolError("each CATENATE part is TEXT literal or URL url")
    return parts


def checked_literal(data: LiteralArg) -> bytes:
    """A message literal's octets; ProtocolError for NUL in a plain literal (RFC 3501 §9
    CHAR8 excludes it): such content must come as a literal8 (`~{n}`, RFC 3516 §4.4)."""
    if not data.binary and b"\0" in data:
        raise ProtocolError("NUL in a literal: send such a message as a literal8 (~{n})")
    return bytes(data)


def _percent_decoded(text: str, url: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl(url, "not UTF-8 once %-decoded") from None


def _number(text: str, url: str, what: str) -> int:
    if not _NUMBER.fullmatch(text) or int(text) > MAX_NUMBER:
        raise BadUrl(url, f"{what} must be a number from 1 to {MAX_NUMBER}")
    return int(text)


def parse_imap_url(url: str, user: str, hosts: Iterable[str]) -> ImapUrl:
    """An RFC 5092 URL naming a message (`;UID=`) and optionally a section and a partial range,
    relative (`/INBOX;UIDVALIDITY=5/;UID=20/;SECTION=1`) or absolute (`imap://user@host/…`)
    with this session's user and one of this server's host names. BadUrl for anything else
    (another user or server, search URLs, URLAUTH)."""
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise BadUrl(url, "not an IMAP URL")
    path = url
    if url[:7].lower() == "imap://":
        authority, slash, path = url[7:].partition("/")
        if not slash:
            raise BadUrl(url, "the URL names no message")
        userinfo, at, hostport = authority.rpartition("@")
        if not at:
            raise BadUrl(url, "the URL names no user: only this user's messages can be used")
        name = _percent_decoded(userinfo.split(";", 1)[0], url)
        if name.casefold() != user.casefold():
            raise BadUrl(url, "the URL names another user")
        host = hostport.rsplit(":", 1)[0] if not hostport.endswith("]") else hostport
        host = host.strip("[]").lower()
        if host not in {h.lower() for h in hosts}:
            raise BadUrl(url, "the URL names another server")
        path = "/" + path
    if not path.startswith("/") or path.startswith("//") or "?" in path:
        raise BadUrl(url, "not a message URL of this server")
    pieces = re.split(r"/;", path[1:])
    mailbox_part, fields = pieces[0], pieces[1:]
    mailbox_text, _, validity = mailbox_part.partition(";")
    uidvalidity = None
    if validity:
        key, _, number = validity.partition("=")
        if key.upper() != "UIDVALIDITY":
            raise BadUrl(url, f"unknown mailbox parameter {key!r}")
        uidvalidity = _number(number, url, "UIDVALIDITY")
    mailbox = _percent_decoded(mailbox_text, url)
    if not mailbox:
        raise BadUrl(url, "the URL names no mailbox")
    values: dict[str, str] = {}
    order = ("UID", "SECTION", "PARTIAL")
    last = -1
    for field in fields:
        key, equals, value = field.partition("=")
        key = key.upper()
        if key == "URLAUTH" or key == "EXPIRE":
            raise BadUrl(url, "URLAUTH is not supported")
        if not equals or key not in order or order.index(key) <= last:
            raise BadUrl(url, f"unexpected {field!r}")
        last = order.index(key)
        values[key] = value
    if "UID" not in values:
        raise BadUrl(url, "the URL names no message (;UID=)")
    uid = _number(values["UID"], url, "UID")
    section = _percent_decoded(values.get("SECTION", ""), url)
    if section:
        try:
            parse_section(section)
        except ValueError:
            raise BadUrl(url, f"bad section {section!r}") from None
    partial = None
    if "PARTIAL" in values:
        start, dot, length = values["PARTIAL"].partition(".")
        if not start.isdigit() or int(start) > MAX_NUMBER:
            raise BadUrl(url, "bad PARTIAL")
        count = _number(length, url, "PARTIAL length") if dot else MAX_NUMBER
        partial = (int(start), count)
    return ImapUrl(mailbox, uidvalidity, uid, section, partial)


def _folder(maildir: Maildir, name: str, url: str) -> Folder:
    try:
        return maildir.folder(name)
    except (FolderNotFound, ValueError, OSError) as error:
        # A client that %-encoded the modified UTF-7 form rather than UTF-8 (RFC 2192 style).
        if "&" in name:
            try:
                return maildir.folder(decode_mutf7(name))
            except (FolderNotFound, ValueError, OSError):
                pass
        raise BadUrl(url, "no such mailbox") from error


def resolve(maildir: Maildir, target: ImapUrl, url: str) -> bytes:
    """The octets a URL stands for, as FETCH BODY.PEEK[section]<partial> would give them
    (CRLF line ends). BadUrl when the mailbox, UIDVALIDITY or message does not match."""
    folder = _folder(maildir, target.mailbox, url)
    if target.uidvalidity is not None and folder.uidvalidity != target.uidvalidity:
        raise BadUrl(url, "UIDVALIDITY does not match")
    try:
        info = folder.get(target.uid)
        data = folder.read(target.uid)
    except (MessageNotFound, KeyError):
        raise BadUrl(url, "no such message") from None
    if target.section:
        parsed = shared_cache(folder.path).get(info.basename, info.path)
        if parsed.size != len(data):
            parsed = parse_message(data)  # a cache entry that does not fit: trust the file
        data = section_bytes(data, parsed, target.section)
    return partial_of(to_crlf(data), target.partial)


def join_parts(
    maildir: Maildir, parts: list[CatenatePart], user: str, hosts: Iterable[str], limit: int
) -> bytes:
    """The message CATENATE builds: every part in order, all or nothing (BadUrl, TooBig)."""
    hosts = list(hosts)
    joined = bytearray()
    for part in parts:
        if isinstance(part, TextPart):
            joined += part.data
        else:
            joined += resolve(maildir, parse_imap_url(part.url, user, hosts), part.url)
        if len(joined) > limit:
            raise TooBig
    return bytes(joined)
