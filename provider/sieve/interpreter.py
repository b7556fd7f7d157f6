"""Sieve validation and run time: a parsed script, a message and its envelope in, actions out."""

from __future__ import annotations

import email
import email.header
import email.message
import email.policy
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from provider.sieve.match import COMPARATORS, RELATIONS, MatchError, join_octets, match_one
from provider.sieve.parser import (
    Argument,
    Command,
    Number,
    SieveError,
    SieveParseError,
    StringList,
    Tag,
    Test,
    parse,
)

EXTENSIONS = (
    "fileinto",
    "envelope",
    "encoded-character",
    "copy",
    "imap4flags",
    "variables",
    "subaddress",
    "relational",
    "body",
    "regex",
    "reject",
    "ereject",
    "vacation",
    "vacation-seconds",
    "mailbox",
    "date",
    "index",
    "special-use",
    "duplicate",
    "include",
    "comparator-i;octet",
    "comparator-i;ascii-casemap",
    "comparator-i;ascii-numeric",
)
# Pigeonhole's defaults: sieve_vacation_min_period = 1d, default :days 7, no maximum.
VACATION_MIN_SECONDS = 86400
VACATION_DEFAULT_SECONDS = 7 * 86400
SUBADDRESS_SEPARATOR = "+"
# Pigeonhole's sieve_variables_max_variable_size: longer values are cut, not an error.
MAX_VARIABLE_SIZE = 4096
# Pigeonhole's sieve_include_max_nesting_depth and sieve_include_max_includes.
MAX_INCLUDE_DEPTH = 10
MAX_INCLUDES = 255
# duplicate (RFC 7352): Pigeonhole's sieve_duplicate_default_period (12h) and _max_period (2d).
DUPLICATE_DEFAULT_SECONDS = 12 * 3600
DUPLICATE_MAX_SECONDS = 2 * 86400

# include's loader: (location "personal" or "global", script name) -> source, None if missing.
Loader = Callable[[str, str], "str | bytes | None"]


def _size(value: str) -> int:
    return len(value.encode("utf-8", "surrogateescape"))


def truncate(value: str, limit: int = MAX_VARIABLE_SIZE) -> str:
    """Cut a value to `limit` UTF-8 bytes without splitting a character."""
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) <= limit:
        return value
    return encoded[:limit].decode("utf-8", "ignore")


class SieveRuntimeError(SieveError):
    """The script failed while running; the caller falls back to keep."""


class BudgetExceeded(SieveRuntimeError):
    """The run took more steps, or held more variable bytes, than its budget."""


@dataclass(frozen=True)
class Budget:
    """Limits of one run: commands and tests evaluated, match comparisons, variable bytes."""

    max_steps: int = 100_000
    max_variable_bytes: int = 1024 * 1024
    max_actions: int = 64


@dataclass
class Action:
    """One action: keep, fileinto, redirect, discard, reject, ereject or vacation."""

    kind: str
    target: str = ""
    flags: tuple[str, ...] = ()
    copy: bool = False
    create: bool = False
    text: str = ""
    vacation: dict[str, object] = field(default_factory=dict)
    special_use: str = ""


@dataclass
class Result:
    """The actions a run decided, the implicit keep (with its flags), or the runtime error."""

    actions: list[Action]
    implicit_keep: bool
    implicit_keep_flags: tuple[str, ...]
    error: SieveRuntimeError | None = None

    def normalized(self) -> list[str]:
        """The comparable form shared with the Pigeonhole harness (see DESIGN-NOTES)."""
        if self.error is not None:
            return ["error"]
        lines: list[str] = []
        for action in self.actions:
            if action.kind in ("keep", "fileinto"):
                line = f"store {action.target or 'INBOX'}"
                if action.special_use:
                    line += f" specialuse={action.special_use}"
                if action.create:
                    line += " +create"
                if action.flags:
                    line += " flags=" + " ".join(normalize_flags(action.flags))
            elif action.kind == "redirect":
                line = f"redirect {action.target}"
            elif action.kind == "discard":
                line = "discard"
            elif action.kind in ("reject", "ereject"):
                line = f"reject {action.text}"
            else:
                details = action.vacation
                line = (
                    f"vacation seconds={details['seconds']} subject={details['subject'] or ''}"
                    f" from={details['from'] or ''} handle={flatten(str(details['handle']))}"
                    f" reason={action.text!r}"
                )
            lines.append(line)
        if self.implicit_keep:
            line = "implicit-keep store INBOX"
            if self.implicit_keep_flags:
                line += " flags=" + " ".join(normalize_flags(self.implicit_keep_flags))
            lines.append(line)
        else:
            lines.append("implicit-keep none")
        return lines


def flatten(text: str) -> str:
    """A multi-line value with its blank lines dropped (sieve-test prints those ambiguously)."""
    return "\n".join(line for line in text.splitlines() if line.strip())


def normalize_flags(flags: tuple[str, ...] | list[str]) -> list[str]:
    """IMAP flags compare case-insensitively: lowercased, de-duplicated, sorted."""
    return sorted({flag.lower() for flag in flags})


# ---------------------------------------------------------------- validation

_MATCH_TAGS = {"is", "contains", "matches", "regex", "count", "value"}
_ADDRESS_PARTS = {"all", "localpart", "domain", "user", "detail"}


@dataclass
class _Spec:
    extension: str | None
    tags: dict[str, str | None]  # tag -> parameter kind: "string", "strings", "number" or None
    positional: list[str]  # "string", "strings" or "number"; a trailing "?" marks optional
    match: bool = False  # takes :comparator, a match type and (if address) an address part
    address: bool = False
    tests: str = "none"  # none, one, list
    block: bool = False


