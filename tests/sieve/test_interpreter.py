"""Run-time behaviour of the Sieve interpreter: budget, errors, envelope and hostile input."""

from __future__ import annotations

import time

import pytest

from provider.sieve import Budget, BudgetExceeded, Envelope, SieveRuntimeError, compile_script, run

MESSAGE = b"From: Alice <alice@example.com>\r\nTo: me@example.org\r\nSubject: hello\r\n\r\nbody\r\n"
ENVELOPE = Envelope("alice@example.com", "me@example.org")


def normalized(source: str, message: bytes = MESSAGE, envelope: Envelope = ENVELOPE) -> list[str]:
    return run(compile_script(source), message, envelope).normalized()


def test_no_action_is_implicit_keep() -> None:
    assert normalized("") == ["implicit-keep store INBOX"]


def test_step_budget_stops_a_long_run_with_a_runtime_error() -> None:
    script = compile_script('if header :contains "subject" ["a", "b", "c", "d"] { keep; }\n' * 50)
    result = run(script, MESSAGE, ENVELOPE, Budget(max_steps=100))
    assert isinstance(result.error, BudgetExceeded)
    assert "steps" in result.error.message
    # The caller's fallback: no actions, the implicit keep still on.
    assert result.actions == [] and result.implicit_keep
    assert result.normalized() == ["error"]
    assert result.error.line > 0


def test_variables_are_cut_at_4096_bytes_like_pigeonhole() -> None:
    doubling = 'set "v" "${v}${v}";\n' * 40
    script = compile_script(
        f'require ["variables", "fileinto"];\nset "v" "\u00e9123456789";\n{doubling}'
        'set :length "n" "${v}";\nfileinto "${n}";'
    )
    started = time.monotonic()
    result = run(script, MESSAGE, ENVELOPE)
    # 4096 bytes of "é123456789" repeated (11 bytes, 10 characters): 3723 characters.
    assert result.normalized() == ["store 3723", "implicit-keep none"]
    assert time.monotonic() - started < 5


def test_variable_budget_counts_all_variables() -> None:
    many = "".join(f'set "v{index}" "${{big}}";\n' for index in range(40))
    script = compile_script(
        'require "variables";\nif header :matches "subject" "*" { set "big" "${1}"; }\n' + many
    )
    message = b"Subject: " + b"x" * 10_000 + b"\r\n\r\nbody\r\n"
    result = run(script, message, ENVELOPE, Budget(max_variable_bytes=64 * 1024))
    assert isinstance(result.error, BudgetExceeded)
    assert "bytes" in result.error.message
    # ${0} and ${1} (4096 bytes each, cut) count too: the 14th set crosses 64 KiB.
    assert result.error.line == 16


def test_action_budget() -> None:
    redirects = "".join(f'redirect :copy "user{index}@example.net";\n' for index in range(100))
    result = run(compile_script('require "copy";\n' + redirects), MESSAGE, ENVELOPE)
    assert isinstance(result.error, BudgetExceeded)
    assert result.error.line == 66  # the 65th redirect, after require


def test_reject_with_fileinto_is_a_runtime_error_at_the_reject() -> None:
    result = run(
        compile_script('require ["reject", "fileinto"];\nfileinto "A";\nreject "no";'),
        MESSAGE,
        ENVELOPE,
    )
    assert isinstance(result.error, SieveRuntimeError)
    assert (result.error.line, result.error.column) == (3, 1)


def test_ereject_is_ours_too() -> None:
    assert normalized('require "ereject";\nereject "go away";') == [
        "reject go away",
        "implicit-keep none",
    ]


def test_two_vacations_are_an_error() -> None:
    result = run(
        compile_script('require "vacation";\nvacation "a";\nvacation "b";'), MESSAGE, ENVELOPE
    )
    assert isinstance(result.error, SieveRuntimeError)


def test_vacation_decision_replies_to_the_envelope_sender() -> None:
    result = run(compile_script('require "vacation";\nvacation :days 2 "away";'), MESSAGE, ENVELOPE)
    (action,) = result.actions
    assert action.kind == "vacation"
    assert action.target == "alice@example.com"
    assert action.vacation["seconds"] == 2 * 86400
    assert action.vacation["reply_subject"] == "Auto: hello"


def test_vacation_days_are_clamped_to_pigeonholes_minimum() -> None:
    result = run(compile_script('require "vacation";\nvacation :days 0 "away";'), MESSAGE, ENVELOPE)
    assert result.actions[0].vacation["seconds"] == 86400


def test_null_sender_envelope() -> None:
    script = 'require "envelope";\nif envelope :is "from" "" { discard; }'
    assert normalized(script, envelope=Envelope("", "me@example.org")) == [
        "discard",
        "implicit-keep none",
    ]


def test_redirect_to_a_variable_that_is_no_address_fails_at_run_time() -> None:
    script = compile_script('require "variables";\nset "a" "nobody";\nredirect "${a}";')
    result = run(script, MESSAGE, ENVELOPE)
    assert isinstance(result.error, SieveRuntimeError)
    assert "invalid address" in result.error.message


def test_regex_from_a_variable_that_backtracks_is_refused_at_run_time() -> None:
    script = compile_script(
        'require ["regex", "variables"];\nset "p" "(a*)*b";\n'
        'if header :regex "subject" "${p}" { keep; }'
    )
    result = run(script, b"Subject: " + b"a" * 5000 + b"\r\n\r\n", ENVELOPE)
    assert isinstance(result.error, SieveRuntimeError)
    assert "quantified group" in result.error.message


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x00\xff\xfe garbage without headers",
        b"Subject: =?UTF-8?B?////?=\r\nFrom: \xff\xfe@\xc3\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain;"
        b" charset=no-such-charset\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n",
        b"Subject: " + b"x" * 1_000_000 + b"\r\n\r\n",
    ],
)
def test_hostile_messages_never_crash(message: bytes) -> None:
    script = compile_script(
        'require ["body", "variables", "fileinto"];\n'
        'if anyof (header :matches "subject" "*x*", address :domain "from" "example.com",'
        ' body :contains "x", body :raw :contains "y", body :content "text" :contains "z")'
        ' { fileinto "hit"; }'
    )
    result = run(script, message, ENVELOPE)
    assert result.error is None
    assert result.normalized()[-1].startswith("implicit-keep")


def test_match_on_huge_header_is_fast() -> None:
    message = b"Subject: " + b"a" * 200_000 + b"\r\n\r\n"
    script = compile_script(
        'require "variables";\nif header :matches "subject" "*a*a*a*a*b" { discard; }'
    )
    started = time.monotonic()
    result = run(script, message, ENVELOPE)
    assert result.normalized() == ["implicit-keep store INBOX"]
    assert time.monotonic() - started < 5
