"""SEARCH (RFC 3501 §6.4.4): parse search keys into a predicate over one message."""

from __future__ import annotations

import email.header
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

from provider.mailstore import MessageInfo
from provider.mailstore.maildir import save_date
from provider.mailstore.message import MessageHeader, ParsedMessage
from provider.protocols.imap import casemap
from provider.protocols.imap.parser import (
    Atom,
    ProtocolError,
    Value,
    as_text,
    format_sequence_set,
    is_sequence_set,
    parse_sequence_set,
    sequence_contains,
)

MAX_DEPTH = 64
"""How deeply NOT, OR and parenthesised keys may nest. The keys are parsed and evaluated by
recursion, so an unbounded program (`NOT NOT ... ALL` five thousand times) would exhaust the
stack; real clients nest a few levels."""

MAX_INTERVAL = 2**32 - 1
"""RFC 5032 interval: an nz-number, 32 bits (RFC 3501 §9)."""

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}


@dataclass
class Candidate:
    """One message being tested; data and parsed are loaded only if a key needs them."""

    seq: int
    info: MessageInfo
    recent: bool
    largest_seq: int
    largest_uid: int
    # The whole file and its parsed structure, or (no BODY/TEXT key) the header block only.
    load: Callable[[], tuple[bytes, ParsedMessage | MessageHeader]]
    # RFC 7162: filled in only when the search has a MODSEQ key.
    modseq: int = 0
    # RFC 5182: the UIDs of the saved result, for the `$` key.
    saved: frozenset[int] = frozenset()
    _loaded: tuple[bytes, ParsedMessage | MessageHeader] | None = None

    def content(self) -> tuple[bytes, ParsedMessage | MessageHeader]:
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded


Predicate = Callable[[Candidate], bool]


def parse_date(value: Value) -> date:
    """RFC 3501 date: `1-Feb-1994` (quoted or not)."""
    text = as_text(value)
    try:
        day, month, year = text.split("-")
        return date(int(year), _MONTHS[month.upper()], int(day))
    except (ValueError, KeyError):
        raise ProtocolError(f"bad date {text!r}") from None


