"""SORT (RFC 5256 §3) and ESORT (RFC 5267 §3.2): sort criteria, base subjects, sort keys."""

from __future__ import annotations

import email.errors
import email.header
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from provider.mailstore import MessageInfo
from provider.mailstore.message import Address, ParsedMessage
from provider.protocols.imap.casemap import casemap
from provider.protocols.imap.parser import Atom, ProtocolError, Value
from provider.protocols.imap.search import esearch_line

SORT_KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "DISPLAYFROM", "DISPLAYTO", "FROM", "SIZE", "SUBJECT", "TO"}
)
# The keys answered from the file name alone: no message needs to be opened for them.
_CHEAP_KEYS = frozenset({"ARRIVAL", "SIZE"})
MAX_REFERENCES = 100
"""References kept per message (the last ones, the parent among them). Linking a chain costs a
walk up the tree per link, so one message naming 40,000 ids would cost billions of steps;
real References fields are cut by MUAs long before this."""


def parse_sort_criteria(value: Value) -> list[tuple[str, bool]]:
    """`(REVERSE DATE SUBJECT)` → [("DATE", True), ("SUBJECT", False)]; BAD for anything
    else (an empty list, an unknown key, REVERSE REVERSE, a trailing REVERSE)."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("SORT takes a parenthesised list of sort criteria")
    criteria: list[tuple[str, bool]] = []
    reverse = False
    for item in value:
        if not isinstance(item, Atom):
            raise ProtocolError("sort criteria are atoms")
        key = item.upper()
        if key == "REVERSE" and not reverse:
            reverse = True
            continue
        if key not in SORT_KEYS:
            raise ProtocolError(f"unknown sort criterion {item}")
        # A key already sorted by cannot change the order again: each is sorted by once, so
        # a list of thousands of criteria costs no more than seven.
        if all(key != known for known, _ in criteria):
            criteria.append((key, reverse))
        reverse = False
    if reverse:
        raise ProtocolError("REVERSE must be followed by a sort criterion")
    return criteria


def needs_content(criteria: list[tuple[str, bool]]) -> bool:
    return any(key not in _CHEAP_KEYS for key, _ in criteria)


# --- base subject (RFC 5256 §2.1) -----------------------------------------------------------

_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = r"(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:"
_LEADER = re.compile(r"(?:" + _BLOB + r")*" + _REFWD, re.IGNORECASE)
_BLOB_PREFIX = re.compile(_BLOB)
_WHITESPACE = re.compile(r"[ \t\r\n]+")


def decode_subject(raw: str) -> str:
    """RFC 2047 encoded words → text; undecodable text is kept as it is."""
    try:
        return str(email.header.make_header(email.header.decode_header(raw)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return raw


def base_subject(subject: str) -> tuple[str, bool]:
    """The base subject of a decoded subject (RFC 5256 §2.1 steps 1-7), and whether the
    extraction removed a reply or forward marker (a subj-refwd, `(fwd)`, `[fwd: …]`)."""
    text = _WHITESPACE.sub(" ", subject)
    reply = False
    while True:
        # (2) trailers: "(fwd)" and white space, as long as there are any.
        while True:
            if text.endswith(" "):
                text = text[:-1]
            elif text[-5:].lower() == "(fwd)":
                text = text[:-5]
                reply = True
            else:
                break
        # (3)-(5) leaders (blobs before a re:/fw:/fwd:, or white space), then a blob prefix
        # if something other than white space is left after it.
        while True:
            match = _LEADER.match(text)
            if match:
                text = text[match.end() :]
                reply = True
                continue
            if text.startswith(" "):
                text = text[1:]
                continue
            match = _BLOB_PREFIX.match(text)
            if match and text[match.end() :].strip(" "):
                text = text[match.end() :]
                continue
            break
        # (6) a whole "[fwd: …]" wrapper: unwrap and start again.
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


def collation_key(text: str) -> str:
    """i;unicode-casemap (RFC 5051): simple titlecase, then NFKD (see casemap)."""
    return casemap(text)


def _first_mailbox(addresses: list[Address]) -> str:
    """addr-mailbox of the first address of a field ("" without one): RFC 5256 §3."""
    for address in addresses:
        if address.host is not None:
            return collation_key(address.mailbox or "")
    return ""


def display_value(addresses: list[Address]) -> str:
    """The display sort value of a field's first address (RFC 5957 §3), as a collation key:
    its display name decoded, else mailbox@host, else the mailbox (a group's name: the first
    address of a group field is its start marker), else ""."""
    if not addresses:
        return ""
    first = addresses[0]
    name = decode_subject(first.name) if first.name else ""
    if name:
        return collation_key(name)
    if first.mailbox is not None and first.host is not None:
        return collation_key(f"{first.mailbox}@{first.host}")
    return collation_key(first.mailbox or "")


# --- message ids (RFC 5256 §3, REFERENCES) ----------------------------------------------------

_MSG_ID = re.compile(r"<([^<>]*)>")


def normalized_ids(text: str | None) -> list[str]:
    """The valid msg-ids of a header value, quoting and white space removed, so that
    `<"a b"@x>` and `<ab@x>` are one id. An id without `@` is not valid."""
    ids = []
    for match in _MSG_ID.finditer(text or ""):
        value = re.sub(r'[\s"\\]', "", match.group(1))
        local, at, domain = value.rpartition("@")
        if at and local and domain:
            ids.append(value)
    return ids


@dataclass
class SortMessage:
    """What SORT and THREAD need of one found message."""

    seq: int
    uid: int
    arrival: float
    size: int
    sent: float = 0.0
    subject: str = ""  # base subject, collation key
    reply: bool = False
    from_: str = ""
    to: str = ""
    cc: str = ""
    display_from: str = ""
    display_to: str = ""
    message_id: str | None = None
    references: list[str] = field(default_factory=list)
    modseq: int = 0


def sort_message(
    seq: int,
    info: MessageInfo,
    size: int,
    parsed: ParsedMessage | None,
    header: Callable[[str], str | None] | None = None,
) -> SortMessage:
    """The sort fields of one message; `parsed` None when only ARRIVAL/SIZE are wanted;
    `header` gives a raw header's value (References) when threading needs it."""
    message = SortMessage(seq, info.uid, info.internal_date, size, sent=info.internal_date)
    if parsed is None:
        return message
    envelope = parsed.envelope
    # RFC 5256 §2.2: the Date: field in UTC, the internal date when it has none.
    if parsed.date_header is not None:
        message.sent = parsed.date_header
    subject, message.reply = base_subject(decode_subject(envelope.subject or ""))
    message.subject = collation_key(subject)
    message.from_ = _first_mailbox(envelope.from_)
    message.to = _first_mailbox(envelope.to)
    message.cc = _first_mailbox(envelope.cc)
    message.display_from = display_value(envelope.from_)
    message.display_to = display_value(envelope.to)
    ids = normalized_ids(envelope.message_id)
    message.message_id = ids[0] if ids else None
    if header is not None:
        references = normalized_ids(header("references"))
        if not references:
            references = normalized_ids(envelope.in_reply_to)[:1]
        message.references = references[-MAX_REFERENCES:]
    return message


