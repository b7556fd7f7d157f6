"""Parse and validation errors of Sieve scripts carry the line and column, like sievec's."""

from __future__ import annotations

import pytest

from provider.sieve import SieveParseError, compile_script, parse
from provider.sieve.parser import MAX_NESTING, MAX_SCRIPT_BYTES, Number, StringList


def error_of(source: str | bytes) -> SieveParseError:
    with pytest.raises(SieveParseError) as caught:
        compile_script(source)
    return caught.value


@pytest.mark.parametrize(
    ("source", "line", "column", "words"),
    [
        ("keep;\nif true {\n  stop;\n", 4, 1, "'}'"),
        ('keep;\n  fileinto "x";', 2, 3, "unknown command 'fileinto'"),
        ('require "fileinto";\nfileinto :copy "x";', 2, 10, 'require "copy"'),
        ("keep\nstop;", 2, 1, "keep takes no test"),
        ('if header :is "a" "b" keep;', 1, 23, "header takes no test"),
        ('require "body";\nif body :raw :text "x" { keep; }', 2, 4, "one transform"),
        ('require "vacation";\n\nvacation :days "7" "x";', 3, 16, "needs a number"),
        ('if header :contains "a" ["b" "c"] {}', 1, 30, "',' or ']'"),
        ('if header :is "a" "b\n\nmore', 1, 19, "unterminated string"),
        ("/* open\ncomment", 1, 1, "unterminated comment"),
        ('keep;\nredirect "not-an-address";', 2, 1, "invalid address"),
        ('require "x-unknown";', 1, 1, "unknown or unsupported extension 'x-unknown'"),
        ('require "editheader";', 1, 1, "unsupported extension 'editheader'"),
        ('keep;\nrequire "fileinto";', 2, 1, "require must come before"),
        ("else { keep; }", 1, 1, "else without if"),
        ('if header :comparator "i;foo" "a" "b" {}', 1, 4, "unknown comparator"),
        ('if header :contains :comparator "i;ascii-numeric" "a" "1" {}', 1, 4, "does not support"),
        ('if header :is :contains "a" "b" {}', 1, 15, "only one match type"),
        ("if size 100 { keep; }", 1, 4, "positional"),
        ("if size :over 1 :under 2 { keep; }", 1, 4, "size needs exactly one"),
        ("if size :over 18446744073709551616 {}", 1, 15, "exceeds integer limits"),
        ("if size :over 17179869184G {}", 1, 15, "exceeds integer limits"),
        ('require "regex";\nif header :regex "s" "(a+)+" {}', 2, 4, "quantified group"),
        ('require "regex";\nif header :regex "s" "(a)\\\\1" {}', 2, 4, "backreferences"),
        ('require "regex";\nif header :regex "s" "(" {}', 2, 4, "invalid regex"),
        ("keep; \x01", 1, 7, "unexpected character"),
        ("if true { keep; } elsif", 1, 24, "';' or '{'"),
        ('require "imap4flags";\nif hasflag "v" "x" {}', 2, 4, 'require "variables"'),
        ('require "relational";\nif header :value "xx" "a" "b" {}', 2, 4, "unknown relation"),
    ],
)
def test_error_position(source: str, line: int, column: int, words: str) -> None:
    error = error_of(source)
    assert (error.line, error.column) == (line, column), str(error)
    assert words in error.message
    assert str(error).startswith(f"line {line}, column {column}: error: ")


def test_invalid_utf8_reports_its_position() -> None:
    error = error_of(b'keep;\nif header :is "a" "\xff" {}')
    assert (error.line, error.column) == (2, 20)
    assert "UTF-8" in error.message


def test_oversized_script_is_refused() -> None:
    error = error_of(b"#" * (MAX_SCRIPT_BYTES + 1))
    assert "larger than" in error.message


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    deep = "if true {" * (MAX_NESTING + 1) + "}" * (MAX_NESTING + 1)
    assert "nested too deeply" in error_of(deep).message
    tests = "if " + "not " * 5000 + "true {}"
    assert "nested too deeply" in error_of(tests).message


def test_numbers_take_quantifiers() -> None:
    commands = parse("if size :over 2K {} if size :under 3m {} if size :over 1G {}")
    values = [command.tests[0].arguments[1] for command in commands]
    assert [value.value for value in values if isinstance(value, Number)] == [
        2048,
        3 * 1024 * 1024,
        1024**3,
    ]


def test_multiline_string_undoes_dot_stuffing_and_keeps_crlf() -> None:
    commands = parse("redirect text: # comment\r\n..dot\r\nline\r\n.\r\n;")
    argument = commands[0].arguments[0]
    assert isinstance(argument, StringList)
    assert argument.values == [".dot\r\nline\r\n"]


def test_quoted_string_escapes() -> None:
    commands = parse('keep "a\\"b\\\\c\\d";')
    argument = commands[0].arguments[0]
    assert isinstance(argument, StringList)
    assert argument.values == ['a"b\\cd']


def test_encoded_character_only_with_its_require() -> None:
    with_it = compile_script('require "encoded-character";\nredirect "${hex:61}@b.c";')
    argument = with_it.commands[1].arguments[0]
    assert isinstance(argument, StringList) and argument.values == ["a@b.c"]
    assert "invalid address" in error_of('redirect "${hex:61}b.c";').message


def test_encoded_character_rejects_surrogates_at_their_position() -> None:
    error = error_of('require "encoded-character";\nkeep;\nredirect "${unicode:D800}@x";')
    assert (error.line, error.column) == (3, 10)
    assert "code point" in error.message
