"""CONTEXT=SEARCH (RFC 5267 §4): a SEARCH with RETURN (UPDATE) stays live, and the session is
told as the selected folder changes which messages joined (ADDTO) or left (REMOVEFROM) its
result, until CANCELUPDATE or another mailbox is selected."""

from __future__ import annotations

from dataclasses import dataclass

from provider.protocols.imap.parser import format_sequence_set
from provider.protocols.imap.search import Predicate

MAX_CONTEXTS = 10
"""Live searches per session; past this one a search is answered but not kept (NOUPDATE)."""


@dataclass
class SearchContext:
    """One live search: how to evaluate it again, and the UIDs it matched when last told."""

    tag: str
    by_uid: bool
    predicate: Predicate
    with_modseq: bool
    whole: bool
    matched: set[int]
    seen: int
    """The view's change count when `matched` was worked out (SelectedView.changes)."""


def update_line(context: SearchContext, left: list[int], joined: list[int]) -> bytes:
    """`* ESEARCH (TAG "t") [UID] REMOVEFROM (0 set) ADDTO (0 set)` (either part only when it
    has numbers): UIDs after a UID SEARCH, else message sequence numbers as they stand when
    the line is sent. The position is 0: a SEARCH result has no order to keep (RFC 5267
    §4.3.2). One line for both, as Dovecot sends them."""
    parts = [f'* ESEARCH (TAG "{context.tag}")']
    if context.by_uid:
        parts.append("UID")
    for kind, numbers in (("REMOVEFROM", left), ("ADDTO", joined)):
        if numbers:
            parts.append(f"{kind} (0 {format_sequence_set(sorted(numbers))})")
    return (" ".join(parts) + "\r\n").encode()


def noupdate_line(tag: str) -> bytes:
    """The untagged NO of a search answered but not kept (RFC 5267 §4.3.1)."""
    text = "Too many live searches; this one is not kept up to date"
    return f'* NO [NOUPDATE "{tag}"] {text}\r\n'.encode()
