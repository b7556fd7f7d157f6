"""A stored message shown as plain text: headers, the text part (never HTML), attachments."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from html.parser import HTMLParser

# Bytes of a message parsed for display; bigger ones are shown from their start (the .eml
# download always has every byte).
PARSE_LIMIT = 5 * 1024 * 1024
TEXT_LIMIT = 200_000  # characters of body text shown
HEADER_LIMIT = 200  # header fields shown
HEADER_VALUE_LIMIT = 4000
ATTACHMENT_LIMIT = 100

_BLOCK_TAGS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "ul",
    ]
)
_SKIPPED_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript"})


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass
class MessageView:
    """What the message page shows; `problems` says what could not be read."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    text_source: str = "none"  # "plain", "html" (converted to text) or "none"
    attachments: list[Attachment] = field(default_factory=list)
    truncated: bool = False
    problems: list[str] = field(default_factory=list)


class _TextFromHtml(HTMLParser):
    """HTML to readable text: tags dropped, blocks as line breaks, scripts and styles skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self.skipping += 1
        elif tag == "li":
            self.parts.append("\n• ")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in _BLOCK_TAGS and tag != "li":  # the next item's bullet starts a line
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = (line.strip() for line in "".join(self.parts).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> str:
    parser = _TextFromHtml()
    parser.feed(html)
    parser.close()
    return parser.text()


def _header_text(value: object) -> str:
    """A raw header value, RFC 2047 words decoded; never raises."""
    raw = str(value)
    try:
        text = str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeError, AssertionError):
        text = raw
    return " ".join(text.split())[:HEADER_VALUE_LIMIT]


def _part_text(part: Message) -> str:
    """A text part decoded by its charset, or as UTF-8 with replacements when that fails."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, ValueError, UnicodeError, AssertionError, KeyError, TypeError):
        pass
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _attachments(message: EmailMessage) -> list[Attachment]:
    found = []
    for part in message.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        if not filename and not part.is_attachment():
            continue
        payload = part.get_payload(decode=True)
        found.append(
            Attachment(
                _header_text(filename or "(no name)"),
                part.get_content_type(),
                len(payload) if isinstance(payload, bytes) else 0,
            )
        )
        if len(found) >= ATTACHMENT_LIMIT:
            break
    return found


def render_message(data: bytes) -> MessageView:
    """Parse as much of the message as can be shown safely; HTML only ever becomes text."""
    view = MessageView(truncated=len(data) > PARSE_LIMIT)
    message = BytesParser(policy=policy.default).parsebytes(data[:PARSE_LIMIT])
    assert isinstance(message, EmailMessage)
    for name, value in message.raw_items():
        if len(view.headers) >= HEADER_LIMIT:
            view.problems.append(f"Only the first {HEADER_LIMIT} header fields are shown.")
            break
        view.headers.append((name, _header_text(value)))
    try:
        body = message.get_body(preferencelist=("plain", "html"))
    except (LookupError, ValueError, AttributeError, TypeError, IndexError, KeyError):
        body = None
        view.problems.append("The message structure could not be read.")
    if body is not None:
        text = _part_text(body)
        if body.get_content_subtype() == "html":
            view.text, view.text_source = html_to_text(text), "html"
        else:
            view.text, view.text_source = text.replace("\r\n", "\n"), "plain"
        if len(view.text) > TEXT_LIMIT:
            view.text = view.text[:TEXT_LIMIT]
            view.problems.append(f"Only the first {TEXT_LIMIT:,} characters of the text are shown.")
    try:
        view.attachments = _attachments(message)
    except (LookupError, ValueError, AttributeError, TypeError, IndexError, KeyError):
        view.problems.append("The attachments could not be listed.")
    return view