def _key(name: str) -> Callable[[SortMessage], object]:
    return {
        "ARRIVAL": lambda m: m.arrival,
        "CC": lambda m: m.cc,
        "DATE": lambda m: m.sent,
        "DISPLAYFROM": lambda m: m.display_from,
        "DISPLAYTO": lambda m: m.display_to,
        "FROM": lambda m: m.from_,
        "SIZE": lambda m: m.size,
        "SUBJECT": lambda m: m.subject,
        "TO": lambda m: m.to,
    }[name]


def sort_messages(messages: list[SortMessage], criteria: list[tuple[str, bool]]) -> None:
    """Sort in place by the criteria in priority order, ties by sequence number (RFC 5256 §3:
    REVERSE reverses only its own criterion, never the sequence-number tie break)."""
    messages.sort(key=lambda m: m.seq)
    # Stable sorts from the least to the most important criterion (reverse=True keeps ties
    # in their order too).
    for name, reverse in reversed(criteria):
        messages.sort(key=_key(name), reverse=reverse)


def ordered_sequence_set(numbers: list[int]) -> str:
    """Numbers in the given order as a sequence set (ESORT's ALL keeps the sort order): runs
    of consecutive ascending numbers become ranges, nothing is reordered."""
    parts: list[str] = []
    index = 0
    while index < len(numbers):
        end = index
        while end + 1 < len(numbers) and numbers[end + 1] == numbers[end] + 1:
            end += 1
        first, last = numbers[index], numbers[end]
        parts.append(str(first) if first == last else f"{first}:{last}")
        index = end + 1
    return ",".join(parts)


def esort_line(
    tag: str,
    by_uid: bool,
    options: set[str],
    ordered: list[int],
    modseq: int | None,
    partial: tuple[int, int] | None = None,
) -> bytes | None:
    """ESEARCH for a sorted result: as for SEARCH, with ALL (and PARTIAL's slice) keeping the
    sort order."""
    return esearch_line(tag, by_uid, options, ordered, modseq, ordered_sequence_set, partial)
