"""The rule editor's model: validation, round trips, scripts that behave (ours and Pigeonhole's)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date

import pytest

from provider.errors import InvalidInput
from provider.services.sieve_rules import (
    Condition,
    Forwarding,
    NotRepresentable,
    Rule,
    RuleAction,
    RuleSet,
    Vacation,
    check_ruleset,
    from_sieve,
    to_sieve,
)
from provider.sieve import compile_script, evaluate
from tests.sieve.pigeonhole import SieveTest, unavailable_reason

TODAY = date(2026, 7, 10)
ME = "alice@example.test"


def message(sender: str = "Bob <bob@lists.example>", subject: str = "hello", **extra: str) -> bytes:
    headers = {"From": sender, "To": ME, "Subject": subject, "Message-ID": "<m1@x>", **extra}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\nbody text\r\n").encode()


def full_ruleset() -> RuleSet:
    return RuleSet(
        rules=[
            Rule(
                "Lists",
                [Condition("from", "lists.example"), Condition("header", "List-Id", "X-List")],
                [RuleAction("move", folder="Lists/Dev"), RuleAction("mark_read")],
                match="any",
            ),
            Rule(
                "Big",
                [Condition("size_over", "2", unit="M"), Condition("subject", 'say "hi" \\ ü')],
                [RuleAction("flag"), RuleAction("stop")],
            ),
            Rule(
                "Sales",
                [Condition("to", "sales@Example.TEST")],
                [RuleAction("forward", address="x@elsewhere.test", keep_copy=True)],
            ),
            Rule("Off", [Condition("subject", "spam")], [RuleAction("discard")], enabled=False),
        ],
        vacation=Vacation(
            True, "Away", "I am away.\nBack on Monday.", 3, "2026-07-01", "2026-07-20"
        ),
        forwarding=Forwarding("", True),
    )


def test_round_trip_and_the_script_compiles() -> None:
    ruleset = check_ruleset(full_ruleset())
    for day in (TODAY, date(2026, 8, 1)):
        source = to_sieve(ruleset, day)
        compile_script(source)
        assert from_sieve(source) == ruleset
    assert "vacation :days 3" in to_sieve(ruleset, TODAY)
    assert "vacation" not in to_sieve(ruleset, date(2026, 8, 1)).split("\n", 2)[2]
    assert to_sieve(RuleSet(), TODAY).startswith("# provider-rules v1\n")
    assert from_sieve(to_sieve(RuleSet(), TODAY)) == RuleSet()


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace('fileinto :create "Lists/Dev";', 'fileinto "Elsewhere";'),
        lambda s: s + "keep;\n",
        lambda s: s.replace("# provider-rules v1", "# provider-rules v2"),
        lambda s: s.replace('"name":"Lists"', '"name":"Lists" '),
        lambda s: s.replace('"days":3', '"days":"x"'),
        lambda s: s.replace("\n", "\r\n"),
        lambda s: "",
        lambda s: 'require "fileinto";\nfileinto "X";\n',
    ],
)
def test_a_hand_edited_script_is_not_representable(edit) -> None:
    source = to_sieve(full_ruleset(), TODAY)
    with pytest.raises(NotRepresentable):
        from_sieve(edit(source))


@pytest.mark.parametrize(
    ("ruleset", "field"),
    [
        (RuleSet([Rule("r", [], [RuleAction("stop")])]), "conditions"),
        (RuleSet([Rule("r", [Condition("from", "x")], [])]), "actions"),
        (
            RuleSet([Rule("r", [Condition("size_over", "99999999999999")], [RuleAction("stop")])]),
            "value",
        ),
        (RuleSet([Rule("r", [Condition("size_over", "-1")], [RuleAction("stop")])]), "value"),
        (RuleSet([Rule("r", [Condition("size_over", "١٢")], [RuleAction("stop")])]), "value"),
        (
            RuleSet([Rule("r", [Condition("size_over", "5", unit="G")], [RuleAction("stop")])]),
            "unit",
        ),
        (
            RuleSet([Rule("r", [Condition("header", "x", "Bad: name")], [RuleAction("stop")])]),
            "header",
        ),
        (RuleSet([Rule("r", [Condition("from", "a\nb")], [RuleAction("stop")])]), "value"),
        (RuleSet([Rule("r", [Condition("from", "")], [RuleAction("stop")])]), "value"),
        (RuleSet([Rule("r", [Condition("to", "not an address")], [RuleAction("stop")])]), "value"),
        (
            RuleSet([Rule("r", [Condition("from", "x")], [RuleAction("move", folder="a.b")])]),
            "folder",
        ),
        (RuleSet([Rule("r", [Condition("from", "x")], [RuleAction("move", folder="")])]), "folder"),
        (
            RuleSet([Rule("r", [Condition("from", "x")], [RuleAction("forward", address="x@@y")])]),
            "address",
        ),
        (
            RuleSet(
                [Rule("r", [Condition("from", "x")], [RuleAction("discard"), RuleAction("flag")])]
            ),
            "actions",
        ),
        (RuleSet([Rule("r", [Condition("nope", "x")], [RuleAction("stop")])]), "kind"),
        (RuleSet(vacation=Vacation(True, "", "")), "text"),
        (RuleSet(vacation=Vacation(True, "", "x", days=0)), "days"),
        (RuleSet(vacation=Vacation(True, "", "x", days=10**30)), "days"),
        (RuleSet(vacation=Vacation(True, "", "x", first_day="2026-13-01")), "first_day"),
        (
            RuleSet(
                vacation=Vacation(True, "", "x", first_day="2026-07-02", last_day="2026-07-01")
            ),
            "last_day",
        ),
        (RuleSet(vacation=Vacation(True, "", "x\x00y")), "text"),
        (RuleSet(forwarding=Forwarding("nobody")), "address"),
    ],
)
def test_bad_input_is_refused_with_its_field(ruleset: RuleSet, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        to_sieve(ruleset, TODAY)
    assert caught.value.field == field


CASES = [
    (message(), ["store Lists/Dev +create flags=\\seen", "implicit-keep none"]),
    (
        message(sender="carol@c.test", **{"X-List": "List-Id here"}),
        ["store Lists/Dev +create flags=\\seen", "implicit-keep none"],
    ),
    (
        message(sender="carol@c.test", subject='re: say "hi" \\ ü', **{"X-Pad": "p" * 2_200_000}),
        ["implicit-keep store INBOX flags=\\flagged"],
    ),
    (
        message(sender="carol@c.test", subject="spam", Cc="sales@example.test"),
        ["redirect x@elsewhere.test", "implicit-keep store INBOX"],
    ),
]


def ours(source: str, raw: bytes) -> list[str]:
    return [
        line
        for line in evaluate(source, raw, "bob@lists.example", ME).normalized()
        if not line.startswith("vacation")
    ]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_the_generated_script_does_what_the_rules_say(raw: bytes, expected: list[str]) -> None:
    source = to_sieve(full_ruleset(), date(2026, 8, 1))
    assert ours(source, raw) == expected


def test_vacation_and_forwarding_blocks() -> None:
    ruleset = RuleSet(
        vacation=Vacation(True, "Away", "gone", 2),
        forwarding=Forwarding("f@far.test", keep_copy=False),
    )
    result = evaluate(to_sieve(ruleset, TODAY), message(), "bob@lists.example", ME).normalized()
    assert result[0].startswith("vacation seconds=172800 subject=Away")
    assert result[1:] == ["redirect f@far.test", "implicit-keep none"]
    kept = RuleSet(forwarding=Forwarding("f@far.test", keep_copy=True))
    assert evaluate(to_sieve(kept, TODAY), message(), "b@x.test", ME).normalized() == [
        "redirect f@far.test",
        "implicit-keep store INBOX",
    ]


@pytest.fixture(scope="module")
def sieve_test() -> Iterator[SieveTest]:
    reason = unavailable_reason()
    if reason:
        if os.environ.get("PROVIDER_REQUIRE_DOVECOT") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    runner = SieveTest()
    yield runner
    runner.close()


@pytest.mark.parametrize("raw", [case[0] for case in CASES] + [message(subject="x")])
@pytest.mark.parametrize("day", [TODAY, date(2026, 8, 1)])
def test_pigeonhole_does_the_same(sieve_test: SieveTest, raw: bytes, day: date) -> None:
    source = to_sieve(full_ruleset(), day)
    theirs = sieve_test.run(source.encode(), raw, "bob@lists.example", ME)
    assert evaluate(source, raw, "bob@lists.example", ME).normalized() == theirs.normalized, (
        theirs.output
    )
