"""The i;unicode-casemap comparator (RFC 5051) that SEARCH and SORT use (I18NLEVEL=1, RFC 5255)."""

from __future__ import annotations

import functools
import unicodedata


@functools.lru_cache(maxsize=4096)
def _title(char: str) -> str:
    """The simple titlecase mapping of one character (UnicodeData field 14): Python's title()
    is the full mapping, which is taken only where it stays one character (ß stays ß)."""
    titled = char.title()
    return titled if len(titled) == 1 else char


def casemap(text: str) -> str:
    """RFC 5051 §2: each character to its simple titlecase, then NFKD. ASCII text, the common
    case, is its upper case: titlecase and uppercase agree there and NFKD changes nothing."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFKD", "".join(map(_title, text)))


def contains(haystack: str, needle: str) -> bool:
    """SEARCH's substring match (RFC 3501 §6.4.4) under i;unicode-casemap."""
    return casemap(needle) in casemap(haystack)