_COMMANDS: dict[str, _Spec] = {
    "require": _Spec(None, {}, ["strings"]),
    "if": _Spec(None, {}, [], tests="one", block=True),
    "elsif": _Spec(None, {}, [], tests="one", block=True),
    "else": _Spec(None, {}, [], block=True),
    "stop": _Spec(None, {}, []),
    "keep": _Spec(None, {"flags": "strings"}, []),
    "discard": _Spec(None, {}, []),
    "redirect": _Spec(None, {"copy": None}, ["string"]),
    "fileinto": _Spec(
        "fileinto",
        {"copy": None, "flags": "strings", "create": None, "specialuse": "string"},
        ["string"],
    ),
    "include": _Spec(
        "include",
        {"personal": None, "global": None, "once": None, "optional": None},
        ["string"],
    ),
    "return": _Spec("include", {}, []),
    "global": _Spec("include", {}, ["strings"]),
    "reject": _Spec("reject", {}, ["string"]),
    "ereject": _Spec("ereject", {}, ["string"]),
    "setflag": _Spec("imap4flags", {}, ["string?", "strings"]),
    "addflag": _Spec("imap4flags", {}, ["string?", "strings"]),
    "removeflag": _Spec("imap4flags", {}, ["string?", "strings"]),
    "set": _Spec(
        "variables",
        {
            "lower": None,
            "upper": None,
            "lowerfirst": None,
            "upperfirst": None,
            "quotewildcard": None,
            "length": None,
        },
        ["string", "string"],
    ),
    "vacation": _Spec(
        "vacation",
        {
            "days": "number",
            "seconds": "number",
            "subject": "string",
            "from": "string",
            "addresses": "strings",
            "mime": None,
            "handle": "string",
        },
        ["string"],
    ),
}
_TESTS: dict[str, _Spec] = {
    "address": _Spec(
        None, {"index": "number", "last": None}, ["strings", "strings"], match=True, address=True
    ),
    "envelope": _Spec("envelope", {}, ["strings", "strings"], match=True, address=True),
    "header": _Spec(None, {"index": "number", "last": None}, ["strings", "strings"], match=True),
    "date": _Spec(
        "date",
        {"zone": "string", "originalzone": None, "index": "number", "last": None},
        ["string", "string", "strings"],
        match=True,
    ),
    "currentdate": _Spec("date", {"zone": "string"}, ["string", "strings"], match=True),
    "mailboxexists": _Spec("mailbox", {}, ["strings"]),
    "specialuse_exists": _Spec("special-use", {}, ["string?", "strings"]),
    "duplicate": _Spec(
        "duplicate",
        {
            "handle": "string",
            "header": "string",
            "uniqueid": "string",
            "seconds": "number",
            "last": None,
        },
        [],
    ),
    "string": _Spec("variables", {}, ["strings", "strings"], match=True),
    "hasflag": _Spec("imap4flags", {}, ["strings?", "strings"], match=True),
    "body": _Spec(
        "body", {"raw": None, "content": "strings", "text": None}, ["strings"], match=True
    ),
    "exists": _Spec(None, {}, ["strings"]),
    "size": _Spec(None, {"over": "number", "under": "number"}, []),
    "allof": _Spec(None, {}, [], tests="list"),
    "anyof": _Spec(None, {}, [], tests="list"),
    "not": _Spec(None, {}, [], tests="one"),
    "true": _Spec(None, {}, []),
    "false": _Spec(None, {}, []),
}
_TAG_EXTENSION = {
    "copy": "copy",
    "flags": "imap4flags",
    "create": "mailbox",
    "regex": "regex",
    "count": "relational",
    "value": "relational",
    "user": "subaddress",
    "detail": "subaddress",
    "seconds": "vacation-seconds",
    "index": "index",
    "last": "index",
    "specialuse": "special-use",
}
_DATE_PARTS = {
    "year",
    "month",
    "day",
    "date",
    "julian",
    "hour",
    "minute",
    "second",
    "time",
    "iso8601",
    "std11",
    "zone",
    "weekday",
}
_ZONE = re.compile(r"[+-](?:[01][0-9]|2[0-3])[0-5][0-9]")
_SPECIAL_USE = re.compile(r"\\[A-Za-z0-9!#$&'+\-.^_`|~]+")
_SCRIPT_NAME = re.compile(r"[^/\x00-\x1f\x7f]{1,128}")


@dataclass
class Bound:
    """A command's or test's arguments sorted out: tags with their values, then positionals."""

    tags: dict[str, object]
    positional: list[object]


def _bind(node: Command | Test, spec: _Spec, enabled: set[str]) -> Bound:
    tags: dict[str, object] = {}
    positional: list[object] = []
    arguments: list[Argument] = list(node.arguments)
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if not isinstance(argument, Tag):
            break
        name = argument.name
        extension = None if node.name == "duplicate" else _TAG_EXTENSION.get(name)
        if extension is not None and extension not in enabled:
            raise SieveParseError(
                f'tag :{name} needs require "{extension}"', argument.line, argument.column
            )
        index += 1
        kind: str | None
        if spec.match and name in _MATCH_TAGS:
            if "match" in tags:
                raise SieveParseError("only one match type", argument.line, argument.column)
            kind = "string" if name in ("count", "value") else None
            tags["match"] = name
        elif spec.match and name == "comparator":
            kind = "string"
        elif spec.address and name in _ADDRESS_PARTS:
            if "part" in tags:
                raise SieveParseError("only one address part", argument.line, argument.column)
            tags["part"] = name
            continue
        elif name in spec.tags:
            kind = spec.tags[name]
        else:
            raise SieveParseError(
                f"unknown tag :{name} for {node.name}", argument.line, argument.column
            )
        if kind is None:
            if name not in ("is", "contains", "matches", "regex"):
                if name in tags:
                    raise SieveParseError(
                        f"tag :{name} given twice", argument.line, argument.column
                    )
                tags[name] = True
            continue
        if index >= len(arguments):
            raise SieveParseError(f"tag :{name} needs a value", argument.line, argument.column)
        value = arguments[index]
        index += 1
        if kind == "number":
            if not isinstance(value, Number):
                raise SieveParseError(f"tag :{name} needs a number", value.line, value.column)
            tags[name] = value.value
        else:
            if not isinstance(value, StringList) or (kind == "string" and not value.single):
                raise SieveParseError(f"tag :{name} needs a {kind}", value.line, value.column)
            tags[name] = value.values[0] if kind == "string" else value.values
    rest = arguments[index:]
    for argument in rest:
        if isinstance(argument, Tag):
            raise SieveParseError(
                f"tag :{argument.name} after a positional argument", argument.line, argument.column
            )
    required = [kind for kind in spec.positional if not kind.endswith("?")]
    if len(rest) == len(required):
        kinds = required
    elif len(rest) == len(spec.positional):
        kinds = [kind.rstrip("?") for kind in spec.positional]
    else:
        raise SieveParseError(
            f"{node.name} takes {len(required)} positional argument(s), got {len(rest)}",
            node.line,
            node.column,
        )
    for argument, kind in zip(rest, kinds, strict=True):
        if kind == "number":
            if not isinstance(argument, Number):
                raise SieveParseError(f"{node.name} needs a number", argument.line, argument.column)
            positional.append(argument.value)
        else:
            if not isinstance(argument, StringList) or (kind == "string" and not argument.single):
                raise SieveParseError(f"{node.name} needs a {kind}", argument.line, argument.column)
            positional.append(argument.values[0] if kind == "string" else argument.values)
    return Bound(tags, positional)


