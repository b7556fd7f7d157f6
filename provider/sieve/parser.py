"""Sieve lexer and recursive-descent parser (RFC 5228 section 8) with line and column errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_NESTING = 64

_QUANTIFIERS = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}
# RFC 5228 2.4.1: numbers fit an unsigned 32-bit integer.
# Pigeonhole's sieve_number_t: an unsigned 64-bit integer (after the K/M/G quantifier).
MAX_NUMBER = 2**64 - 1


class SieveError(Exception):
    """Any error of a Sieve script, with the position it was found at (1-based)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.line:
            return f"line {self.line}, column {self.column}: error: {self.message}"
        return f"error: {self.message}"


class SieveParseError(SieveError):
    """The script does not follow the grammar, or names what we do not implement."""


@dataclass
class Tag:
    """A tagged argument such as `:contains`."""

    name: str
    line: int
    column: int


@dataclass
class Number:
    """A number argument, its quantifier already applied."""

    value: int
    line: int
    column: int


@dataclass
class StringList:
    """A string or a string list; `single` when written without brackets."""

    values: list[str]
    single: bool
    line: int
    column: int


Argument = Tag | Number | StringList


@dataclass
class Test:
    """A test: identifier, arguments and nested tests (anyof, allof, not)."""

    name: str
    arguments: list[Argument]
    tests: list[Test]
    line: int
    column: int


@dataclass
class Command:
    """A command: identifier, arguments, an optional test list and an optional block."""

    name: str
    arguments: list[Argument]
    tests: list[Test]
    block: list[Command] | None
    line: int
    column: int
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class _Token:
    kind: str  # identifier, tag, number, string, multiline, or the punctuation itself
    value: str | int
    line: int
    column: int


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+([KMGkmg])?")


