"""QRESYNC (RFC 7162 §3.2): its SELECT and UID FETCH parameters, and VANISHED (EARLIER) sets."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from provider.protocols.imap.parser import (
    MAX_SEQUENCE_NUMBER,
    Atom,
    ProtocolError,
    Value,
    parse_sequence_set,
)

Ranges = list[tuple[int, int]]
"""Ascending, disjoint, non-adjacent closed ranges of numbers: [(1, 3), (7, 7)]."""


@dataclass(frozen=True)
class QresyncParameter:
    """`QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]])` of SELECT/EXAMINE (§3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: Ranges | None = None
    # Pairs (message sequence number, UID) the client believes, ascending (§3.2.5.2).
    seq_match: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class SelectParameters:
    condstore: bool = False
    qresync: QresyncParameter | None = None


@dataclass(frozen=True)
class FetchModifiers:
    changed_since: int | None = None
    vanished: bool = False


def _atom(value: Value, what: str) -> str:
    if not isinstance(value, Atom):
        raise ProtocolError(f"expected {what}")
    return str(value)


def nz_number(value: Value, what: str) -> int:
    """RFC 3501 nz-number: 1 to 2^32 - 1, digits only (UIDVALIDITY)."""
    text = _atom(value, what)
    if not (text.isascii() and text.isdigit()) or text.startswith("0"):
        raise ProtocolError(f"bad {what}")
    number = int(text) if len(text) <= 10 else MAX_SEQUENCE_NUMBER + 1
    if number > MAX_SEQUENCE_NUMBER:
        raise ProtocolError(f"{what} out of range")
    return number


def mod_sequence_value(value: Value, *, zero: bool) -> int:
    """RFC 7162 §7 mod-sequence-value (1 to 2^63 - 1) or, with `zero`, mod-sequence-valzer."""
    text = _atom(value, "a mod-sequence value")
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise ProtocolError("bad mod-sequence value")
    number = int(text)
    if number >= 2**63 or (number == 0 and not zero):
        raise ProtocolError("mod-sequence value out of range")
    return number


def uid_ranges(text: str) -> Ranges:
    """A sequence set without `*` (known-uids, known-uid-set) as merged ranges."""
    ranges: list[tuple[int, int]] = []
    for low, high in parse_sequence_set(text):
        if low is None or high is None:
            raise ProtocolError("`*` is not allowed in a set of known UIDs")
        ranges.append((min(low, high), max(low, high)))
    return merge(ranges)


def _numbers(text: str, limit: int) -> list[int]:
    """The numbers of a `*`-free sequence set, in the order given, at most `limit` of them."""
    numbers: list[int] = []
    for low, high in parse_sequence_set(text):
        if low is None or high is None:
            raise ProtocolError("`*` is not allowed in sequence match data")
        if low > high:
            raise ProtocolError("sequence match data must be ascending")
        if len(numbers) + high - low + 1 > limit:
            raise ProtocolError("sequence match data is too long")
        numbers.extend(range(low, high + 1))
    return numbers


# A line is at most 64 KB, but `1:4294967295` names 2^32 numbers: seq-match-data is expanded,
# so it is capped (clients send a small sample; RFC 7162 §3.2.5.2 calls it that).
MAX_SEQ_MATCH = 10_000


def parse_select_parameters(value: Value) -> SelectParameters:
    """RFC 4466 select-params: `(CONDSTORE)`, `(QRESYNC (...))` or both, each at most once."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("SELECT parameters must be a non-empty parenthesised list")
    condstore = False
    qresync: QresyncParameter | None = None
    position = 0
    while position < len(value):
        name = value[position]
        word = name.upper() if isinstance(name, Atom) else ""
        if word == "CONDSTORE" and not condstore:
            condstore = True
            position += 1
        elif word == "QRESYNC" and qresync is None and position + 1 < len(value):
            qresync = parse_qresync(value[position + 1])
            position += 2
        else:
            raise ProtocolError("unknown SELECT parameter")
    return SelectParameters(condstore, qresync)


def parse_qresync(value: Value) -> QresyncParameter:
    """`(uidvalidity mod-sequence-value [known-uids] [seq-match-data])` (RFC 7162 §7)."""
    if not isinstance(value, list) or not 2 <= len(value) <= 4:
        raise ProtocolError("QRESYNC takes (uidvalidity modseq [known-uids [seq-match-data]])")
    uidvalidity = nz_number(value[0], "UIDVALIDITY")
    modseq = mod_sequence_value(value[1], zero=False)
    known: Ranges | None = None
    match_data: Value | None = None
    rest = value[2:]
    if rest and isinstance(rest[0], Atom):
        known = uid_ranges(str(rest[0]))
        rest = rest[1:]
    if rest:
        match_data = rest[0]
        rest = rest[1:]
    if rest:
        raise ProtocolError("too many QRESYNC arguments")
    pairs: tuple[tuple[int, int], ...] = ()
    if match_data is not None:
        if not isinstance(match_data, list) or len(match_data) != 2:
            raise ProtocolError("sequence match data is (sequence-set uid-set)")
        sequences = _numbers(_atom(match_data[0], "a sequence set"), MAX_SEQ_MATCH)
        uids = _numbers(_atom(match_data[1], "a UID set"), MAX_SEQ_MATCH)
        if len(sequences) != len(uids):
            raise ProtocolError("sequence match data sets differ in size")
        if any(b <= a for a, b in itertools.pairwise(sequences)) or any(
            b <= a for a, b in itertools.pairwise(uids)
        ):
            raise ProtocolError("sequence match data must be ascending")
        pairs = tuple(zip(sequences, uids, strict=True))
    return QresyncParameter(uidvalidity, modseq, known, pairs)


def parse_fetch_modifiers(value: Value, *, by_uid: bool, qresync: bool) -> FetchModifiers:
    """FETCH modifiers: `CHANGEDSINCE n` (RFC 7162 §3.1.4) and `VANISHED` (§3.2.6, UID FETCH
    only, with CHANGEDSINCE, after ENABLE QRESYNC), each at most once."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("FETCH modifiers must be a parenthesised list")
    changed_since: int | None = None
    vanished = False
    position = 0
    while position < len(value):
        name = value[position]
        word = name.upper() if isinstance(name, Atom) else ""
        if word == "CHANGEDSINCE" and changed_since is None and position + 1 < len(value):
            changed_since = mod_sequence_value(value[position + 1], zero=True)
            position += 2
        elif word == "VANISHED" and not vanished:
            vanished = True
            position += 1
        else:
            raise ProtocolError("unknown or repeated FETCH modifier")
    if vanished:
        if not by_uid:
            raise ProtocolError("VANISHED is a UID FETCH modifier")
        if not qresync:
            raise ProtocolError("VANISHED needs ENABLE QRESYNC first")
        if changed_since is None:
            raise ProtocolError("VANISHED needs CHANGEDSINCE")
    return FetchModifiers(changed_since, vanished)


# --- ranges ----------------------------------------------------------------------------------


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            if high > out[-1][1]:
                out[-1] = (out[-1][0], high)
        else:
            out.append((low, high))
    return out


def contains(ranges: Ranges, number: int) -> bool:
    index = bisect.bisect_right(ranges, (number, MAX_SEQUENCE_NUMBER + 1)) - 1
    return index >= 0 and ranges[index][0] <= number <= ranges[index][1]


def without(ranges: Ranges, present: list[int]) -> Ranges:
    """The ranges less the (ascending) numbers of `present`, in O(ranges + present)."""
    out: Ranges = []
    for low, high in ranges:
        index = bisect.bisect_left(present, low)
        start = low
        while index < len(present) and present[index] <= high:
            if present[index] > start:
                out.append((start, present[index] - 1))
            start = present[index] + 1
            index += 1
        if start <= high:
            out.append((start, high))
    return out


def up_to(ranges: Ranges, ceiling: int) -> Ranges:
    """The part of the ranges at or below `ceiling`."""
    return [(low, min(high, ceiling)) for low, high in ranges if low <= ceiling]


def above(ranges: Ranges, floor: int) -> Ranges:
    """The part of the ranges above `floor`."""
    return [(max(low, floor + 1), high) for low, high in ranges if high > floor]


def format_ranges(ranges: Ranges) -> str:
    return ",".join(str(low) if low == high else f"{low}:{high}" for low, high in ranges)


def vanished_earlier(
    asked: Ranges,
    present: list[int],
    expunged: list[int],
    complete: bool,
    floor: int = 0,
    uidnext: int = MAX_SEQUENCE_NUMBER + 1,
) -> Ranges:
    """The UIDs a VANISHED (EARLIER) reports: of the `asked` ones, those expunged since the
    client's modseq (`expunged`) or, when that history is not `complete`, every one not
    `present` (the superset RFC 7162 §3.2.6 requires then) — never a present one, none never
    given out (from `uidnext` up), and none at or below `floor` (what seq-match-data proved
    the client knows, §3.2.5.2)."""
    asked = up_to(asked, uidnext - 1)
    if complete:
        chosen = merge((uid, uid) for uid in expunged if uid > floor and contains(asked, uid))
        return without(chosen, present)
    return without(above(asked, floor), present)


def seq_match_floor(pairs: Iterable[tuple[int, int]], uids: list[int]) -> int:
    """§3.2.5.2: the UID of the last pair, taken in order up to the first mismatch, whose
    sequence number holds that very UID now; the client knows every expunge up to it."""
    floor = 0
    for sequence, uid in pairs:
        if sequence > len(uids) or uids[sequence - 1] != uid:
            break
        floor = uid
    return floor
