"""Each corpus script on each corpus message, through our interpreter and Pigeonhole's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from provider.sieve import Envelope, SieveParseError, compile_script, run
from tests.sieve.pigeonhole import SieveTest, include_loader, unavailable_reason

CORPUS = Path(__file__).parent / "corpus"
SCRIPTS = sorted((CORPUS / "scripts").glob("*.sieve"))
MESSAGES = sorted((CORPUS / "messages").glob("*.eml"))
DEFAULT_ENVELOPE = ("sender+bounce@example.net", "me+lists@example.org")
# Messages whose envelope differs from the default: (reverse path, recipient).
ENVELOPES = {
    "autoreply.eml": ("postmaster@example.com", "me@example.org"),
    "plain.eml": ("alice@example.com", "me+lists@example.org"),
    "subaddress.eml": ("bob+sport@example.org", "carol+work@EXAMPLE.org"),
}


def ours(script: bytes, message: bytes, sender: str, recipient: str) -> list[str]:
    """Our interpreter's result in the normalized form."""
    try:
        compiled = compile_script(script, include_loader)
    except SieveParseError:
        return ["compile-error"]
    return run(compiled, message, Envelope(sender, recipient)).normalized()


def same(pigeonhole: list[str], got: list[str]) -> bool:
    """Equal lists, where sieve-test cut a long value with '...' and only its prefix counts."""
    if len(pigeonhole) != len(got):
        return False
    for theirs, mine in zip(pigeonhole, got, strict=True):
        if "..." in theirs and theirs != mine:
            if not mine.startswith(theirs[: theirs.index("...")]):
                return False
        elif theirs != mine:
            return False
    return True


@pytest.fixture(scope="module")
def sieve_test() -> Iterator[SieveTest]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("PROVIDER_REQUIRE_DOVECOT") == "1":
            pytest.fail(f"{reason}, and PROVIDER_REQUIRE_DOVECOT=1")
        pytest.skip(reason)
    harness = SieveTest()
    try:
        yield harness
    finally:
        harness.close()


def test_corpus_has_enough_pairs() -> None:
    assert len(SCRIPTS) * len(MESSAGES) >= 200


@pytest.mark.parametrize("script_path", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_same_actions_as_pigeonhole(sieve_test: SieveTest, script_path: Path) -> None:
    """One script on every message: our normalized actions equal sieve-test's."""
    script = script_path.read_bytes()
    differences: list[str] = []
    for message_path in MESSAGES:
        sender, recipient = ENVELOPES.get(message_path.name, DEFAULT_ENVELOPE)
        message = message_path.read_bytes()
        expected = sieve_test.run(script, message, sender, recipient)
        got = ours(script, message, sender, recipient)
        if not same(expected.normalized, got):
            differences.append(
                f"{message_path.name}:\n  pigeonhole: {expected.normalized}\n  ours:       {got}"
                f"\n  sieve-test output:\n{expected.output}"
            )
    assert not differences, "\n".join(differences)
