"""QRESYNC's parameters and VANISHED sets (RFC 7162 §3.2), byte for byte, no socket."""

from __future__ import annotations

import pytest

from provider.protocols.imap import qresync as qr
from provider.protocols.imap.parser import ProtocolError, parse_command


def arguments(text: str) -> list:
    return parse_command(f"a SELECT INBOX {text}\r\n".encode()).args[1]


def test_select_parameters_with_every_qresync_argument():
    parameters = qr.parse_select_parameters(
        arguments(
            "(CONDSTORE QRESYNC (67890007 90060115194045000 41:211,214:541 (1:2,4 41,43,45)))"
        )
    )
    assert parameters.condstore
    assert parameters.qresync == qr.QresyncParameter(
        67890007, 90060115194045000, [(41, 211), (214, 541)], ((1, 41), (2, 43), (4, 45))
    )
    bare = qr.parse_select_parameters(arguments("(QRESYNC (1 1))")).qresync
    assert bare == qr.QresyncParameter(1, 1, None, ())
    # seq-match-data without known-uids is allowed by the grammar's optional parts.
    assert qr.parse_select_parameters(arguments("(QRESYNC (1 5 (3 7)))")).qresync.seq_match == (
        (3, 7),
    )


@pytest.mark.parametrize(
    "text",
    [
        "(QRESYNC)",
        "(QRESYNC ())",
        "(QRESYNC (1))",
        "(QRESYNC (0 5))",  # UIDVALIDITY is an nz-number
        "(QRESYNC (4294967296 5))",
        "(QRESYNC (01 5))",
        "(QRESYNC (1 0))",  # mod-sequence-value is at least 1
        f"(QRESYNC (1 {2**63}))",
        "(QRESYNC (1 99999999999999999999999))",
        "(QRESYNC (1 -5))",
        "(QRESYNC (1 5 1:*))",  # known-uids never holds *
        "(QRESYNC (1 5 1:x))",
        "(QRESYNC (1 5 0))",
        "(QRESYNC (1 5 1,,2))",
        "(QRESYNC (1 5 1:4294967296))",
        "(QRESYNC (1 5 1:9 (1:2 5)))",  # the two sets differ in size
        "(QRESYNC (1 5 1:9 (2,1 5,6)))",  # not ascending
        "(QRESYNC (1 5 1:9 (1,2 6,5)))",
        "(QRESYNC (1 5 1:9 (1:4294967295 1:4294967295)))",  # a huge sample
        "(QRESYNC (1 5 1:9 (1 2 3)))",
        "(QRESYNC (1 5 1:9 (1 2) extra))",
        '(QRESYNC ("1" 5))',
        "(QRESYNC (1 5) QRESYNC (1 5))",
        "(CONDSTORE CONDSTORE)",
        "(FOO)",
        "()",
        "((((QRESYNC))))",
    ],
)
def test_bad_select_parameters_are_protocol_errors(text):
    with pytest.raises(ProtocolError):
        qr.parse_select_parameters(arguments(text))


def modifiers(text: str) -> list:
    return parse_command(f"a UID FETCH 1:* (FLAGS) {text}\r\n".encode()).args[3]


def test_fetch_modifiers():
    assert qr.parse_fetch_modifiers(
        modifiers("(CHANGEDSINCE 12345 VANISHED)"), by_uid=True, qresync=True
    ) == qr.FetchModifiers(12345, True)
    assert qr.parse_fetch_modifiers(
        modifiers("(VANISHED CHANGEDSINCE 0)"), by_uid=True, qresync=True
    ) == qr.FetchModifiers(0, True)
    assert qr.parse_fetch_modifiers(
        modifiers("(CHANGEDSINCE 7)"), by_uid=False, qresync=False
    ) == qr.FetchModifiers(7, False)


@pytest.mark.parametrize(
    ("text", "by_uid", "enabled"),
    [
        ("(CHANGEDSINCE 1 VANISHED)", False, True),  # FETCH, not UID FETCH
        ("(CHANGEDSINCE 1 VANISHED)", True, False),  # no ENABLE QRESYNC
        ("(VANISHED)", True, True),  # without CHANGEDSINCE
        ("(CHANGEDSINCE 1 VANISHED VANISHED)", True, True),
        ("(CHANGEDSINCE 1 CHANGEDSINCE 2)", True, True),
        (f"(CHANGEDSINCE {2**63})", True, True),
        ("(CHANGEDSINCE)", True, True),
        ("(FOO 1)", True, True),
        ("()", True, True),
    ],
)
def test_bad_fetch_modifiers(text, by_uid, enabled):
    with pytest.raises(ProtocolError):
        qr.parse_fetch_modifiers(modifiers(text), by_uid=by_uid, qresync=enabled)


def test_range_arithmetic():
    assert qr.merge([(5, 9), (1, 2), (3, 3), (8, 12), (20, 20)]) == [(1, 3), (5, 12), (20, 20)]
    assert qr.merge([(4, 4), (1, 3)]) == [(1, 4)]
    assert qr.without([(1, 10)], [1, 4, 5, 10, 11]) == [(2, 3), (6, 9)]
    assert qr.without([(1, 2**32 - 1)], []) == [(1, 2**32 - 1)]
    assert qr.above([(1, 3), (5, 9)], 6) == [(7, 9)]
    assert qr.up_to([(1, 3), (5, 9), (12, 20)], 6) == [(1, 3), (5, 6)]
    assert qr.contains([(1, 3), (7, 7)], 7) and not qr.contains([(1, 3), (7, 7)], 4)
    assert qr.format_ranges([(1, 3), (7, 7)]) == "1:3,7"


def test_vanished_never_names_a_uid_not_given_out_yet():
    assert qr.vanished_earlier([(1, 2**32 - 1)], [2], [], False, uidnext=5) == [(1, 1), (3, 4)]


def test_vanished_with_complete_history_is_the_expunged_known_uids_only():
    known = [(41, 211), (214, 541)]
    assert qr.vanished_earlier(known, [42, 117], [41, 43, 212, 300, 600], True) == [
        (41, 41),
        (43, 43),
        (300, 300),
    ]


def test_vanished_without_history_is_every_missing_known_uid_rfc_example():
    """RFC 7162 §3.2.5.2: only UIDs divisible by three are present, nothing remembered."""
    present = list(range(3, 30013, 3))
    vanished = qr.vanished_earlier([(1, 29997)], present, [], False)
    assert qr.format_ranges(vanished).startswith("1:2,4:5,7:8,10:11")
    assert vanished[-1] == (29995, 29996)
    # With the sample of the second example every pair matches: nothing at or below 29997.
    pairs = list(
        zip(
            [5000, 7500, 9000, *range(9990, 10000)],
            [15000, 22500, 27000, *range(29970, 29998, 3)],
            strict=True,
        )
    )
    floor = qr.seq_match_floor(pairs, present)
    assert floor == 29997
    assert qr.vanished_earlier([(1, 29997)], present, [], False, floor) == []


def test_seq_match_floor_stops_at_the_first_mismatch():
    uids = [1, 2, 3, 8, 9, 25]
    assert qr.seq_match_floor([(4, 8), (6, 24)], uids) == 8
    assert qr.seq_match_floor([(1, 2), (4, 8)], uids) == 0
    assert qr.seq_match_floor([(7, 30)], uids) == 0  # beyond the mailbox
