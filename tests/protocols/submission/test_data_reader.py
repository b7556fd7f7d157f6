"""read_data: the DATA reader that works in blocks, against a line-by-line reading (RFC 5321)."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from provider.protocols.submission import LINE_TOO_LONG, TOO_MUCH_DATA, read_data

LINE_LIMIT = 1001
AFTER = b"QUIT\r\n"


def by_lines(stream: bytes, size_limit: int | None, line_limit: int) -> tuple[bytes, set[str]]:
    """What aiosmtpd's line loop makes of `stream` (the reference): lines end at CRLF, the
    line "." ends the data, a leading dot is removed; and every reason to refuse it (too
    much data, a line too long; when both apply, either is a right answer)."""
    lines = []
    size = 0
    problems = set()
    position = 0
    while True:
        end = stream.index(b"\r\n", position) + 2
        line = stream[position:end]
        position = end
        if line == b".\r\n":
            break
        size += len(line)
        if len(line) > line_limit:
            problems.add(LINE_TOO_LONG)
        if size_limit and size > size_limit:
            problems.add(TOO_MUCH_DATA)
        lines.append(line[1:] if line.startswith(b".") else line)
    return b"".join(lines), problems


def read(
    stream: bytes, cuts: list[int], size_limit: int | None = None, line_limit: int = LINE_LIMIT
) -> tuple[tuple[bytes, str | None], bytes]:
    """Feed `stream` to read_data in pieces cut at `cuts`; what it returns, and what it left."""

    async def run() -> tuple[tuple[bytes, str | None], bytes]:
        reader = asyncio.StreamReader(limit=line_limit)
        edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})

        async def feed() -> None:
            for start, end in itertools.pairwise(edges):
                reader.feed_data(stream[start:end])
                await asyncio.sleep(0)  # let the reader see each piece on its own
            reader.feed_eof()

        feeding = asyncio.ensure_future(feed())
        result = await read_data(reader, size_limit, line_limit)
        await feeding
        return result, await reader.read()

    return asyncio.run(run())


def stuffed(message: bytes) -> bytes:
    """`message` (CRLF lines) as a client sends it: leading dots doubled, then "." CRLF."""
    lines = message.split(b"\r\n")
    assert lines[-1] == b""
    body = b"".join(
        (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines[:-1]
    )
    return body + b".\r\n"


def test_a_plain_message_comes_back_as_sent_and_the_next_command_stays_unread():
    message = b"From: a@b.test\r\nSubject: x\r\n\r\nHello\r\n"
    assert read(stuffed(message) + AFTER, [7, 30]) == ((message, None), AFTER)


def test_an_empty_message_ends_at_the_first_dot_line():
    assert read(b".\r\n" + AFTER, []) == ((b"", None), AFTER)
    assert read(b"\r\n.\r\n" + AFTER, [1, 2]) == ((b"\r\n", None), AFTER)


def test_dot_stuffing_is_undone_once_per_line():
    message = b".hidden\r\n..two\r\nx.\r\n.\r\n"  # the client sends ..hidden, ...two, x., ..
    sent = b"..hidden\r\n...two\r\nx.\r\n..\r\n.\r\n"
    assert stuffed(message) == sent
    assert read(sent + AFTER, [1, 2, 3, 10, 21]) == ((message, None), AFTER)


def test_a_line_ending_in_a_dot_is_not_the_end():
    sent = b"a\r\nb.\r\n.\r\n"
    assert read(sent + AFTER, []) == ((b"a\r\nb.\r\n", None), AFTER)


def test_bare_lf_dot_does_not_end_the_data():
    """SMTP smuggling: only CRLF "." CRLF ends; LF "." CRLF is message content."""
    sent = b"a\n.\r\nMAIL FROM:<x@evil.test>\r\n.\r\n"
    (content, problem), rest = read(sent + AFTER, [2, 3])
    assert problem is None and rest == AFTER
    assert content == b"a\n.\r\nMAIL FROM:<x@evil.test>\r\n"
    sent = b"a\r.\r\nb\r\n.\r\n"  # bare CR before the dot: content too
    assert read(sent, [])[0] == (b"a\r.\r\nb\r\n", None)


def test_too_much_data_is_read_to_the_end_and_refused():
    message = b"x" * 98 + b"\r\n"
    sent = stuffed(message * 50)
    assert read(sent + AFTER, [500, 1000], size_limit=1000) == ((b"", TOO_MUCH_DATA), AFTER)
    assert read(sent + AFTER, [], size_limit=len(sent) - 3) == ((message * 50, None), AFTER)
    assert read(sent + AFTER, [], size_limit=len(sent) - 4) == ((b"", TOO_MUCH_DATA), AFTER)


def test_a_line_too_long_is_refused_but_one_at_the_limit_is_taken():
    at_limit = b"y" * (LINE_LIMIT - 2) + b"\r\n"
    assert read(at_limit + b".\r\n" + AFTER, [5]) == ((at_limit, None), AFTER)
    over = b"y" * (LINE_LIMIT - 1) + b"\r\n"
    assert read(b"ok\r\n" + over + b".\r\n" + AFTER, [3]) == ((b"", LINE_TOO_LONG), AFTER)


def test_a_megabyte_without_a_line_end_is_refused_without_keeping_it():
    sent = b"z" * 1_000_000 + b"\r\n.\r\n"
    assert read(sent + AFTER, [65536 * n for n in range(1, 16)]) == ((b"", LINE_TOO_LONG), AFTER)


@settings(max_examples=1000, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from([b"", b".", b"..", b". ", b"x.", b".x", b"\n.", b"a\rb", b"\n"]),
            st.binary(max_size=40).filter(lambda b: b"\r\n" not in b),
        ),
        max_size=30,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    size_limit=st.one_of(st.none(), st.integers(min_value=1, max_value=600)),
    line_limit=st.integers(min_value=8, max_value=60),
)
def test_blocks_read_the_same_as_lines(lines, cuts, size_limit, line_limit):
    """Any message, cut anywhere, with any limits: the same result as the line loop, and the
    input after the data left unread."""
    message = b"".join(line + b"\r\n" for line in lines)
    sent = stuffed(message)
    content, problems = by_lines(sent, size_limit, line_limit)
    (got, problem), rest = read(sent + AFTER, cuts, size_limit, line_limit)
    assert rest == AFTER
    if problems:
        assert (got, problem in problems) == (b"", True)
    else:
        assert (got, problem) == (content, None)
