"""Unit tests of date/index, special-use, mailboxexists, include, duplicate: errors, budget."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from provider.sieve import Budget, Context, Envelope, SieveParseError, compile_script, run
from provider.sieve.interpreter import EXTENSIONS, MAX_INCLUDE_DEPTH, Loader

MESSAGE = (
    b"From: a@example.com\r\nTo: me@example.org\r\nSubject: hi\r\n"
    b"Date: Tue, 01 Dec 2026 23:30:15 -0500\r\nMessage-ID: <m1@example.com>\r\n\r\nbody\r\n"
)
ENVELOPE = Envelope("a@example.com", "me@example.org")


def actions(source: str, context: Context | None = None, loader: Loader | None = None) -> list[str]:
    return run(compile_script(source, loader), MESSAGE, ENVELOPE, None, context).normalized()


def loader_of(scripts: dict[str, str]) -> Loader:
    def load(location: str, name: str) -> str | None:
        return scripts.get(f"{location}/{name}")

    return load


def test_currentdate_uses_the_callers_now() -> None:
    now = datetime(2027, 1, 1, 0, 30, tzinfo=UTC)
    script = (
        'require ["date", "fileinto", "variables"];\n'
        'if currentdate :zone "-0100" :matches "iso8601" "*" { fileinto "${1}"; }\n'
    )
    assert actions(script, Context(now=now)) == [
        "store 2026-12-31T23:30:00-01:00",
        "implicit-keep none",
    ]


@pytest.mark.parametrize(
    ("header", "found"),
    [
        ("Date: \xff\xfe garbage", False),
        ("Date: Tue, 01 Dec 99999 23:30:15 -0500", False),
        ("Date: Tue, 31 Feb 2026 23:30:15 -0500", False),
        ("Date: Tue, 01 Dec 2026 23:30:15 +9999", False),
        ("Date: 01 Dec 2026 23:30 EST", True),
    ],
)
def test_bad_dates_never_match_and_never_fail(header: str, found: bool) -> None:
    message = f"From: a@example.com\r\n{header}\r\n\r\nx\r\n".encode("latin-1")
    script = 'require ["date", "fileinto"];\nif date :matches "date" "date" "*" { fileinto "d"; }\n'
    result = run(compile_script(script), message, ENVELOPE)
    assert result.error is None
    assert ("store d" in result.normalized()) is found


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ('require "index";\nif header :last "subject" "x" {}', ":last needs :index"),
        ('require "index";\nif header :index 0 "subject" "x" {}', ":index must be at least 1"),
        ('if header :index 1 "subject" "x" {}', 'needs require "index"'),
        (
            'require "date";\nif date :zone "+0100" :originalzone "date" "year" "1" {}',
            "one of :zone and :originalzone",
        ),
        ('require ["fileinto", "special-use"];\nfileinto :specialuse "Junk" "x";', "special-use"),
        ('require "fileinto";\nfileinto :specialuse "\\\\Junk" "x";', 'require "special-use"'),
        ('require "include";\ninclude :personal :global "x";', "one of :personal and :global"),
        ('require "include";\ninclude "a/b";', "invalid script name"),
        ('require "include";\nglobal "x";', 'global needs require "variables"'),
        ('require "include";\ninclude "nowhere";', "script 'nowhere' does not exist"),
        (
            'require "duplicate";\nif duplicate :header "a" :uniqueid "b" {}',
            "one of :header and :uniqueid",
        ),
        ('if mailboxexists "x" {}', "unknown test"),
    ],
)
def test_compile_errors(script: str, message: str) -> None:
    with pytest.raises(SieveParseError) as caught:
        compile_script(script, loader_of({}))
    assert message in str(caught.value)
    assert caught.value.line >= 1


def test_index_counts_from_either_end_and_past_the_end_is_false() -> None:
    message = b"Received: one\r\nReceived: two\r\nReceived: three\r\n\r\n"
    script = (
        'require ["index", "fileinto", "variables"];\n'
        'if header :index 2 :matches "received" "*" { fileinto "a-${1}"; }\n'
        'if header :index 1 :last :matches "received" "*" { fileinto "b-${1}"; }\n'
        'if header :index 4 :matches "received" "*" { fileinto "c"; }\n'
        'if header :index 2147483647 :last :matches "received" "*" { fileinto "d"; }\n'
    )
    result = run(compile_script(script), message, ENVELOPE)
    assert result.normalized() == ["store a-two", "store b-three", "implicit-keep none"]


def test_mailboxexists_and_specialuse_ask_the_caller() -> None:
    asked: list[object] = []

    def exists(name: str) -> bool:
        asked.append(name)
        return name in ("INBOX", "Lists")

    def special(mailbox: str | None, flag: str) -> bool:
        asked.append((mailbox, flag))
        return flag == "\\Junk"

    script = (
        'require ["fileinto", "mailbox", "special-use"];\n'
        'if mailboxexists ["INBOX", "Lists"] { fileinto "both"; }\n'
        'if mailboxexists ["INBOX", "Nope"] { fileinto "nope"; }\n'
        'if specialuse_exists "\\\\Junk" { fileinto "junk"; }\n'
        'if specialuse_exists "Lists" ["\\\\Junk", "\\\\Trash"] { fileinto "trash"; }\n'
        'fileinto :specialuse "\\\\Junk" "Spam";\n'
    )
    got = actions(script, Context(mailbox_exists=exists, special_use_exists=special))
    assert got == [
        "store both",
        "store junk",
        "store Spam specialuse=\\Junk",
        "implicit-keep none",
    ]
    assert (None, "\\Junk") in asked and ("Lists", "\\Trash") in asked
    # Without callbacks nothing exists.
    assert actions(script) == ["store Spam specialuse=\\Junk", "implicit-keep none"]


def test_special_use_flags_from_variables_are_checked_at_run_time() -> None:
    script = (
        'require ["fileinto", "special-use", "variables"];\n'
        'set "f" "Junk";\nfileinto :specialuse "${f}" "Spam";\n'
    )
    result = run(compile_script(script), MESSAGE, ENVELOPE)
    assert result.error is not None and "special-use" in str(result.error)
    assert result.implicit_keep and not result.actions


def test_include_globals_once_optional_return() -> None:
    scripts = {
        "personal/sub": (
            'require ["include", "variables", "fileinto"];\nglobal "who";\n'
            'fileinto "sub-${who}";\nset "who" "changed";\nset "local" "x";\nreturn;\n'
            'fileinto "after-return";\n'
        ),
        "global/shared": 'require "fileinto";\nfileinto "global";\n',
    }
    script = (
        'require ["include", "variables", "fileinto"];\nglobal "who";\nset "who" "me";\n'
        'include "sub";\ninclude :once "sub";\ninclude :global "shared";\n'
        'include :optional "missing";\nfileinto "main-${who}-${local}";\n'
    )
    assert actions(script, loader=loader_of(scripts)) == [
        "store sub-me",
        "store global",
        "store main-changed-",
        "implicit-keep none",
    ]


def test_a_missing_included_script_is_an_error_except_at_upload() -> None:
    assert "include" in EXTENSIONS
    with pytest.raises(SieveParseError, match="script 'x' does not exist"):
        compile_script('require "include";\ninclude "x";')  # no loader: nothing exists
    with pytest.raises(SieveParseError, match="script 'nowhere' does not exist"):
        compile_script('require "include";\ninclude "nowhere";', loader_of({}))
    # Uploaded (not active yet): a warning, and at run time an error that keeps the message.
    source = 'require ["include", "fileinto"];\nfileinto "before";\ninclude "later";\n'
    script = compile_script(source, loader_of({}), uploaded=True)
    assert script.warnings == [
        "line 3: warning: included personal script 'later' does not exist (ignored during upload)"
    ]
    result = run(script, MESSAGE, ENVELOPE)
    assert result.error is not None and "'later' does not exist" in str(result.error)
    assert result.implicit_keep
    optional = 'require "include";\ninclude :optional "later";\n'
    assert compile_script(optional, loader_of({}), uploaded=True).warnings == []


def test_all_extensions_cover_the_included_scripts() -> None:
    scripts = {"personal/sort": 'require "fileinto";\nfileinto "x";'}
    script = compile_script('require "include";\ninclude "sort";', loader_of(scripts))
    assert script.extensions == {"include"}
    assert script.all_extensions == {"include", "fileinto"}


def test_include_loops_depth_and_bad_included_scripts_are_compile_errors() -> None:
    loop = loader_of(
        {
            "personal/a": 'require "include";\ninclude "b";',
            "personal/b": ('require "include";\ninclude "a";'),
        }
    )
    with pytest.raises(SieveParseError, match="circular include"):
        compile_script('require "include";\ninclude "a";', loop)
    chain = {
        f"personal/s{index}": f'require "include";\ninclude "s{index + 1}";'
        for index in range(MAX_INCLUDE_DEPTH + 5)
    }
    with pytest.raises(SieveParseError, match="nested deeper"):
        compile_script('require "include";\ninclude "s0";', loader_of(chain))
    broken = loader_of({"personal/x": b"if \xff {"})  # type: ignore[dict-item]
    with pytest.raises(SieveParseError, match="in included personal script 'x'") as caught:
        compile_script('require "include";\n\ninclude "x";', broken)
    assert caught.value.line == 3


def test_include_shares_the_budget() -> None:
    spin = 'if header :contains "subject" ["' + '", "'.join("k" * 3 for _ in range(200)) + '"] {}\n'
    scripts = {"personal/spin": spin * 50}
    script = 'require "include";\n' + 'include "spin";\n' * 20
    result = run(compile_script(script, loader_of(scripts)), MESSAGE, ENVELOPE, Budget(20_000))
    assert result.error is not None and "steps" in str(result.error)
    assert result.implicit_keep


def test_duplicate_asks_the_store() -> None:
    calls: list[tuple[str, str, int, bool]] = []

    def seen(handle: str, value: str, seconds: int, last: bool) -> bool:
        calls.append((handle, value, seconds, last))
        return value == "<m1@example.com>"

    script = (
        'require ["duplicate", "fileinto", "variables"];\n'
        'if duplicate { fileinto "dup"; }\n'
        'if duplicate :header "subject" :handle "h" :seconds 60 { fileinto "subj"; }\n'
        'if duplicate :uniqueid "${nothing}" { fileinto "empty"; }\n'
        'if duplicate :header "x-missing" { fileinto "missing"; }\n'
        'if duplicate :seconds 2147483647 :last { fileinto "long"; }\n'
    )
    got = actions(script, Context(seen=seen))
    assert got == ["store dup", "store long", "implicit-keep none"]
    assert calls == [
        ("", "<m1@example.com>", 12 * 3600, False),
        ("h", "hi", 60, False),
        ("", "<m1@example.com>", 2 * 86400, True),
    ]
    assert actions(script) == ["implicit-keep store INBOX"]