def _check_match(node: Command | Test, bound: Bound) -> None:
    comparator = str(bound.tags.get("comparator", "i;ascii-casemap"))
    if comparator not in COMPARATORS:
        raise SieveParseError(f"unknown comparator {comparator!r}", node.line, node.column)
    match_type = bound.tags.get("match", "is")
    if comparator == "i;ascii-numeric" and match_type in ("contains", "matches", "regex"):
        raise SieveParseError(
            f"comparator {comparator} does not support :{match_type}", node.line, node.column
        )
    if match_type in ("count", "value"):
        relation = str(bound.tags[match_type]).lower()
        if relation not in RELATIONS:
            raise SieveParseError(f"unknown relation {relation!r}", node.line, node.column)
        bound.tags["relation"] = relation


_ENCODED = re.compile(r"\$\{(hex|unicode):([\s0-9A-Fa-f]*)\}", re.IGNORECASE)


def decode_encoded_characters(value: str) -> str:
    """RFC 5228 2.4.2.4: ${hex:...} and ${unicode:...}; malformed ones stay as written."""

    def replace(found: re.Match[str]) -> str:
        digits = found.group(2).split()
        if not digits:
            return found.group()
        if found.group(1).lower() == "hex":
            try:
                return bytes(int(item, 16) for item in digits if len(item) <= 2).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return found.group()
        points = [int(item, 16) for item in digits]
        for point in points:
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
                raise SieveParseError(f"invalid unicode code point {point:X}")
        return "".join(chr(point) for point in points)

    return _ENCODED.sub(replace, value)


@dataclass
class Script:
    """A validated script: its commands with bound arguments and the extensions it requires."""

    commands: list[Command]
    extensions: set[str]
    name: str = ""
    # Of the whole compilation (top script only): the extensions of every included script
    # too, and warnings (an included script missing at upload).
    all_extensions: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Includes:
    loader: Loader | None
    stack: list[tuple[str, str]]
    compiled: dict[tuple[str, str], Script | None]
    uploaded: bool = False
    warnings: list[str] = field(default_factory=list)


def compile_script(
    source: str | bytes, loader: Loader | None = None, *, uploaded: bool = False
) -> Script:
    """Parse and validate a script (and what it includes); raise SieveParseError with position.

    `loader(location, name)` gives an included script's source ("personal" or "global"), or
    None when there is none (without a loader nothing can be included); includes are resolved
    here, as Pigeonhole does, so a missing script, a cycle or too deep a nesting is a compile
    error. An `uploaded` script (PUTSCRIPT, before it is active) may include a script that does
    not exist yet: a warning, and at run time an error (Pigeonhole's upload rule).
    """
    includes = _Includes(loader, [], {}, uploaded)
    script = _compile(source, includes, "")
    script.all_extensions = set(script.extensions)
    for included in includes.compiled.values():
        if included is not None:
            script.all_extensions |= included.extensions
    script.warnings = includes.warnings
    return script


def _compile(source: str | bytes, includes: _Includes, name: str) -> Script:
    commands = parse(source)
    enabled: set[str] = set()
    allow_require = True
    for command in commands:
        if command.name != "require":
            allow_require = False
            continue
        if not allow_require:
            raise SieveParseError(
                "require must come before any other command", command.line, command.column
            )
        bound = _bind(command, _COMMANDS["require"], enabled)
        for extension in bound.positional[0]:  # type: ignore[union-attr]
            if extension not in EXTENSIONS:
                raise SieveParseError(
                    f"require: unknown or unsupported extension {extension!r}",
                    command.line,
                    command.column,
                )
            enabled.add(extension)
    _validate_block(commands, enabled, top=True)
    script = Script(commands, enabled, name)
    _resolve_includes(commands, includes)
    return script


def _resolve_includes(commands: list[Command], includes: _Includes) -> None:
    for command in commands:
        if command.block is not None:
            _resolve_includes(command.block, includes)
        if command.name != "include":
            continue
        bound: Bound = command.extra["bound"]  # type: ignore[assignment]
        location = "global" if bound.tags.get("global") else "personal"
        name = str(bound.positional[0])
        key = (location, name)
        where = (command.line, command.column)
        if key in includes.stack:
            raise SieveParseError(f"circular include of {location} script {name!r}", *where)
        if len(includes.stack) >= MAX_INCLUDE_DEPTH:
            raise SieveParseError(f"includes nested deeper than {MAX_INCLUDE_DEPTH}", *where)
        if key not in includes.compiled:
            if len(includes.compiled) >= MAX_INCLUDES:
                raise SieveParseError(f"more than {MAX_INCLUDES} included scripts", *where)
            source = includes.loader(location, name) if includes.loader is not None else None
            if source is None:
                includes.compiled[key] = None
            else:
                includes.stack.append(key)
                try:
                    includes.compiled[key] = _compile(source, includes, name)
                except SieveParseError as error:
                    raise SieveParseError(
                        f"in included {location} script {name!r}: line {error.line}, "
                        f"column {error.column}: {error.message}",
                        *where,
                    ) from None
                finally:
                    includes.stack.pop()
        included = includes.compiled[key]
        if included is None and not bound.tags.get("optional"):
            missing = f"included {location} script {name!r} does not exist"
            if not includes.uploaded:
                raise SieveParseError(missing, *where)
            includes.warnings.append(
                f"line {command.line}: warning: {missing} (ignored during upload)"
            )
        command.extra["script"] = included