def _unescape_quoted(raw: str) -> str:
    """RFC 5228 2.4.2: a backslash quotes the character after it."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\\" and i + 1 < len(raw):
            out.append(raw[i + 1])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def tokenize(text: str) -> list[_Token]:
    """Split a script into tokens; raise SieveParseError at the first bad character."""
    tokens: list[_Token] = []
    position = 0
    line = 1
    line_start = 0
    length = len(text)

    def column_of(index: int) -> int:
        return index - line_start + 1

    while position < length:
        char = text[position]
        if char == "\n":
            line += 1
            position += 1
            line_start = position
            continue
        if char in " \t\r":
            position += 1
            continue
        if char == "#":
            end = text.find("\n", position)
            position = length if end < 0 else end
            continue
        if text.startswith("/*", position):
            end = text.find("*/", position + 2)
            if end < 0:
                raise SieveParseError("unterminated comment", line, column_of(position))
            for index in range(position, end):
                if text[index] == "\n":
                    line += 1
                    line_start = index + 1
            position = end + 2
            continue
        start_line, start_column = line, column_of(position)
        if char in "[](){},;":
            tokens.append(_Token(char, char, start_line, start_column))
            position += 1
            continue
        if char == ":":
            match = _IDENT.match(text, position + 1)
            if not match:
                raise SieveParseError("expected a tag name after ':'", line, start_column)
            tokens.append(_Token("tag", match.group().lower(), start_line, start_column))
            position = match.end()
            continue
        if char.isdigit() and char.isascii():
            match = _NUMBER.match(text, position)
            assert match is not None
            digits = match.group()
            quantifier = 1
            if match.group(1):
                quantifier = _QUANTIFIERS[match.group(1).upper()]
                digits = digits[:-1]
            value = int(digits) * quantifier
            if value > MAX_NUMBER:
                raise SieveParseError(
                    f"number exceeds integer limits (max {MAX_NUMBER}): {match.group()}",
                    line,
                    start_column,
                )
            tokens.append(_Token("number", value, start_line, start_column))
            position = match.end()
            continue
        if char == '"':
            index = position + 1
            pieces: list[str] = []
            while True:
                if index >= length:
                    raise SieveParseError("unterminated string", start_line, start_column)
                current = text[index]
                if current == "\\" and index + 1 < length:
                    pieces.append(text[index : index + 2])
                    if text[index + 1] == "\n":
                        line += 1
                        line_start = index + 2
                    index += 2
                    continue
                if current == '"':
                    break
                if current == "\n":
                    line += 1
                    line_start = index + 1
                pieces.append(current)
                index += 1
            raw = "".join(pieces)
            tokens.append(_Token("string", _unescape_quoted(raw), start_line, start_column))
            position = index + 1
            continue
        match = _IDENT.match(text, position)
        if match:
            word = match.group()
            if word.lower() == "text" and text.startswith(":", match.end()):
                position = match.end() + 1
                # Rest of the line: whitespace and an optional hash comment, then CRLF.
                end = text.find("\n", position)
                if end < 0:
                    raise SieveParseError(
                        "unterminated multi-line string", start_line, start_column
                    )
                rest = text[position:end].rstrip("\r").strip(" \t")
                if rest and not rest.startswith("#"):
                    raise SieveParseError(
                        "expected end of line after 'text:'", line, column_of(position)
                    )
                position = end + 1
                line += 1
                line_start = position
                body_lines: list[str] = []
                while True:
                    if position >= length:
                        raise SieveParseError(
                            "unterminated multi-line string", start_line, start_column
                        )
                    end = text.find("\n", position)
                    if end < 0:
                        end = length
                    current_line = text[position:end].rstrip("\r")
                    position = min(end + 1, length)
                    line += 1
                    line_start = position
                    if current_line == ".":
                        break
                    if current_line.startswith("."):
                        current_line = current_line[1:]
                    body_lines.append(current_line + "\r\n")
                tokens.append(_Token("string", "".join(body_lines), start_line, start_column))
                continue
            tokens.append(_Token("identifier", word.lower(), start_line, start_column))
            position = match.end()
            continue
        raise SieveParseError(f"unexpected character {char!r}", line, start_column)
    tokens.append(_Token("end", "", line, column_of(position)))
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def fail(self, expected: str, token: _Token) -> SieveParseError:
        found = "end of script" if token.kind == "end" else f"{token.kind} {token.value!r}"
        if token.kind in "[](){},;":
            found = f"'{token.value}'"
        return SieveParseError(f"expected {expected}, found {found}", token.line, token.column)

    def commands(self, in_block: bool) -> list[Command]:
        result: list[Command] = []
        while True:
            token = self.peek()
            if token.kind == "end":
                if in_block:
                    raise self.fail("'}' to end the block", token)
                return result
            if token.kind == "}":
                if not in_block:
                    raise self.fail("a command", token)
                return result
            result.append(self.command())

    def command(self) -> Command:
        token = self.take()
        if token.kind != "identifier":
            raise self.fail("a command name", token)
        arguments = self.arguments()
        tests = self.test_or_list()
        following = self.take()
        if following.kind == ";":
            block = None
        elif following.kind == "{":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise SieveParseError("blocks nested too deeply", following.line, following.column)
            block = self.commands(in_block=True)
            self.take()
            self.depth -= 1
        else:
            raise self.fail("';' or '{'", following)
        return Command(str(token.value), arguments, tests, block, token.line, token.column)

    def arguments(self) -> list[Argument]:
        result: list[Argument] = []
        while True:
            token = self.peek()
            if token.kind == "tag":
                self.take()
                result.append(Tag(str(token.value), token.line, token.column))
            elif token.kind == "number":
                self.take()
                result.append(Number(int(token.value), token.line, token.column))
            elif token.kind == "string":
                self.take()
                result.append(StringList([str(token.value)], True, token.line, token.column))
            elif token.kind == "[":
                self.take()
                values: list[str] = []
                while True:
                    item = self.take()
                    if item.kind != "string":
                        raise self.fail("a string in the list", item)
                    values.append(str(item.value))
                    separator = self.take()
                    if separator.kind == "]":
                        break
                    if separator.kind != ",":
                        raise self.fail("',' or ']'", separator)
                result.append(StringList(values, False, token.line, token.column))
            else:
                return result

    def test_or_list(self) -> list[Test]:
        token = self.peek()
        if token.kind == "identifier":
            return [self.test()]
        if token.kind == "(":
            self.take()
            tests = [self.test()]
            while True:
                separator = self.take()
                if separator.kind == ")":
                    return tests
                if separator.kind != ",":
                    raise self.fail("',' or ')'", separator)
                tests.append(self.test())
        return []

    def test(self) -> Test:
        token = self.take()
        if token.kind != "identifier":
            raise self.fail("a test name", token)
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise SieveParseError("tests nested too deeply", token.line, token.column)
        arguments = self.arguments()
        tests = self.test_or_list()
        self.depth -= 1
        return Test(str(token.value), arguments, tests, token.line, token.column)


def parse(source: str | bytes) -> list[Command]:
    """Parse a script's text into commands; raise SieveParseError with line and column."""
    if isinstance(source, bytes):
        if len(source) > MAX_SCRIPT_BYTES:
            raise SieveParseError(f"script larger than {MAX_SCRIPT_BYTES} bytes")
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as error:
            prefix = source[: error.start]
            line = prefix.count(b"\n") + 1
            column = error.start - (prefix.rfind(b"\n") + 1) + 1
            raise SieveParseError("script is not valid UTF-8", line, column) from None
    if len(source) > MAX_SCRIPT_BYTES:
        raise SieveParseError(f"script larger than {MAX_SCRIPT_BYTES} bytes")
    return _Parser(tokenize(source)).commands(in_block=False)
