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


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """RFC 5228 2.7.1: '*' and '?' with backslash escapes, each wildcard a non-greedy group."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if char == "*":
            out.append("(.*?)")
        elif char == "?":
            out.append("(.)")
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out), re.DOTALL)


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
        found = wildcard_regex(fold(key, comparator)).fullmatch(fold(value, comparator))
        if not found:
            return None
        # Variables come from the original value: ASCII folding keeps every position.
        return _groups(value, found)
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
