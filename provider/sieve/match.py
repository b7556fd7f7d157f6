"""Sieve comparators and match types (RFC 5228 2.7, RFC 4790, RFC 5231 relational, regex draft)."""

from __future__ import annotations

import math
import re

COMPARATORS = ("i;octet", "i;ascii-casemap", "i;ascii-numeric")
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NUMERIC_PREFIX = re.compile(r"[0-9]+")
MAX_REGEX_LENGTH = 1024


class MatchError(Exception):
    """A key that cannot be used (a bad regex, a comparator that does not support the match)."""


def fold(value: str, comparator: str) -> str:
    """The form a comparator compares: ASCII lowercase for i;ascii-casemap."""
    if comparator == "i;ascii-casemap":
        return value.translate(_ASCII_LOWER)
    return value


def numeric(value: str) -> float:
    """RFC 4790 9.1: the leading digits as a number; no leading digit is positive infinity."""
    found = _NUMERIC_PREFIX.match(value)
    if not found:
        return math.inf
    return float(int(found.group()))


def relate(value: str, key: str, relation: str, comparator: str) -> bool:
    """True when `value RELATION key` under the comparator's ordering."""
    left: str | float
    right: str | float
    if comparator == "i;ascii-numeric":
        left, right = numeric(value), numeric(key)
    else:
        left, right = fold(value, comparator), fold(key, comparator)
    if relation == "eq":
        return left == right
    if relation == "ne":
        return left != right
    if relation == "gt":
        return left > right  # type: ignore[operator]
    if relation == "ge":
        return left >= right  # type: ignore[operator]
    if relation == "lt":
        return left < right  # type: ignore[operator]
    return left <= right  # type: ignore[operator]


def _wildcard_segments(pattern: str) -> list[list[str | None]]:
    """Split a :matches pattern at its '*'s; in a segment None is '?', a string a literal."""
    segments: list[list[str | None]] = [[]]
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            segments[-1].append(pattern[index + 1])
            index += 2
            continue
        if char == "*":
            segments.append([])
        elif char == "?":
            segments[-1].append(None)
        else:
            segments[-1].append(char)
        index += 1
    return segments


def _segment_regex(segment: list[str | None]) -> re.Pattern[str]:
    return re.compile(
        "".join("(.)" if item is None else re.escape(item) for item in segment), re.DOTALL
    )


def wildcard_spans(value: str, pattern: str) -> list[tuple[int, int]] | None:
    """RFC 5228 2.7.1 '*' and '?' (backslash escapes), in O(len(value) x len(pattern)).

    Each segment between stars has a fixed length, so the first is anchored at the start, the
    last at the end, and each middle one taken at its leftmost place: that finds a match when
    there is one, and gives every '*' the shortest text (RFC 5229 3.2, non-greedy), without the
    exponential backtracking of a regex with several lazy groups. Returns each wildcard's span.
    """
    segments = _wildcard_segments(pattern)
    spans: list[tuple[int, int]] = []

    def groups(found: re.Match[str]) -> list[tuple[int, int]]:
        return [found.span(index) for index in range(1, (found.re.groups or 0) + 1)]

    if len(segments) == 1:
        whole = _segment_regex(segments[0]).fullmatch(value)
        return groups(whole) if whole else None
    first = _segment_regex(segments[0]).match(value)
    if not first:
        return None
    spans.extend(groups(first))
    position = first.end()
    for segment in segments[1:-1]:
        found = _segment_regex(segment).search(value, position)
        if not found:
            return None
        spans.append((position, found.start()))
        spans.extend(groups(found))
        position = found.end()
    last_start = len(value) - len(segments[-1])
    if last_start < position:
        return None
    last = _segment_regex(segments[-1]).fullmatch(value, last_start)
    if not last:
        return None
    spans.append((position, last_start))
    spans.extend(groups(last))
    return spans


