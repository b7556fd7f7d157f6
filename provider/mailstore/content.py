"""Decoded message content: content-transfer-encodings (IMAP BINARY) and preview text (PREVIEW)."""

from __future__ import annotations

import binascii
import codecs
import re
from html.parser import HTMLParser

from provider.mailstore.message import BodyPart

# Encodings whose content is the octets as they are (RFC 2045 §6.1; "binary" included).
IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary", ""})
PREVIEW_CHARACTERS = 200
# Octets of a text part read to make its preview: 200 characters are never further in than
# this in any real message (HTML heads and styles included), and a huge part costs no more.
PREVIEW_SOURCE_OCTETS = 64 * 1024

_BASE64_ALPHABET = re.compile(rb"[^A-Za-z0-9+/]")
_WHITESPACE = re.compile(r"\s+")


class UnknownTransferEncoding(ValueError):
    """A content-transfer-encoding this server cannot decode (IMAP answers NO [UNKNOWN-CTE])."""


def decode_base64(data: bytes) -> bytes:
    """Base64 decoded leniently, as RFC 2045 §6.8 asks of a decoder: characters outside the
    alphabet (line breaks, garbage) are ignored, decoding stops at the first `=`, and a final
    incomplete quantum gives what whole octets it holds (one lone character gives none)."""
    cleaned = _BASE64_ALPHABET.sub(b"", data.split(b"=", 1)[0])
    whole = len(cleaned) - len(cleaned) % 4
    tail = cleaned[whole:]
    decoded = binascii.a2b_base64(cleaned[:whole]) if whole else b""
    if len(tail) >= 2:
        decoded += binascii.a2b_base64(tail + b"=" * (4 - len(tail)))
    return decoded


def decode_transfer_encoding(data: bytes, encoding: str) -> bytes:
    """The content of a part once its content-transfer-encoding is undone. Malformed base64
    and quoted-printable are decoded as far as they go (RFC 2045's robustness advice);
    UnknownTransferEncoding for any encoding other than the five of RFC 2045."""
    encoding = encoding.lower()
    if encoding in IDENTITY_ENCODINGS:
        return data
    if encoding == "base64":
        return decode_base64(data)
    if encoding == "quoted-printable":
        # a2b_qp leaves a malformed `=XY` as it is and joins soft line breaks (=CRLF, =LF).
        return binascii.a2b_qp(data)
    raise UnknownTransferEncoding(encoding)


# --- PREVIEW (RFC 8970) ------------------------------------------------------------------


def first_text_part(part: BodyPart) -> BodyPart | None:
    """The first text/plain or text/html leaf that is not an attachment, depth first
    (a multipart/alternative's first text is its plain one); encapsulated messages are not
    entered: their text is not this message's."""
    if part.parts:
        for child in part.parts:
            found = first_text_part(child)
            if found is not None:
                return found
        return None
    if part.type != "text" or part.subtype not in ("plain", "html"):
        return None
    if part.disposition is not None and part.disposition[0] == "attachment":
        return None
    return part


def _charset(part: BodyPart) -> str:
    for name, value in part.params:
        if name == "charset":
            try:
                return codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                return "utf-8"  # unknown charset: UTF-8 with replacement is the best guess
    return "us-ascii"


class _TextOfHtml(HTMLParser):
    """The text a reader sees in an HTML document: no tags, scripts, styles or head."""

    _HIDDEN = frozenset({"script", "style", "head", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag in ("br", "p", "div", "li", "tr", "td", "h1", "h2", "h3"):
            self.pieces.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self.hidden:
            self.hidden -= 1
        elif tag in ("p", "div", "li", "tr", "td", "h1", "h2", "h3"):
            self.pieces.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.pieces.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextOfHtml()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):
        pass  # malformed beyond what the parser copes with: keep what it had
    # convert_charrefs: entities (&amp; &#233;) are already text.
    return "".join(parser.pieces)


def preview_text(part: BodyPart | None, raw: bytes) -> str:
    """RFC 8970 preview of a text part whose (still encoded) body starts with `raw`: decoded,
    HTML made text, whitespace collapsed, at most PREVIEW_CHARACTERS characters. "" when
    there is no text part or its encoding is unknown."""
    if part is None:
        return ""
    try:
        content = decode_transfer_encoding(raw, part.encoding)
    except UnknownTransferEncoding:
        return ""
    text = content.decode(_charset(part), "replace")
    if part.subtype == "html":
        text = html_to_text(text)
    text = _WHITESPACE.sub(" ", text).strip()
    # No control characters in what goes out as an IMAP string (NUL is never allowed).
    text = "".join(c if c.isprintable() else " " for c in text[: PREVIEW_CHARACTERS * 2])
    return _WHITESPACE.sub(" ", text).strip()[:PREVIEW_CHARACTERS].rstrip()
