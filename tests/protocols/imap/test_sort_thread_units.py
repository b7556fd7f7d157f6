"""Base subjects, sort order and the threading algorithms of RFC 5256, without a server."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from provider.mailstore import MessageInfo
from provider.mailstore.message import Envelope, ParsedMessage, parse_addresses
from provider.protocols.imap import sort
from provider.protocols.imap.casemap import casemap
from provider.protocols.imap.parser import Atom, ProtocolError
from provider.protocols.imap.sort import (
    SortMessage,
    base_subject,
    decode_subject,
    normalized_ids,
    ordered_sequence_set,
    parse_sort_criteria,
    sort_message,
    sort_messages,
)
from provider.protocols.imap.thread import (
    format_threads,
    ordered_subject_threads,
    references_threads,
)

SUBJECTS = {
    "Hello": ("Hello", False),
    "Re: Hello": ("Hello", True),
    "RE: [list] Re: Fwd: hello (fwd)": ("hello", True),
    "[PATCH] fix the parser": ("fix the parser", False),
    "[PATCH]": ("[PATCH]", False),
    "[PATCH] [v2]": ("[v2]", False),
    "[fwd: Hello]": ("Hello", True),
    "Fw: [fwd: re: x]": ("x", True),
    "  Hello \t  world  ": ("Hello world", False),
    "Re [blob]: x": ("x", True),
    "Re:": ("", True),
    "re: (fwd)": ("", True),
    "Ref: x": ("Ref: x", False),
    "Fwd:Fwd:   x": ("x", True),
    "[a][b] Re: x": ("x", True),
    "Re: [fwd: [list] y] (fwd)": ("y", True),
    "": ("", False),
}


@pytest.mark.parametrize(("subject", "expected"), list(SUBJECTS.items()))
def test_base_subject(subject, expected):
    assert base_subject(subject) == expected


def test_encoded_words_are_decoded_before_extraction():
    text = decode_subject("=?UTF-8?Q?Re=3A_Gr=C3=BC=C3=9Fe?=")
    assert base_subject(text) == ("Grüße", True)
    assert decode_subject("=?bogus?Q?x?=") == "=?bogus?Q?x?="


def test_message_ids_are_normalised():
    assert normalized_ids('<"01KF8JCEOCBS0045PS"@xxx.yyy.com> <a@b> <no-at> junk <c @ d>') == [
        "01KF8JCEOCBS0045PS@xxx.yyy.com",
        "a@b",
        "c@d",
    ]
    assert normalized_ids(None) == []


def test_sort_criteria_parsing():
    parse = parse_sort_criteria
    assert parse([Atom("REVERSE"), Atom("date"), Atom("SUBJECT")]) == [
        ("DATE", True),
        ("SUBJECT", False),
    ]
    for bad in (
        [],
        [Atom("REVERSE")],
        [Atom("REVERSE"), Atom("REVERSE"), Atom("DATE")],
        [Atom("BOGUS")],
        [b"DATE"],
        [[Atom("DATE")]],
        Atom("DATE"),
    ):
        with pytest.raises(ProtocolError):
            parse(bad)


def message(seq: int, **fields: object) -> SortMessage:
    found = SortMessage(seq=seq, uid=seq * 10, arrival=float(seq), size=100)
    found.sent = float(seq)
    for name, value in fields.items():
        setattr(found, name, value)
    return found


def test_repeated_sort_keys_count_once():
    criteria = [Atom("DATE"), Atom("REVERSE"), Atom("DATE"), Atom("SUBJECT")] * 5000
    assert parse_sort_criteria(criteria) == [("DATE", False), ("SUBJECT", False)]


def test_references_are_cut_to_the_last_hundred():
    parsed = ParsedMessage(
        size=0,
        header_size=0,
        envelope=Envelope(None, "x", [], [], [], [], [], [], None, "<self@x>"),
        body=None,  # type: ignore[arg-type]
        headers=[],
        date_header=None,
    )
    info = MessageInfo(1, "b", Path("/nonexistent"), 10, frozenset(), frozenset(), 0.0, False)
    ids = " ".join(f"<r{n}@x>" for n in range(40000))
    found = sort_message(1, info, 10, parsed, lambda name: ids if name == "references" else None)
    assert found.references == [f"r{n}@x" for n in range(39900, 40000)]
    assert found.message_id == "self@x"


def test_reverse_keeps_the_sequence_number_tie_break():
    messages = [message(1, subject="b"), message(2, subject="a"), message(3, subject="b")]
    sort_messages(messages, [("SUBJECT", True)])
    assert [m.seq for m in messages] == [1, 3, 2]
    sort_messages(messages, [("SUBJECT", False), ("DATE", True)])
    assert [m.seq for m in messages] == [2, 3, 1]


def test_ordered_sequence_set_keeps_order():
    assert ordered_sequence_set([5, 3, 4, 1, 2, 9]) == "5,3:4,1:2,9"
    assert ordered_sequence_set([]) == ""


def seqs(roots) -> str:
    return format_threads(roots, lambda m: m.seq)


def chain(seq: int, *ancestors: int, **fields: object) -> SortMessage:
    return message(
        seq,
        message_id=f"m{seq}@x",
        references=[f"m{a}@x" for a in ancestors],
        **fields,
    )


def test_references_rfc_example_tree():
    messages = [
        chain(2, subject="other"),
        chain(3, subject="s"),
        chain(6, 3, subject="s", reply=True),
        chain(4, 3, 6, subject="s", reply=True, sent=10.0),
        chain(23, 3, 6, 4, subject="s", reply=True),
        chain(44, 3, 6, subject="s", reply=True, sent=11.0),
        chain(7, 3, 6, 44, subject="s", reply=True, sent=12.0),
        chain(96, 3, 6, 44, 7, subject="s", reply=True),
    ]
    assert seqs(references_threads(messages)) == "(2)(3 6 (4 23)(44 7 96))"


def test_references_missing_parent_gives_a_dummy_only_for_several_children():
    two = [chain(3, 1, subject="a"), chain(5, 1, subject="b")]
    assert seqs(references_threads(two)) == "((3)(5))"
    one = [chain(3, 1, subject="a")]
    assert seqs(references_threads(one)) == "(3)"


def test_references_truncated_chain_and_in_reply_to_and_duplicates_and_loops():
    messages = [
        chain(1, subject="a"),
        chain(2, 1, subject="b"),
        # A References field that skips a generation: the last reference is the parent.
        chain(3, 1, 2, subject="c"),
        chain(4, 1, 3, subject="d"),
    ]
    assert seqs(references_threads(messages)) == "(1 2 3 4)"
    duplicate = [chain(1, subject="a"), message(2, message_id="m1@x", subject="b")]
    assert seqs(references_threads(duplicate)) == "(1)(2)"
    loop = [chain(1, 2, subject="a"), chain(2, 1, subject="b")]
    assert seqs(references_threads(loop)) in ("(1 2)", "(2 1)")
    self_reference = [chain(1, 1, subject="a")]
    assert seqs(references_threads(self_reference)) == "(1)"


def test_references_merges_same_subjects():
    # A reply whose references are lost joins the thread of the original by subject.
    reply = [chain(1, subject="x"), message(2, subject="x", reply=True, message_id="r@x")]
    assert seqs(references_threads(reply)) == "(1 2)"
    # Two originals with one subject: siblings under a dummy.
    twins = [chain(1, subject="x"), chain(2, subject="x")]
    assert seqs(references_threads(twins)) == "((1)(2))"
    # An empty subject is never merged.
    empty = [chain(1, subject=""), chain(2, subject="")]
    assert seqs(references_threads(empty)) == "(1)(2)"


def test_a_thread_thousands_deep_needs_no_recursion():
    messages = [chain(1, subject="x")]
    messages += [chain(n, n - 1, subject="x", reply=True) for n in range(2, 5001)]
    # References name only the parent: each message is one generation deeper.
    result = seqs(references_threads(messages))
    assert result == "(" + " ".join(str(n) for n in range(1, 5001)) + ")"
    forked = [chain(1, subject="y")]
    for n in range(2, 3001):
        forked.append(chain(n, n - 1, subject="y", reply=True))
        forked.append(chain(n + 10000, n - 1, subject="y", reply=True, sent=float(n) + 0.5))
    assert seqs(references_threads(forked)).count("(") == 1 + 2 * 2999


def test_ordered_subject():
    messages = [
        message(1, subject="x", sent=1.0),
        message(2, subject="x", sent=3.0, reply=True),
        message(3, subject="y", sent=2.0),
        message(4, subject="x", sent=4.0),
        message(5, subject="z", sent=5.0),
        message(6, subject="z", sent=6.0),
    ]
    assert seqs(ordered_subject_threads(messages)) == "(1 (2)(4))(3)(5 6)"
    assert seqs(ordered_subject_threads([])) == ""


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("Bob <bob@b.test>, alice@a.test", "BOB"),
        ("=?UTF-8?Q?=C3=84rne?= <a@x.test>", unicodedata.normalize("NFKD", "ÄRNE")),
        ('"" <Empty@Name.test>', "EMPTY@NAME.TEST"),
        ("team: x@y.test, z@y.test;", "TEAM"),  # the group's start marker comes first
        ("", ""),
        ("undisclosed-recipients:;", "UNDISCLOSED-RECIPIENTS"),
    ],
)
def test_display_sort_value(field: str, expected: str) -> None:
    """RFC 5957 §3: display name, else mailbox@host, else mailbox, else empty (casemapped)."""
    assert sort.display_value(parse_addresses(field)) == expected


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("Grüße", "GRÜSSE", False),  # simple titlecase keeps ß (its full mapping is "Ss")
        ("grüße", "GRÜßE", True),
        ("Ä", "a\u0308", True),  # NFKD: precomposed and combining agree
        ("\u212a", "k", True),  # KELVIN SIGN is K after NFKD
        ("\uff21\uff22", "ab", True),  # fullwidth letters (compatibility decomposition)
        ("\u01c6", "\u01c4", True),  # dž and DŽ share the titlecase Dž
        ("İ", "i", False),
    ],
)
def test_unicode_casemap(one: str, other: str, same: bool) -> None:
    """RFC 5051 i;unicode-casemap, which SEARCH and SORT use (I18NLEVEL=1)."""
    assert (casemap(one) == casemap(other)) is same