_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": " \\t\\r\\n\\v\\f",
    "blank": " \\t",
    "punct": "!-/:-@\\[-`{-~",
    "xdigit": "0-9A-Fa-f",
    "cntrl": "\\x00-\\x1f\\x7f",
    "print": " -~",
    "graph": "!-~",
}
_BACKREFERENCE = re.compile(r"\\[1-9]")
_QUANTIFIER = re.compile(r"[*+?]|\{[0-9,]+\}")


def _check_bounded(pattern: str) -> None:
    """Refuse what makes a backtracking engine exponential: backreferences, nested quantifiers."""
    if _BACKREFERENCE.search(pattern):
        raise MatchError("regex backreferences are not supported")
    stack: list[bool] = []  # per open group: does it contain a quantifier or alternation?
    index = 0
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
            index += 1
            continue
        if char == "[":
            in_class = True
            index += 1
            if index < len(pattern) and pattern[index] in "^":
                index += 1
            if index < len(pattern) and pattern[index] == "]":
                index += 1
            continue
        if char == "(":
            stack.append(False)
        elif char == ")":
            risky = stack.pop() if stack else False
            quantified = _QUANTIFIER.match(pattern, index + 1) is not None
            if risky and quantified:
                raise MatchError("regex with a quantified group that itself repeats or alternates")
            if stack and (risky or quantified):
                stack[-1] = True
        elif stack and (char == "|" or _QUANTIFIER.match(pattern, index)):
            stack[-1] = True
        index += 1


def compile_regex(pattern: str, comparator: str) -> re.Pattern[str]:
    """A POSIX extended regular expression as Python's re, refused when it could backtrack badly."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise MatchError(f"regex longer than {MAX_REGEX_LENGTH} characters")
    _check_bounded(pattern)
    translated = re.sub(
        r"\[:([a-z]+):\]",
        lambda found: _POSIX_CLASSES.get(found.group(1), found.group()),
        pattern,
    )
    flags = re.DOTALL
    if comparator == "i;ascii-casemap":
        flags |= re.IGNORECASE | re.ASCII
    try:
        return re.compile(translated, flags)
    except re.error as error:
        raise MatchError(f"invalid regex {pattern!r}: {error}") from None


def match_one(
    value: str, key: str, match_type: str, comparator: str, relation: str
) -> list[str] | None:
    """Match one value against one key; the match variables (index 0 = whole) when it matches."""
    if match_type == "is":
        if comparator == "i;ascii-numeric":
            return [value] if numeric(value) == numeric(key) else None
        return [value] if fold(value, comparator) == fold(key, comparator) else None
    if match_type == "contains":
        return [value] if fold(key, comparator) in fold(value, comparator) else None
    if match_type == "matches":
        # Like Pigeonhole, '?' is one octet: match on the UTF-8 bytes (one latin-1 char each).
        octets = value.encode("utf-8", "surrogateescape").decode("latin-1")
        pattern = key.encode("utf-8", "surrogateescape").decode("latin-1")
        spans = wildcard_spans(fold(octets, comparator), fold(pattern, comparator))
        if spans is None:
            return None
        # Variables come from the original value: ASCII folding keeps every position. A
        # capture that splits a character keeps the half as a surrogate (see join_octets).
        return [value] + [_from_octets(octets[start:end]) for start, end in spans]
    if match_type == "regex":
        found = compile_regex(key, comparator).search(value)
        if not found:
            return None
        return _groups(value, found)
    if match_type == "value":
        return [value] if relate(value, key, relation, comparator) else None
    raise MatchError(f"unknown match type {match_type}")


def _groups(value: str, found: re.Match[str]) -> list[str]:
    result = [value[found.start() : found.end()]]
    for index in range(1, (found.re.groups or 0) + 1):
        start, end = found.span(index)
        result.append(value[start:end] if start >= 0 else "")
    return result


def _from_octets(octets: str) -> str:
    return octets.encode("latin-1").decode("utf-8", "surrogateescape")


def join_octets(text: str) -> str:
    """Re-join halves of characters that two captures split (`${1}${2}` of one 'ä')."""
    if not any("\udc80" <= char <= "\udcff" for char in text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