def _decode_arguments(node: Command | Test) -> None:
    for argument in node.arguments:
        if isinstance(argument, StringList):
            try:
                argument.values = [decode_encoded_characters(value) for value in argument.values]
            except SieveParseError as error:
                raise SieveParseError(error.message, argument.line, argument.column) from None


def _validate_block(commands: list[Command], enabled: set[str], top: bool) -> None:
    previous = ""
    for command in commands:
        if command.name == "require" and not top:
            raise SieveParseError(
                "require is allowed only at the top", command.line, command.column
            )
        spec = _COMMANDS.get(command.name)
        if spec is None or (spec.extension is not None and spec.extension not in enabled):
            raise SieveParseError(f"unknown command {command.name!r}", command.line, command.column)
        if command.name in ("elsif", "else") and previous not in ("if", "elsif"):
            raise SieveParseError(f"{command.name} without if", command.line, command.column)
        if "encoded-character" in enabled:
            _decode_arguments(command)
        bound = _bind(command, spec, enabled)
        command.extra["bound"] = bound
        if (
            command.name.endswith("flag")
            and len(bound.positional) == 2
            and "variables" not in enabled
        ):
            raise SieveParseError(
                f'{command.name} with a variable name needs require "variables"',
                command.line,
                command.column,
            )
        target = str(bound.positional[0]) if command.name == "redirect" else ""
        literal = not ("variables" in enabled and "${" in target)
        if command.name == "redirect" and literal and not _valid_redirect(target):
            raise SieveParseError(
                f"redirect: invalid address {bound.positional[0]!r}",
                command.line,
                command.column,
            )
        _check_command(command, bound, enabled)
        if spec.tests == "one" and len(command.tests) != 1:
            raise SieveParseError(f"{command.name} needs one test", command.line, command.column)
        if spec.tests == "none" and command.tests:
            first = command.tests[0]
            raise SieveParseError(f"{command.name} takes no test", first.line, first.column)
        for test in command.tests:
            _validate_test(test, enabled)
        if spec.block and command.block is None:
            raise SieveParseError(f"{command.name} needs a block", command.line, command.column)
        if not spec.block and command.block is not None:
            raise SieveParseError(f"{command.name} takes no block", command.line, command.column)
        if command.block is not None:
            _validate_block(command.block, enabled, top=False)
        previous = command.name


def _literal(value: object, enabled: set[str]) -> bool:
    return not ("variables" in enabled and "${" in str(value))


def _check_command(command: Command, bound: Bound, enabled: set[str]) -> None:
    where = (command.line, command.column)
    tags = bound.tags
    if command.name == "fileinto" and "specialuse" in tags:
        flag = str(tags["specialuse"])
        if _literal(flag, enabled) and not _SPECIAL_USE.fullmatch(flag):
            raise SieveParseError(f"fileinto: invalid special-use flag {flag!r}", *where)
    if command.name == "include":
        if tags.get("personal") and tags.get("global"):
            raise SieveParseError("include takes one of :personal and :global", *where)
        name = str(bound.positional[0])
        if not _SCRIPT_NAME.fullmatch(name) or name in (".", ".."):
            raise SieveParseError(f"include: invalid script name {name!r}", *where)
    if command.name == "global":
        if "variables" not in enabled:
            raise SieveParseError('global needs require "variables"', *where)
        for name in bound.positional[0]:  # type: ignore[union-attr]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
                raise SieveParseError(f"global: invalid variable name {name!r}", *where)


def _check_test(test: Test, bound: Bound, enabled: set[str]) -> None:
    where = (test.line, test.column)
    tags = bound.tags
    if "last" in tags and "index" not in tags and test.name != "duplicate":
        raise SieveParseError(":last needs :index", *where)
    if "index" in tags and int(str(tags["index"])) < 1:
        raise SieveParseError(":index must be at least 1", *where)
    if test.name in ("date", "currentdate") and "zone" in tags and "originalzone" in tags:
        raise SieveParseError("date takes one of :zone and :originalzone", *where)
    # Like Pigeonhole: an invalid :zone is ignored and an unknown date part never matches
    # (no compile error); specialuse_exists checks its flags at run time.
    if test.name == "duplicate" and "header" in tags and "uniqueid" in tags:
        raise SieveParseError("duplicate takes one of :header and :uniqueid", *where)


def _validate_test(test: Test, enabled: set[str]) -> None:
    spec = _TESTS.get(test.name)
    if spec is None or (spec.extension is not None and spec.extension not in enabled):
        raise SieveParseError(f"unknown test {test.name!r}", test.line, test.column)
    if "encoded-character" in enabled:
        _decode_arguments(test)
    bound = _bind(test, spec, enabled)
    if spec.match:
        _check_match(test, bound)
        if bound.tags.get("match") == "regex":
            for key in bound.positional[-1]:  # type: ignore[union-attr]
                if "variables" in enabled and "${" in key:
                    continue
                try:
                    from provider.sieve.match import compile_regex

                    compile_regex(key, str(bound.tags.get("comparator", "i;ascii-casemap")))
                except MatchError as error:
                    raise SieveParseError(str(error), test.line, test.column) from None
    if test.name == "hasflag" and len(bound.positional) == 2 and "variables" not in enabled:
        raise SieveParseError(
            'hasflag with a variable list needs require "variables"', test.line, test.column
        )
    if test.name == "size" and ("over" in bound.tags) == ("under" in bound.tags):
        raise SieveParseError("size needs exactly one of :over and :under", test.line, test.column)
    if test.name == "body" and sum(key in bound.tags for key in ("raw", "content", "text")) > 1:
        raise SieveParseError("body takes one transform", test.line, test.column)
    _check_test(test, bound, enabled)
    test.__dict__["bound"] = bound
    if spec.tests == "one" and len(test.tests) != 1:
        raise SieveParseError(f"{test.name} needs one test", test.line, test.column)
    if spec.tests == "list" and not test.tests:
        raise SieveParseError(f"{test.name} needs a test list", test.line, test.column)
    if spec.tests == "none" and test.tests:
        first = test.tests[0]
        raise SieveParseError(f"{test.name} takes no test", first.line, first.column)
    for inner in test.tests:
        _validate_test(inner, enabled)