def _decoded_header(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if "=?" not in text:
        return text  # no encoded word: decode_header would hand the text back as it is
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text


def _header_values(candidate: Candidate, name: str) -> list[str]:
    data, parsed = candidate.content()
    values = []
    for field_name, start, end in parsed.headers:
        if field_name == name:
            raw = data[start:end]
            _, _, value = raw.partition(b":")
            values.append(_decoded_header(value.replace(b"\r\n", b"").replace(b"\n", b"")))
    return values


def _address_texts(candidate: Candidate, name: str) -> list[str]:
    """The field's addresses as parsed, "Name <local@domain>": a search for an address also
    finds it written with comments or odd spacing (as Dovecot's address search does)."""
    texts = []
    for address in candidate.content()[1].addresses(name):
        if address.mailbox is None or address.host is None:
            continue  # group markers
        spec = f"{address.mailbox}@{address.host}"
        name_text = _decoded_header(address.name.encode()) if address.name else ""
        texts.append(f"{name_text} <{spec}>" if name_text else spec)
    return texts


def _contains(haystack: str, needle: str) -> bool:
    return casemap.contains(haystack, needle)


def _body_text(candidate: Candidate) -> str:
    data, parsed = candidate.content()
    assert isinstance(parsed, ParsedMessage), "BODY and TEXT load the whole message"
    return data[parsed.body.body_start : parsed.body.body_end].decode("utf-8", "replace")


def parse_search(args: list[Value], used: set[str] | None = None, depth: int = 0) -> Predicate:
    """All keys must hold (RFC 3501 §6.4.4). A leading `CHARSET x` is the caller's business.
    Keys that need more than the message (MODSEQ) are added to `used`. ProtocolError for keys
    nested more than MAX_DEPTH deep."""
    used = set() if used is None else used
    position = 0
    predicates: list[Predicate] = []
    while position < len(args):
        predicate, position = _key(args, position, used, depth)
        predicates.append(predicate)
    if not predicates:
        raise ProtocolError("SEARCH needs at least one key")
    return lambda c: all(p(c) for p in predicates)


def _take(args: list[Value], position: int) -> Value:
    if position >= len(args):
        raise ProtocolError("search key is missing its argument")
    return args[position]


def _key(args: list[Value], position: int, used: set[str], depth: int) -> tuple[Predicate, int]:
    if depth >= MAX_DEPTH:
        raise ProtocolError(f"search keys nested more than {MAX_DEPTH} deep")
    value = _take(args, position)
    position += 1
    if isinstance(value, list):
        return parse_search(value, used, depth + 1), position
    if not isinstance(value, Atom):
        raise ProtocolError("bad search key")
    key = value.upper()
    if key == "ALL":
        return (lambda c: True), position
    if key in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[key]
        return (lambda c: (flag in c.info.flags) == wanted), position
    if key in ("KEYWORD", "UNKEYWORD"):
        name = as_text(_take(args, position)).casefold()
        wanted = key == "KEYWORD"
        return (lambda c: (name in {k.casefold() for k in c.info.keywords}) == wanted), position + 1
    if key == "RECENT":
        return (lambda c: c.recent), position
    if key == "OLD":
        return (lambda c: not c.recent), position
    if key == "NEW":
        return (lambda c: c.recent and "\\Seen" not in c.info.flags), position
    if key == "NOT":
        inner, position = _key(args, position, used, depth + 1)
        return (lambda c: not inner(c)), position
    if key == "OR":
        first, position = _key(args, position, used, depth + 1)
        second, position = _key(args, position, used, depth + 1)
        return (lambda c: first(c) or second(c)), position
    if key in ("LARGER", "SMALLER"):
        text = as_text(_take(args, position))
        if not text.isdigit():
            raise ProtocolError("LARGER and SMALLER take a number")
        size = int(text)
        if key == "LARGER":
            return (lambda c: c.info.size > size), position + 1
        return (lambda c: c.info.size < size), position + 1
    if key in ("BEFORE", "ON", "SINCE"):
        day = parse_date(_take(args, position))

        def internal(c: Candidate, key: str = key) -> bool:
            # The date as the client sees it in INTERNALDATE, in the zone it was given in.
            zone = timedelta(minutes=c.info.zone_minutes)
            moment = datetime.fromtimestamp(c.info.internal_date, timezone(zone)).date()
            return _compare(key, moment, day)

        return internal, position + 1
    if key in ("OLDER", "YOUNGER"):
        # RFC 5032 WITHIN: the internal date against now minus n seconds (now: when the
        # search was parsed, the same instant for every message).
        text = as_text(_take(args, position))
        if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_INTERVAL:
            raise ProtocolError(f"{key} takes a number of seconds from 1 to {MAX_INTERVAL}")
        boundary = time.time() - int(text)
        if key == "OLDER":
            return (lambda c: c.info.internal_date <= boundary), position + 1
        return (lambda c: c.info.internal_date > boundary), position + 1
    if key in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        # RFC 8514 §4: the save date's day in UTC (the zone FETCH SAVEDATE shows it in); a
        # message whose save date is unknown is compared by its internal date instead.
        day = parse_date(_take(args, position))

        def saved(c: Candidate, key: str = key[5:]) -> bool:
            moment = save_date(c.info.basename)
            if moment is None:
                moment = c.info.internal_date
            return _compare(key, datetime.fromtimestamp(moment, UTC).date(), day)

        return saved, position + 1
    if key == "SAVEDATESUPPORTED":
        # RFC 8514 §4: every folder of this store keeps save dates.
        return (lambda c: True), position
    if key in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        day = parse_date(_take(args, position))

        def sent(c: Candidate, key: str = key[4:]) -> bool:
            moment = c.content()[1].sent_day()
            return moment is not None and _compare(key, moment, day)

        return sent, position + 1
    if key == "SUBJECT":
        needle = as_text(_take(args, position))
        return (
            lambda c: any(_contains(v, needle) for v in _header_values(c, "subject"))
        ), position + 1
    if key in ("FROM", "TO", "CC", "BCC"):
        needle = as_text(_take(args, position))
        name = key.lower()

        def address_match(c: Candidate, name: str = name) -> bool:
            return any(_contains(v, needle) for v in _header_values(c, name)) or any(
                _contains(v, needle) for v in _address_texts(c, name)
            )

        return address_match, position + 1
    if key == "HEADER":
        name = as_text(_take(args, position)).lower()
        needle = as_text(_take(args, position + 1))
        return (lambda c: any(_contains(v, needle) for v in _header_values(c, name))), position + 2
    if key == "BODY":
        needle = as_text(_take(args, position))
        return (lambda c: _contains(_body_text(c), needle)), position + 1
    if key == "TEXT":
        needle = as_text(_take(args, position))

        def text_match(c: Candidate) -> bool:
            data, _ = c.content()
            return _contains(_decoded_header(data[: c.content()[1].header_size]), needle) or (
                _contains(_body_text(c), needle)
            )

        return text_match, position + 1
    if key == "MODSEQ":
        # RFC 7162 §3.1.5: MODSEQ ["/flags/<flag>" priv|shared|all] <n>. One modseq per
        # message here, so the entry name and type are checked and then ignored.
        if isinstance(_take(args, position), bytes):
            entry_type = as_text(_take(args, position + 1)).lower()
            if entry_type not in ("priv", "shared", "all"):
                raise ProtocolError("MODSEQ entry type must be priv, shared or all")
            position += 2
        text = as_text(_take(args, position))
        if not text.isdigit() or not text.isascii() or int(text) >= 2**63:
            raise ProtocolError("MODSEQ takes a mod-sequence value")
        least = int(text)
        used.add("MODSEQ")
        return (lambda c: c.modseq >= least), position + 1
    if key == "$":
        # RFC 5182: the saved search result (UIDs kept by the session).
        used.add("$")
        return (lambda c: c.info.uid in c.saved), position
    if key == "UID":
        text = as_text(_take(args, position))
        if text == "$":
            used.add("$")
            return (lambda c: c.info.uid in c.saved), position + 1
        ranges = parse_sequence_set(text)
        return (lambda c: sequence_contains(ranges, c.info.uid, c.largest_uid)), position + 1
    if is_sequence_set(key):
        ranges = parse_sequence_set(key)
        return (lambda c: sequence_contains(ranges, c.seq, c.largest_seq)), position
    raise ProtocolError(f"unknown search key {value!r}")


def _compare(key: str, moment: date, day: date) -> bool:
    if key == "BEFORE":
        return moment < day
    if key == "ON":
        return moment == day
    return moment >= day


# --- ESEARCH (RFC 4731) and SEARCHRES (RFC 5182) ---------------------------------------------


def search_charset(args: list[Value], utf8: bool = False) -> tuple[list[Value], str | None]:
    """A leading `CHARSET name`: the remaining keys, and the NO to answer when the charset is
    neither UTF-8 nor US-ASCII. After ENABLE UTF8=ACCEPT a CHARSET is BAD (RFC 6855 §3)."""
    if args and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
        if utf8:
            raise ProtocolError("no CHARSET after ENABLE UTF8=ACCEPT: the strings are UTF-8")
        if len(args) < 2:
            raise ProtocolError("CHARSET needs a name")
        if as_text(args[1]).upper() not in ("UTF-8", "US-ASCII"):
            return args, "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"
        return args[2:], None
    return args, None


# UPDATE and CONTEXT: RFC 5267 §4 (CONTEXT=SEARCH); PARTIAL, with its range: §4.4.
RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT", "PARTIAL"})
PARTIAL_RANGE = re.compile(r"([1-9][0-9]{0,9}):([1-9][0-9]{0,9})")


def return_options(
    args: list[Value],
) -> tuple[set[str] | None, tuple[int, int] | None, list[Value]]:
    """A leading `RETURN (options)` (RFC 4466 search-return-opts): the options, PARTIAL's
    range (RFC 5267 §4.4, lowest first) and the rest of the arguments; options None when the
    command has no RETURN (a plain SEARCH). `()` means ALL, and so does CONTEXT alone (a hint
    only, as in Dovecot); UPDATE alone returns no result now, only changes later."""
    if not args or not isinstance(args[0], Atom) or args[0].upper() != "RETURN":
        return None, None, args
    if len(args) < 2 or not isinstance(args[1], list):
        raise ProtocolError("RETURN takes a parenthesised list of options")
    options = set()
    partial = None
    listed = iter(args[1])
    for option in listed:
        if not isinstance(option, Atom) or option.upper() not in RETURN_OPTIONS:
            raise ProtocolError("unknown SEARCH return option")
        name = option.upper()
        if name == "PARTIAL":
            partial = partial_range(next(listed, None))
        options.add(name)
    options.discard("CONTEXT")
    if "PARTIAL" in options and "UPDATE" in options:
        raise ProtocolError("PARTIAL cannot be combined with UPDATE")
    return options or {"ALL"}, partial, args[2:]


def partial_range(value: Value | None) -> tuple[int, int]:
    """PARTIAL's `first:last` (1-based positions in the result, 32-bit), lowest first."""
    match = PARTIAL_RANGE.fullmatch(value) if isinstance(value, Atom) else None
    if match is None:
        raise ProtocolError("PARTIAL takes a range of result positions, such as 1:100")
    first, last = int(match[1]), int(match[2])
    if max(first, last) > 0xFFFFFFFF:
        raise ProtocolError("PARTIAL positions are 32-bit numbers")
    return min(first, last), max(first, last)


def saves_result(args: list[Value]) -> bool:
    """Whether a search command asks for SAVE: a failing one then empties `$` (RFC 5182)."""
    return (
        len(args) >= 2
        and isinstance(args[0], Atom)
        and args[0].upper() == "RETURN"
        and isinstance(args[1], list)
        and any(isinstance(o, Atom) and o.upper() == "SAVE" for o in args[1])
    )


def saved_part(options: set[str], found: list[int]) -> list[int]:
    """What SAVE keeps of an ascending result (RFC 9051 §6.4.4.1, table 4): all of it, unless
    only MIN and/or MAX come with SAVE."""
    if not found or options & {"ALL", "COUNT"} or not options & {"MIN", "MAX"}:
        return found
    kept = []
    if "MIN" in options:
        kept.append(found[0])
    if "MAX" in options and found[-1] not in kept:
        kept.append(found[-1])
    return kept


def esearch_line(
    tag: str,
    by_uid: bool,
    options: set[str],
    found: list[int],
    modseq: int | None = None,
    all_text: Callable[[list[int]], str] = format_sequence_set,
    partial: tuple[int, int] | None = None,
) -> bytes | None:
    """`* ESEARCH (TAG "t") [UID] MIN a MAX b ALL set PARTIAL (r set) COUNT n [MODSEQ m]`;
    None when SAVE is the only option (no ESEARCH response then). MIN and MAX are the first
    and last of `found` (ascending for SEARCH, in sort order for ESORT, RFC 5267 §3.2);
    `all_text` writes ALL and PARTIAL's slice of `found` (NIL when it is empty)."""
    if not options - {"SAVE"}:
        return None
    parts = [f'* ESEARCH (TAG "{tag}")']
    if by_uid:
        parts.append("UID")
    if found and "MIN" in options:
        parts.append(f"MIN {found[0]}")
    if found and "MAX" in options:
        parts.append(f"MAX {found[-1]}")
    # In Dovecot's order (any order is valid): a client written against it sees no change.
    if found and "ALL" in options:
        parts.append(f"ALL {all_text(found)}")
    if partial is not None:
        first, last = partial
        window = found[first - 1 : last]
        parts.append(f"PARTIAL ({first}:{last} {all_text(window) if window else 'NIL'})")
    if "COUNT" in options:
        parts.append(f"COUNT {len(found)}")
    if found and modseq is not None:
        parts.append(f"MODSEQ {modseq}")
    return (" ".join(parts) + "\r\n").encode()