# ---------------------------------------------------------------- run time

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|[0-9]+)\}")
_WILDCARD_CHARS = re.compile(r"([*?\\])")


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


@dataclass
class Context:
    """What a run may ask of its caller: the time, the mailbox store, the duplicate store.

    `now` (aware; default the current time) is currentdate's "now". `mailbox_exists(name)`
    answers mailboxexists, `special_use_exists(mailbox or None, flag)` specialuse_exists;
    without them nothing exists. `seen(handle, value, seconds, last)` answers duplicate: True
    when the value is tracked under that handle and not expired; the caller tracks it for
    `seconds` once the delivery succeeded (from the first sighting, or with `last` from this
    one: RFC 7352 §3.2); without it nothing is a duplicate, as in Pigeonhole's sieve-test.
    """

    now: datetime | None = None
    mailbox_exists: Callable[[str], bool] | None = None
    special_use_exists: Callable[[str | None, str], bool] | None = None
    seen: Callable[[str, str, int, bool], bool] | None = None


@dataclass
class Envelope:
    """The SMTP envelope: the reverse path ('' for <>) and the recipient this delivery is for."""

    sender: str
    recipient: str


class _Run:
    def __init__(
        self,
        script: Script,
        message: bytes,
        envelope: Envelope,
        budget: Budget,
        context: Context | None = None,
    ) -> None:
        self.script = script
        self.context = context or Context()
        self.globals: dict[str, str] = {}
        self.global_names: set[str] = set()
        self.included: set[tuple[str, str]] = set()
        self.depth = 0
        self.raw = message
        self.message = email.message_from_bytes(message, policy=email.policy.compat32)
        self.envelope = envelope
        self.budget = budget
        self.steps = 0
        self.variables: dict[str, str] = {}
        self.match_variables: list[str] = []
        self.flags: list[str] = []
        self.actions: list[Action] = []
        self.implicit_keep = True
        self.vacation_done = False
        self.uses_variables = "variables" in script.extensions

    # -- budget and strings

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > self.budget.max_steps:
            raise BudgetExceeded(f"more than {self.budget.max_steps} steps")

    def get_variable(self, name: str) -> str:
        if name in self.global_names:
            return self.globals.get(name, "")
        return self.variables.get(name, "")

    def put_variable(self, name: str, value: str) -> None:
        if name in self.global_names:
            self.globals[name] = value
        else:
            self.variables[name] = value

    def check_variable_bytes(self) -> None:
        total = sum(_size(value) for value in self.variables.values())
        total += sum(_size(value) for value in self.globals.values())
        total += sum(_size(value) for value in self.match_variables)
        total += sum(len(flag) for flag in self.flags)
        if total > self.budget.max_variable_bytes:
            raise BudgetExceeded(f"variables hold more than {self.budget.max_variable_bytes} bytes")

    def expand(self, value: str) -> str:
        if not self.uses_variables or "${" not in value:
            return value

        def replace(found: re.Match[str]) -> str:
            name = found.group(1)
            if name.isdigit():
                index = int(name)
                return self.match_variables[index] if index < len(self.match_variables) else ""
            lowered = name.lower()
            if lowered.startswith("global.") and lowered.count(".") == 1:
                return self.globals.get(lowered[7:], "")
            if "." in name:
                return found.group()
            return self.get_variable(lowered)

        expanded = join_octets(_VARIABLE.sub(replace, value))
        if len(expanded) > self.budget.max_variable_bytes:
            raise BudgetExceeded(f"a string longer than {self.budget.max_variable_bytes} bytes")
        return expanded

    def expand_all(self, values: object) -> list[str]:
        assert isinstance(values, list)
        return [self.expand(str(value)) for value in values]

    # -- commands

    def run_block(self, commands: list[Command]) -> None:
        skip_rest_of_chain = False
        for command in commands:
            name = command.name
            if name in ("elsif", "else"):
                if skip_rest_of_chain:
                    continue
            else:
                skip_rest_of_chain = False
            try:
                self.step()
                if name in ("if", "elsif"):
                    taken = self.test(command.tests[0])
                elif name == "else":
                    taken = True
                else:
                    bound: Bound = command.extra["bound"]  # type: ignore[assignment]
                    self.command(command, bound)
                    continue
            except SieveRuntimeError as error:
                if not error.line:
                    error.line, error.column = command.line, command.column
                raise
            if taken:
                skip_rest_of_chain = True
                assert command.block is not None
                self.run_block(command.block)

    def command(self, command: Command, bound: Bound) -> None:
        name = command.name
        tags = bound.tags
        if name == "require":
            return
        if name == "stop":
            raise _Stop
        if name == "return":
            raise _Return
        if name == "global":
            for variable in bound.positional[0]:  # type: ignore[union-attr]
                self.global_names.add(str(variable).lower())
            return
        if name == "include":
            self.include(command, bound)
            return
        if name == "keep":
            flags = self.flag_list(tags["flags"]) if "flags" in tags else list(self.flags)
            self.store("INBOX", flags, copy=False, create=False, kind="keep")
        elif name == "fileinto":
            folder = self.expand(str(bound.positional[0]))
            flags = self.flag_list(tags["flags"]) if "flags" in tags else list(self.flags)
            special_use = self.expand(str(tags["specialuse"])) if "specialuse" in tags else ""
            if special_use and not _SPECIAL_USE.fullmatch(special_use):
                raise SieveRuntimeError(f"fileinto: invalid special-use flag {special_use!r}")
            self.store(
                folder,
                flags,
                copy=bool(tags.get("copy")),
                create=bool(tags.get("create")),
                special_use=special_use,
            )
        elif name == "discard":
            self.add(Action("discard"))
            self.implicit_keep = False
        elif name == "redirect":
            address = self.expand(str(bound.positional[0]))
            if not _valid_redirect(address):
                raise SieveRuntimeError(f"redirect: invalid address {address!r}")
            if not any(a.kind == "redirect" and a.target == address for a in self.actions):
                self.add(Action("redirect", target=address, copy=bool(tags.get("copy"))))
            if not tags.get("copy"):
                self.implicit_keep = False
        elif name in ("reject", "ereject"):
            if any(a.kind in ("reject", "ereject") for a in self.actions):
                raise SieveRuntimeError("more than one reject")
            self.add(Action(name, text=self.expand(str(bound.positional[0]))))
            self.implicit_keep = False
        elif name in ("setflag", "addflag", "removeflag"):
            self.flag_command(name, bound)
        elif name == "set":
            self.set_variable(bound)
        elif name == "vacation":
            self.vacation(bound)
        self.check_conflicts()

    def add(self, action: Action) -> None:
        if len(self.actions) >= self.budget.max_actions:
            raise BudgetExceeded(f"more than {self.budget.max_actions} actions")
        self.actions.append(action)

    def store(
        self,
        folder: str,
        flags: list[str],
        copy: bool,
        create: bool,
        kind: str = "fileinto",
        special_use: str = "",
    ) -> None:
        if not folder:
            raise SieveRuntimeError("fileinto: empty folder name")
        for action in self.actions:
            if action.kind in ("keep", "fileinto") and (action.target or "INBOX") == folder:
                # Pigeonhole: a later store into the same folder replaces the earlier's flags.
                action.flags = tuple(flags)
                action.create = action.create or create
                action.special_use = special_use
                break
        else:
            self.add(
                Action(
                    kind,
                    target=folder,
                    flags=tuple(flags),
                    copy=copy,
                    create=create,
                    special_use=special_use,
                )
            )
        if not copy:
            self.implicit_keep = False

    def check_conflicts(self) -> None:
        kinds = {action.kind for action in self.actions}
        if kinds & {"reject", "ereject"} and kinds & {"keep", "fileinto", "redirect", "vacation"}:
            raise SieveRuntimeError("reject conflicts with other actions")

    # -- include (RFC 6609)

    def include(self, command: Command, bound: Bound) -> None:
        included = command.extra.get("script")
        if included is None:
            if bound.tags.get("optional"):
                return
            where = "global" if bound.tags.get("global") else "personal"
            raise SieveRuntimeError(
                f"included {where} script {bound.positional[0]!r} does not exist"
            )
        assert isinstance(included, Script)
        key = ("global" if bound.tags.get("global") else "personal", included.name)
        if bound.tags.get("once") and key in self.included:
            return
        self.included.add(key)
        if self.depth >= MAX_INCLUDE_DEPTH:  # compile time refuses this already
            raise SieveRuntimeError(f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        saved = (
            self.script,
            self.variables,
            self.global_names,
            self.match_variables,
            self.uses_variables,
        )
        self.script = included
        self.variables, self.global_names, self.match_variables = {}, set(), []
        self.uses_variables = "variables" in included.extensions
        self.depth += 1
        try:
            self.run_block(included.commands)
        except _Return:
            pass
        finally:
            self.depth -= 1
            (
                self.script,
                self.variables,
                self.global_names,
                self.match_variables,
                self.uses_variables,
            ) = saved

    # -- imap4flags (RFC 5232)

    def flag_list(self, values: object) -> list[str]:
        result: list[str] = []
        seen: set[str] = set()
        for value in self.expand_all(values):
            for flag in value.split():
                if flag.lower() not in seen:
                    seen.add(flag.lower())
                    result.append(flag)
        return result

    def flag_command(self, name: str, bound: Bound) -> None:
        variable = str(bound.positional[0]).lower() if len(bound.positional) == 2 else None
        new = self.flag_list(bound.positional[-1])
        current = self.flag_list([self.get_variable(variable)]) if variable else self.flags
        if name == "setflag":
            result = new
        elif name == "addflag":
            lowered = {flag.lower() for flag in current}
            result = list(current) + [flag for flag in new if flag.lower() not in lowered]
        else:
            removed = {flag.lower() for flag in new}
            result = [flag for flag in current if flag.lower() not in removed]
        if variable:
            self.put_variable(variable, truncate(" ".join(result)))
        else:
            self.flags = result
        self.check_variable_bytes()

    # -- variables (RFC 5229)

    def set_variable(self, bound: Bound) -> None:
        name = str(bound.positional[0])
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SieveRuntimeError(f"set: invalid variable name {name!r}")
        value = self.expand(str(bound.positional[1]))
        tags = bound.tags
        # RFC 5229 4.1: precedence 40 (lower/upper), 30 (first), 20 (quotewildcard), 10 (length).
        if tags.get("lower"):
            value = value.lower()
        if tags.get("upper"):
            value = value.upper()
        if tags.get("lowerfirst"):
            value = value[:1].lower() + value[1:]
        if tags.get("upperfirst"):
            value = value[:1].upper() + value[1:]
        if tags.get("quotewildcard"):
            value = _WILDCARD_CHARS.sub(r"\\\1", value)
        if tags.get("length"):
            value = str(len(value))
        self.put_variable(name.lower(), truncate(value))
        self.check_variable_bytes()

    # -- vacation (RFC 5230)

    def vacation(self, bound: Bound) -> None:
        if self.vacation_done:
            raise SieveRuntimeError("more than one vacation action")
        self.vacation_done = True
        tags = bound.tags
        if "seconds" in tags:
            seconds = int(str(tags["seconds"]))
        elif "days" in tags:
            seconds = int(str(tags["days"])) * 86400
        else:
            seconds = VACATION_DEFAULT_SECONDS
        seconds = max(seconds, VACATION_MIN_SECONDS)
        reason = self.expand(str(bound.positional[0]))
        subject = self.expand(str(tags["subject"])) if "subject" in tags else None
        sender = self.expand(str(tags["from"])) if "from" in tags else None
        if "handle" in tags:
            handle = self.expand(str(tags["handle"]))
        else:
            # Pigeonhole's default handle: the reason and the options that shape the reply.
            handle = (
                reason
                + (subject if subject is not None else "<default-subject>")
                + (sender if sender is not None else "<default-from>")
                + ("<MIME>" if tags.get("mime") else "<NO-MIME>")
            )
        original_subject = self.header_values("subject")
        self.add(
            Action(
                "vacation",
                target=self.envelope.sender,
                text=reason,
                vacation={
                    "seconds": seconds,
                    "subject": subject,
                    "reply_subject": subject
                    if subject is not None
                    else "Auto: " + (original_subject[0] if original_subject else ""),
                    "from": sender,
                    "addresses": self.expand_all(tags.get("addresses", [])),
                    "mime": bool(tags.get("mime")),
                    "handle": handle,
                },
            )
        )

    # -- tests

    def test(self, test: Test) -> bool:
        self.step()
        bound: Bound = test.__dict__["bound"]
        name = test.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(test.tests[0])
        if name == "allof":
            return all(self.test(inner) for inner in test.tests)
        if name == "anyof":
            return any(self.test(inner) for inner in test.tests)
        if name == "size":
            size = len(self.raw)
            if "over" in bound.tags:
                return size > int(str(bound.tags["over"]))
            return size < int(str(bound.tags["under"]))
        if name == "exists":
            names = self.expand_all(bound.positional[0])
            return all(self.raw_header(header) for header in names)
        if name == "mailboxexists":
            return self.mailboxes_exist(self.expand_all(bound.positional[0]))
        if name == "specialuse_exists":
            return self.special_use_exists(bound)
        if name == "duplicate":
            return self.duplicate(bound)
        keys = self.expand_all(bound.positional[-1])
        if name == "header":
            values: list[str] = []
            for header in self.expand_all(bound.positional[0]):
                values.extend(_pick(self.header_values(header), bound))
        elif name in ("date", "currentdate"):
            values = self.date_values(bound)
        elif name == "address":
            values = []
            for header in self.expand_all(bound.positional[0]):
                for address in self.header_addresses(header, bound):
                    part = _address_part(address, str(bound.tags.get("part", "all")))
                    if part is not None:
                        values.append(part)
        elif name == "envelope":
            values = []
            for part_name in self.expand_all(bound.positional[0]):
                lowered = part_name.lower()
                if lowered == "from":
                    address = self.envelope.sender
                elif lowered == "to":
                    address = self.envelope.recipient
                else:
                    continue
                part = _address_part(address, str(bound.tags.get("part", "all")))
                if part is not None:
                    values.append(part)
        elif name == "string":
            values = [value for value in self.expand_all(bound.positional[0])]
            if bound.tags.get("match") == "count":
                values = [value for value in values if value]
        elif name == "hasflag":
            if len(bound.positional) == 2:
                names = self.expand_all(bound.positional[0])
                values = []
                for variable in names:
                    values.extend(self.flag_list([self.get_variable(variable.lower())]))
            else:
                values = list(self.flags)
        elif name == "body":
            values = self.body_values(bound)
        else:
            raise SieveRuntimeError(f"unknown test {name}")
        return self.match(values, keys, bound)

    def match(self, values: list[str], keys: list[str], bound: Bound) -> bool:
        match_type = str(bound.tags.get("match", "is"))
        comparator = str(bound.tags.get("comparator", "i;ascii-casemap"))
        relation = str(bound.tags.get("relation", "eq"))
        if match_type == "count":
            count = str(len(values))
            self.step(len(keys))
            return any(match_one(count, key, "value", comparator, relation) for key in keys)
        for value in values:
            for key in keys:
                self.step()
                try:
                    found = match_one(value, key, match_type, comparator, relation)
                except MatchError as error:
                    raise SieveRuntimeError(str(error)) from None
                if found is not None:
                    if self.uses_variables and match_type in ("matches", "regex"):
                        self.match_variables = [truncate(item) for item in found]
                        self.check_variable_bytes()
                    return True
        return False

    # -- message access

    def header_values(self, name: str) -> list[str]:
        return [_decode_header(value) for value in self.raw_header(name)]

    def raw_header(self, name: str) -> list[str]:
        # raw_items, not get_all: get_all turns 8-bit bytes into unknown-8bit Header objects.
        lowered = name.lower()
        return [str(value) for key, value in self.message.raw_items() if key.lower() == lowered]

    def header_addresses(self, name: str, bound: Bound | None = None) -> list[str]:
        addresses: list[str] = []
        fields = self.raw_header(name)
        for value in _pick(fields, bound) if bound is not None else fields:
            unfolded = _unfold(value)
            found = [
                address for _display, address in email.utils.getaddresses([unfolded]) if address
            ]
            # Like Pigeonhole, a field with no parsable address is compared as its raw text.
            addresses.extend(found or ([unfolded] if unfolded else []))
        return addresses

    # -- date (RFC 5260)

    def date_values(self, bound: Bound) -> list[str]:
        tags = bound.tags
        part = self.expand(str(bound.positional[-2])).lower()
        zone = _zone(self.expand(str(tags["zone"]))) if "zone" in tags else None
        if "zone" in tags and zone is None:
            zone = _local_zone  # Pigeonhole ignores an invalid :zone
        moments: list[datetime] = []
        if len(bound.positional) == 2:  # currentdate
            moments.append(self.context.now or datetime.now(UTC))
        else:
            header = self.expand(str(bound.positional[0]))
            # Pigeonhole reads only the first field (its :index is accepted and ignored).
            for value in self.raw_header(header)[:1]:
                if header.lower() == "received":  # RFC 5260 4.4: the date after the last ";"
                    value = value.rpartition(";")[2]
                moment = _parse_date(_unfold(value))
                if moment is not None:
                    moments.append(moment)
        values = []
        for moment in moments:
            if zone is not None:
                moment = zone(moment)
            elif not tags.get("originalzone"):
                moment = _local_zone(moment)
            value = _date_part(moment, part)
            if value is not None:
                values.append(value)
        return values

    # -- mailbox (RFC 5490), special-use (RFC 8579), duplicate (RFC 7352)

    def mailboxes_exist(self, names: list[str]) -> bool:
        callback = self.context.mailbox_exists
        for name in names:
            self.step()
            if callback is None or not callback(name):
                return False
        return True

    def special_use_exists(self, bound: Bound) -> bool:
        mailbox = self.expand(str(bound.positional[0])) if len(bound.positional) == 2 else None
        flags = self.expand_all(bound.positional[-1])
        for flag in flags:
            if not _SPECIAL_USE.fullmatch(flag):
                raise SieveRuntimeError(f"specialuse_exists: invalid special-use flag {flag!r}")
        callback = self.context.special_use_exists
        if mailbox is not None and not self.mailboxes_exist([mailbox]):
            return False
        for flag in flags:
            self.step()
            if callback is None or not callback(mailbox, flag):
                return False
        return True

    def duplicate(self, bound: Bound) -> bool:
        tags = bound.tags
        if "uniqueid" in tags:
            value: str | None = self.expand(str(tags["uniqueid"]))
        else:
            header = self.expand(str(tags.get("header", "message-id")))
            fields = self.header_values(header)
            value = fields[0].strip() if fields else None
        if not value:
            return False  # no ID: not a duplicate, nothing recorded
        seconds = int(str(tags.get("seconds", DUPLICATE_DEFAULT_SECONDS)))
        seconds = min(seconds, DUPLICATE_MAX_SECONDS)
        handle = self.expand(str(tags.get("handle", "")))
        self.step()
        if self.context.seen is None:
            return False
        return bool(self.context.seen(handle, value, seconds, bool(tags.get("last"))))

    def body_values(self, bound: Bound) -> list[str]:
        if bound.tags.get("raw"):
            separator = self.raw.find(b"\r\n\r\n")
            length = 4
            if separator < 0 or (0 <= self.raw.find(b"\n\n") < separator):
                separator, length = self.raw.find(b"\n\n"), 2
            body = b"" if separator < 0 else self.raw[separator + length :]
            return [body.decode("utf-8", "replace")]
        if "content" in bound.tags:
            wanted = [item.lower() for item in self.expand_all(bound.tags["content"])]
        else:
            wanted = ["text"]
        values: list[str] = []
        for part in self.message.walk():
            content_type = part.get_content_type().lower()
            main_type = content_type.split("/")[0]
            if not any(
                item == "" or item == content_type or ("/" not in item and item == main_type)
                for item in wanted
            ):
                continue
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = part.get_content_charset() or "us-ascii"
            try:
                values.append(payload.decode(charset, "replace"))
            except LookupError:
                values.append(payload.decode("utf-8", "replace"))
        return values


def _pick(values: list[str], bound: Bound) -> list[str]:
    """:index N (with :last, counted from the end): only the Nth field, or none."""
    if "index" not in bound.tags:
        return values
    index = int(str(bound.tags["index"]))
    if index > len(values):
        return []
    return [values[-index] if bound.tags.get("last") else values[index - 1]]


def _parse_date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_tz(value)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    offset = parsed[9] or 0
    if not -86400 < offset < 86400:
        return None
    try:
        return datetime(
            year, month, day, hour, minute, second, tzinfo=timezone(timedelta(seconds=offset))
        )
    except (ValueError, OverflowError):
        return None


def _zone(text: str) -> Callable[[datetime], datetime] | None:
    if not _ZONE.fullmatch(text):
        return None
    minutes = int(text[1:3]) * 60 + int(text[3:5])
    offset = timezone(timedelta(minutes=-minutes if text[0] == "-" else minutes))
    return lambda moment: moment.astimezone(offset)


def _local_zone(moment: datetime) -> datetime:
    try:
        return moment.astimezone()
    except (ValueError, OverflowError):
        return moment.astimezone(UTC)


def _date_part(moment: datetime, part: str) -> str | None:
    offset = moment.utcoffset() or timedelta()
    minutes = int(offset.total_seconds()) // 60
    zone = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    if part == "year":
        return f"{moment.year:04d}"
    if part == "month":
        return f"{moment.month:02d}"
    if part == "day":
        return f"{moment.day:02d}"
    if part == "date":
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    if part == "julian":  # the Modified Julian Day (RFC 5260 section 4.2)
        return str(moment.date().toordinal() - 678576)
    if part == "hour":
        return f"{moment.hour:02d}"
    if part == "minute":
        return f"{moment.minute:02d}"
    if part == "second":
        return f"{moment.second:02d}"
    if part == "time":
        return f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    if part == "iso8601":
        suffix = "Z" if minutes == 0 else zone[:3] + ":" + zone[3:]  # as Pigeonhole writes it
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + suffix
    if part == "std11":
        return email.utils.format_datetime(moment).replace(" -0000", " +0000")[:-5] + zone
    if part == "zone":
        return zone
    if part == "weekday":
        return str((moment.weekday() + 1) % 7)
    return None


def _unfold(value: str) -> str:
    # compat32 keeps raw 8-bit header bytes as surrogates: read them as UTF-8 (RFC 6532).
    if any("\udc80" <= char <= "\udcff" for char in value):
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return re.sub(r"\r?\n(?=[ \t])", "", value).strip()


def _decode_header(value: str) -> str:
    unfolded = _unfold(value)
    try:
        return str(email.header.make_header(email.header.decode_header(unfolded)))
    except (email.errors.HeaderParseError, LookupError, UnicodeDecodeError, ValueError):
        return unfolded


def _address_part(address: str, part: str) -> str | None:
    if part == "all":
        return address
    if "@" in address:
        local, _, domain = address.rpartition("@")
    else:
        local, domain = address, ""
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    user, separator, detail = local.partition(SUBADDRESS_SEPARATOR)
    if part == "user":
        return user
    return detail if separator else None


def _valid_redirect(address: str) -> bool:
    return bool(re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address))


def run(
    script: Script,
    message: bytes,
    envelope: Envelope,
    budget: Budget | None = None,
    context: Context | None = None,
) -> Result:
    """Run a compiled script on a message; a runtime error comes back in the Result."""
    state = _Run(script, message, envelope, budget or Budget(), context)
    try:
        state.run_block(script.commands)
    except (_Stop, _Return):
        pass
    except SieveRuntimeError as error:
        return Result([], True, (), error)
    return Result(state.actions, state.implicit_keep, tuple(state.flags))


def evaluate(source: str | bytes, message: bytes, sender: str, recipient: str) -> Result:
    """Compile and run in one call (raises SieveParseError for a bad script)."""
    return run(compile_script(source), message, Envelope(sender, recipient))
